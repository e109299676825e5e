"""A benchmark table: real results of every config of a grid, stored as one gzipped JSON file.

Replaying a search against a table looks each proposed config up instead of training it, so a
sampler comparison over many seeds takes seconds to minutes instead of days.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.correlation import correlate, finished_pairs
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.space import SearchSpace, config_key

FORMAT = 1


@dataclass
class Table:
    """Rows of ``{"params", "state", "metric", "eval_loss", "trajectory", "step_losses", "train_seconds",
    "fail_reason"}`` plus, for some rows, ``"full"``: the same config trained on the whole training split.

    ``metric`` is ``None`` for a failed config; a search that proposes it pays for the trial and learns
    it failed, exactly as it would in a live study.

    The grid is read as stored (``SearchSpace.from_stored``): table files written before ordered parameters existed
    stored every number as categorical, and their numbers read as ordered, on a log scale when all are positive and
    the largest is at least 4 times the smallest (the rule language-BO guessed by). The rule exists only for those
    old files, so that a replay runs the search a user runs; the file and its ``fingerprint`` stay as they are.
    """

    name: str
    recipe: dict[str, Any]
    metric_name: str
    direction: str
    rows: list[dict[str, Any]]
    build: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.grid = SearchSpace.from_stored(self.recipe["grid"], source=f"table {self.name}")
        self._by_key = {config_key(r["params"]): r for r in self.rows}

    # -- lookups -------------------------------------------------------------------------------
    def lookup(self, params: dict[str, Any]) -> dict[str, Any]:
        """The row of a config (fixed values may be included); a config outside the table is an error."""
        searched = {k: v for k, v in params.items() if k not in self.grid.fixed}
        config = self.grid.validate({**searched, **self.grid.fixed})
        row = self._by_key.get(config_key({k: config[k] for k in searched}))
        if row is None:
            raise InputError("params", f"config {searched} is in the grid of table {self.name} but has no row yet "
                             f"({len(self.rows)} of {self.grid.pool_size} configs are built)")
        return row

    def built_with(self, recipe: dict[str, Any]) -> bool:
        """Whether the rows were built with ``recipe`` (a ``TableSpec.recipe``): the same settings and grid, however
        the file spells the grid."""
        grid = SearchSpace.from_stored(recipe["grid"], source=f"recipe of {self.name}")
        return {**self.recipe, "grid": None} == {**recipe, "grid": None} and grid == self.grid

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.grid.pool_size

    def metrics(self) -> np.ndarray:
        """Metric of every completed row."""
        return np.array([r["metric"] for r in self.rows if r["metric"] is not None], dtype=float)

    @property
    def best(self) -> float:
        values = self.metrics()
        return float(values.max() if self.direction == "maximize" else values.min())

    @property
    def worst(self) -> float:
        values = self.metrics()
        return float(values.min() if self.direction == "maximize" else values.max())

    def regret(self, value: float | None) -> float:
        """Normalized regret of a best-found value: 0 at the table's best, 1 at its worst (or nothing found)."""
        if value is None or not math.isfinite(value):
            return 1.0
        spread = abs(self.best - self.worst)
        return abs(self.best - value) / spread if spread > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts, best/worst/spread of the metric, train time and the proxy-to-full correlation."""
        values = self.metrics()
        with_full = [r for r in self.rows if r.get("full")]
        proxy, full = [r["metric"] for r in with_full], [r["full"]["metric"] for r in with_full]
        correlation = correlate(proxy, full)
        return {
            "configs": len(self.rows), "grid": self.grid.pool_size, "failed": len(self.rows) - len(values),
            "metric": self.metric_name, "best": self.best, "worst": self.worst, "spread": self.best - self.worst,
            "median": float(np.median(values)), "std": float(values.std()),
            "top1pct_threshold": self.top_threshold(0.01),
            "train_hours": sum(r["train_seconds"] for r in self.rows) / 3600,
            "full_runs": len(finished_pairs(proxy, full)), "proxy_full_pearson": correlation["pearson"],
            "proxy_full_spearman": correlation["spearman"],
        }

    def top_threshold(self, fraction: float) -> float:
        """The metric a config needs to be in the table's top ``fraction`` (at least one config)."""
        values = np.sort(self.metrics())
        if self.direction == "maximize":
            values = values[::-1]
        k = max(1, math.ceil(fraction * len(self.rows)))
        return float(values[min(k, len(values)) - 1])

    def fingerprint(self) -> str:
        """A short hash of the recipe and every row's result: replays of a changed table are not reused."""
        rows = sorted((config_key(r["params"]), r["metric"]) for r in self.rows)
        blob = json.dumps([self.recipe, rows], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename) so a crash never leaves half a table."""
        data = {"format": FORMAT, "name": self.name, "metric_name": self.metric_name, "direction": self.direction,
                "recipe": self.recipe, "build": self.build, "rows": self.rows}
        text = json.dumps(data, separators=(",", ":"))
        return write_atomic(path, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))

    @classmethod
    def load(cls, path: str | Path) -> Table:
        path = Path(path)
        if not path.is_file():
            raise InputError("table", f"file {path} does not exist")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError("table", f"{path} is not a gzipped lmtune table: {exc}") from None
        if data.get("format") != FORMAT:
            raise InputError("table", f"{path} has format {data.get('format')!r}; this lmtune reads {FORMAT}")
        return cls(name=data["name"], recipe=data["recipe"], metric_name=data["metric_name"],
                   direction=data["direction"], rows=data["rows"], build=data.get("build", {}))

