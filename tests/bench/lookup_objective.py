"""A LoRA study's objective that looks each config up in a committed table instead of training it: what
``lmtune worker --objective tests.bench.lookup_objective:arith_sft`` runs, so a search through the real ``lmtune
lora`` path can be compared with the benchmark's replay of the same table."""

from pathlib import Path

import optuna

from lmtune.bench.table import Table
from lmtune.errors import TrialFailed
from lmtune.space import SearchSpace

ARITH_SFT = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "arith-sft.json.gz"


def arith_sft(space: SearchSpace):
    """The objective for a study whose space is the arith-sft table's grid: each trial's metric from its row."""
    table = Table.load(ARITH_SFT)

    def objective(trial: optuna.Trial) -> float:
        row = table.lookup(space.suggest(trial))
        if row["metric"] is None:
            raise TrialFailed("this config failed when the table was built")
        return row["metric"]

    return objective
