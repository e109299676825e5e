"""The built-in spaces: the language-BO paper's 45,360-config pool and a CPU-sized one; ``load_space``.

Every number is ``Ordered``: rank, alpha ratio, batch size and learning rate act multiplicatively and are on a log
scale; dropout holds 0 and is linear. The variant, a name, is categorical where it is searched.
"""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import InputError
from lmtune.space.params import Ordered
from lmtune.space.search_space import SearchSpace

#: The ten learning rates of Table 1 of "Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian
#: Optimization" (1e-6..5e-3). The paper lists only the range and
#: count; these are the values its reported configs use (Tables A1-A5) plus the two endpoints.
PAPER_LEARNING_RATES = (1e-6, 5e-6, 2e-5, 3e-5, 5e-5, 1e-4, 3e-4, 4e-4, 5e-4, 5e-3)


def _lora_paper() -> SearchSpace:
    return SearchSpace(
        (
            Ordered("rank", tuple(2**i for i in range(9)), log=True),
            Ordered("alpha_ratio", tuple(2.0**k for k in range(-1, 8)), log=True),
            Ordered("batch_size", tuple(2**i for i in range(1, 9)), log=True),
            Ordered("learning_rate", PAPER_LEARNING_RATES, log=True),
            Ordered("dropout", tuple(round(0.05 * i, 2) for i in range(7))),
        ),
        {"variant": "lora"},
        "lora-paper",
    )


def _lora_small() -> SearchSpace:
    """A few hundred configs that train in seconds each on a small encoder on CPU."""
    return SearchSpace(
        (
            Ordered("rank", (4, 8, 16, 32), log=True),
            Ordered("alpha_ratio", (0.5, 1.0, 2.0, 4.0), log=True),
            Ordered("batch_size", (8, 16), log=True),
            Ordered("learning_rate", (3e-4, 1e-3, 2e-3, 3e-3, 5e-3), log=True),
            Ordered("dropout", (0.0, 0.1)),
        ),
        {"variant": "lora"},
        "lora-small",
    )


PRESETS = {"lora-paper": _lora_paper, "lora-small": _lora_small}


def load_space(name_or_path: str | Path | dict) -> SearchSpace:
    """A preset by name, a YAML file, or a space's mapping as a YAML file would hold it (``name``, ``params``)."""
    if isinstance(name_or_path, dict):
        return SearchSpace.from_dict(name_or_path, source=str(name_or_path.get("name", "space")))
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]()
    if key.endswith((".yaml", ".yml")) or Path(key).exists():
        return SearchSpace.from_yaml(key)
    raise InputError("space", f"unknown preset {key!r}; presets: {', '.join(PRESETS)}, or a YAML file path")
