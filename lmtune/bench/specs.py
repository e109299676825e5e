"""The specs of the benchmark tables lmtune builds: which grid, model, data and training settings each uses.

A table spec fixes everything a row depends on except the hyperparameters, so a row can be looked up
instead of trained. The grids are drawn from the language-BO paper's pool (``lora-paper``), and declare their
numbers as that pool does: ``Ordered``, on a log scale but for dropout; the variant, where searched, is a name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmtune.errors import InputError
from lmtune.space import Categorical, Ordered, SearchSpace


@dataclass(frozen=True)
class TableSpec:
    """One benchmark table: a grid of LoRA configs and the fixed recipe every config is trained with."""

    name: str
    grid: SearchSpace
    dataset: str
    model: str | None = None  # a hub id, folder or alias (minilm, arith-lm); None: minilm
    task: str | None = None
    proxy_fraction: float = 0.1
    max_length: int = 64
    epochs: float = 1.0
    eval_points: int = 2  # evaluating 213 articles costs more than a 149-article epoch: two points, not four
    exact_match: bool = False
    metric: str | None = None  # what rows are ranked by: None for the task's metric, or "eval_loss"
    seed: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """What every row was trained with; stored with the study and the table file."""
        recipe = asdict(self)
        recipe["grid"] = self.grid.to_dict()
        if self.metric is None:  # tables built before the field existed keep their recipe
            del recipe["metric"]
        return recipe


def _lora_grid(name: str, ranks: tuple[int, ...], alpha_ratios: tuple[float, ...],
               batch_sizes: tuple[int, ...] = (4, 8, 16, 32),
               learning_rates: tuple[float, ...] = (5e-6, 3e-5, 1e-4, 5e-4, 5e-3)) -> SearchSpace:
    """A table's grid of plain LoRA: its ranks, alpha ratios, batch sizes and learning rates (log scales), and
    dropout 0 or 0.1."""
    return SearchSpace(
        (
            Ordered("rank", ranks, log=True),
            Ordered("alpha_ratio", alpha_ratios, log=True),
            Ordered("batch_size", batch_sizes, log=True),
            Ordered("learning_rate", learning_rates, log=True),
            Ordered("dropout", (0.0, 0.1)),
        ),
        {"variant": "lora"},
        name,
    )


def _bbc_minilm() -> TableSpec:
    return TableSpec(
        name="bbc-minilm", grid=_lora_grid("bbc-minilm", (1, 4, 16, 64, 256), (0.5, 2.0, 8.0, 16.0, 32.0, 128.0)),
        dataset="bbc-news",
        notes="MiniLM (offline) sequence classification on BBC News, 10% proxy subset (149 articles), "
              "one epoch, 64 tokens, scored by validation accuracy (213 articles) at mid-training and at the end.",
    )


def _arith_sft() -> TableSpec:
    return TableSpec(
        name="arith-sft", grid=_lora_grid("arith-sft", (1, 2, 4, 8, 16), (0.5, 2.0, 8.0, 32.0)),
        dataset="arith-sub3", model="arith-lm", task="causal", max_length=16,
        notes="Causal-LM SFT of lmtune's small arithmetic Llama (pretrained on addition up to 3 digits and "
              "subtraction up to 2) on 3-digit subtraction: 10% proxy (175 problems), one epoch, scored by "
              "validation loss on the answer tokens (250 problems).",
    )


def _arith_mul() -> TableSpec:
    grid = _lora_grid("arith-mul", (1, 2, 4, 8, 16, 32, 64), (1.0, 4.0, 16.0, 64.0),
                      learning_rates=(5e-6, 3e-5, 1e-4, 3e-4, 5e-4, 5e-3))
    return TableSpec(
        name="arith-mul", grid=grid, dataset="arith-mul2", model="arith-lm", task="causal", proxy_fraction=0.2,
        max_length=16,
        notes="Causal-LM SFT of lmtune's small arithmetic Llama on multiplication of 1-2 digit numbers, an "
              "operation its pretraining never showed it: 20% proxy (350 problems), one epoch, scored by "
              "validation loss on the answer tokens (250 problems).",
    )


def _arith_variants() -> TableSpec:
    grid = SearchSpace(
        (
            Categorical("variant", ("lora", "rslora", "dora", "pissa")),
            Ordered("rank", (2, 8, 32), log=True),
            Ordered("alpha_ratio", (0.5, 2.0, 8.0, 32.0), log=True),
            Ordered("batch_size", (8, 32), log=True),
            Ordered("learning_rate", (3e-5, 1e-4, 5e-4, 5e-3), log=True),
        ),
        {"dropout": 0.05},
        "arith-variants",
    )
    return TableSpec(
        name="arith-variants", grid=grid, dataset="arith-add4", model="arith-lm", task="causal", max_length=16,
        notes="Causal-LM SFT of lmtune's small arithmetic Llama on 4-digit addition (pretrained up to 3 digits), "
              "searching the LoRA variant (LoRA, rsLoRA, DoRA, PiSSA: an unordered choice) beside four ordered "
              "numbers, dropout fixed: 10% proxy (175 problems), one epoch, scored by validation loss on the "
              "answer tokens (250 problems).",
    )


#: ``scripts/make_minilm_family.py --output lmtune-out/minilm-family`` writes this folder: MiniLM's embeddings and
#: its first two transformer layers.
MINILM_L2 = "lmtune-out/minilm-family/minilm-l2"


def _bbc_minilm_l2() -> TableSpec:
    grid = SearchSpace(
        (
            Ordered("rank", (2, 8, 32, 128), log=True),
            Ordered("alpha_ratio", (1.0, 4.0, 16.0, 64.0), log=True),
            Ordered("batch_size", (4, 8, 16, 32), log=True),
            Ordered("learning_rate", (2e-5, 1e-4, 3e-4, 5e-4, 5e-3), log=True),
        ),
        {"variant": "lora", "dropout": 0.0},
        "bbc-minilm-l2",
    )
    return TableSpec(
        name="bbc-minilm-l2", grid=grid, dataset="bbc-news", model=MINILM_L2, proxy_fraction=0.25, max_length=48,
        metric="eval_loss",
        notes="A two-layer MiniLM (the bundled MiniLM's embeddings and first two layers, "
              "scripts/make_minilm_family.py) as a sequence classifier on BBC News: 25% proxy (372 articles), one "
              "epoch, 48 tokens, no dropout (four ordered numbers, a grid of 320), ranked by validation loss "
              "(as lmtune lora ranks trials; accuracy is kept beside it) on 213 articles at mid-training and at "
              "the end.",
    )


TABLES = {"bbc-minilm": _bbc_minilm, "arith-sft": _arith_sft, "arith-mul": _arith_mul,
          "arith-variants": _arith_variants, "bbc-minilm-l2": _bbc_minilm_l2}


def load_table_spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise InputError("table", f"unknown table {name!r}; allowed: {', '.join(TABLES)}")
    return TABLES[name]()
