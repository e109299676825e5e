"""The specs of the benchmark tables lmtune builds: which grid, model, data and training settings each uses.

A table spec fixes everything a row depends on except the hyperparameters, so a row can be looked up
instead of trained. The grids are drawn from the language-BO paper's pool (``lora-paper``), and declare their
numbers as that pool does: ``Ordered``, on a log scale but for dropout; the variant, where searched, is a name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmtune.errors import InputError
from lmtune.space import Ordered, SearchSpace


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
    seed: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """What every row was trained with; stored with the study and the table file."""
        recipe = asdict(self)
        recipe["grid"] = self.grid.to_dict()
        return recipe


def _lora_grid(name: str, ranks: tuple[int, ...], alpha_ratios: tuple[float, ...]) -> SearchSpace:
    """A table's grid: its ranks and alpha ratios, with the batch sizes, learning rates (log scales) and dropouts
    every table searches, plain LoRA."""
    return SearchSpace(
        (
            Ordered("rank", ranks, log=True),
            Ordered("alpha_ratio", alpha_ratios, log=True),
            Ordered("batch_size", (4, 8, 16, 32), log=True),
            Ordered("learning_rate", (5e-6, 3e-5, 1e-4, 5e-4, 5e-3), log=True),
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


TABLES = {"bbc-minilm": _bbc_minilm, "arith-sft": _arith_sft}


def load_table_spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise InputError("table", f"unknown table {name!r}; allowed: {', '.join(TABLES)}")
    return TABLES[name]()
