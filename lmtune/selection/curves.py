"""Learning curves of candidate models: the test loss of each model after fine-tuning on n examples.

The file format is the one of the Lin et al. (2024) benchmark: a ``config name`` column, one column per
training-set size (an integer header; ``0`` is the zero-shot loss), a ``size`` column with the parameter
count, and optionally ``family`` and ``ntk_f`` (LENSLLM's F term for the model). Any number of models and
sizes is accepted; empty cells are sizes not measured (yet).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmtune.errors import InputError
from lmtune.files import write_atomic

NAME_COLUMN = "config name"
PARAMS_COLUMN = "size"
OPTIONAL_COLUMNS = ("family", "ntk_f")


@dataclass
class Curves:
    """Losses ``losses[i, j]`` of model ``names[i]`` at training size ``sizes[j]`` (NaN: not measured).

    ``sizes`` is increasing and may start with 0 (the zero-shot loss).
    """

    names: list[str]
    sizes: np.ndarray
    losses: np.ndarray
    params: np.ndarray
    families: list[str] = field(default_factory=list)
    ntk_f: np.ndarray | None = None

    def __post_init__(self):
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        self.losses = np.asarray(self.losses, dtype=np.float64)
        self.params = np.asarray(self.params, dtype=np.float64)
        if not self.families:
            self.families = [""] * len(self.names)

    @property
    def positive_sizes(self) -> np.ndarray:
        return self.sizes[self.sizes > 0]

    def zero_shot(self) -> np.ndarray | None:
        """The D=0 column, or None when the file has none."""
        return self.losses[:, 0] if self.sizes[0] == 0 else None

    def up_to(self, budget: float) -> Curves:
        """The curves a method may see under a data budget: sizes <= ``budget`` (and D=0)."""
        keep = self.sizes <= budget
        return Curves(self.names, self.sizes[keep], self.losses[:, keep], self.params, self.families, self.ntk_f)

    def loss_at(self, size: int) -> np.ndarray | None:
        """True losses at ``size`` when every model has one, else None."""
        hits = np.flatnonzero(self.sizes == size)
        if hits.size == 0 or np.isnan(self.losses[:, hits[0]]).any():
            return None
        return self.losses[:, hits[0]]


def load_curves(path: str | Path, partial: bool = False) -> Curves:
    """Read and validate a curves CSV; bad files raise ``InputError('curves', ...)`` saying what is wrong.

    ``partial``: a file still being measured (``lmtune select`` with ``models``, interrupted), where a model may
    have fewer than two losses yet; only resuming reads it so.
    """
    path = Path(path)
    rows = _read_rows(path)
    header = [h.strip() for h in rows[0]]
    size_cols = _size_columns(header, path)
    sizes = [s for _, s in size_cols]
    col = {h: j for j, h in enumerate(header)}
    names, losses, params, families, ntk = [], [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        row = row + [""] * (len(header) - len(row))
        name = row[col[NAME_COLUMN]].strip()
        if not name:
            raise InputError("curves", f"{path} line {line}: empty '{NAME_COLUMN}'")
        if name in names:
            raise InputError("curves", f"{path} line {line}: model {name!r} appears twice")
        losses.append(_losses(row, size_cols, name, path, line, partial))
        count = _number(row[col[PARAMS_COLUMN]].strip(), path, line, PARAMS_COLUMN)
        if not count > 0:
            raise InputError("curves", f"{path} line {line}: '{PARAMS_COLUMN}' (parameter count) must be > 0")
        names.append(name)
        params.append(count)
        families.append(row[col["family"]].strip() if "family" in col else "")
        if "ntk_f" in col:
            cell = row[col["ntk_f"]].strip()
            ntk.append(math.nan if cell == "" else _number(cell, path, line, "ntk_f"))
    if not names:
        raise InputError("curves", f"{path} has no model rows")
    order = np.argsort(sizes)
    return Curves(names, np.array(sizes)[order], np.array(losses)[:, order], np.array(params), families,
                  np.array(ntk) if ntk else None)


def _read_rows(path: Path) -> list[list[str]]:
    """The CSV's rows: a header and at least one more."""
    if not path.is_file():
        raise InputError("curves", f"file not found: {path}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError("curves", f"cannot parse {path}: {error}") from error
    if len(rows) < 2:
        raise InputError("curves", f"{path} needs a header and at least one model row")
    return rows


def _size_columns(header: list[str], path: Path) -> list[tuple[int, int]]:
    """(column, training size) of every size column, once the header has its required columns and no other."""
    for required in (NAME_COLUMN, PARAMS_COLUMN):
        if required not in header:
            raise InputError("curves", f"{path}: column {required!r} missing; a curves file has "
                                       f"'{NAME_COLUMN}', integer size columns (0 = zero-shot) and '{PARAMS_COLUMN}'")
    size_cols = [(j, int(h)) for j, h in enumerate(header) if h.isdigit()]
    unknown = [h for h in header if not h.isdigit() and h not in (NAME_COLUMN, PARAMS_COLUMN, *OPTIONAL_COLUMNS)]
    if unknown:
        optional = ", ".join(f"'{c}'" for c in OPTIONAL_COLUMNS)
        raise InputError("curves", f"{path}: unknown column {unknown[0]!r}; allowed: '{NAME_COLUMN}', integer "
                                   f"training sizes, '{PARAMS_COLUMN}', {optional}")
    sizes = [s for _, s in size_cols]
    if len(set(sizes)) != len(sizes):
        raise InputError("curves", f"{path}: a training size appears twice")
    if len([s for s in sizes if s > 0]) < 2:
        raise InputError("curves", f"{path}: needs losses at two or more positive training sizes, found "
                                   f"{len([s for s in sizes if s > 0])}")
    return size_cols


def _losses(row: list[str], size_cols: list[tuple[int, int]], name: str, path: Path, line: int,
            partial: bool) -> list[float]:
    """One model's losses in file order (NaN: an empty cell, a size not measured); two or more at positive sizes
    unless the file is ``partial``."""
    values = []
    for j, size in size_cols:
        cell = row[j].strip()
        value = math.nan if cell == "" else _number(cell, path, line, str(size))
        if cell != "" and not (math.isfinite(value) and value > 0):  # a missing loss is an empty cell
            raise InputError("curves", f"{path} line {line}: loss at size {size} must be a positive finite "
                                       f"number, got {cell}")
        values.append(value)
    seen = sum(1 for (_, size), value in zip(size_cols, values, strict=True) if size > 0 and math.isfinite(value))
    if seen < 2 and not partial:
        raise InputError("curves", f"{path} line {line}: model {name!r} has losses at {seen} positive training "
                                   "size(s); two or more are needed to rank it")
    return values


def save_curves(curves: Curves, path: str | Path) -> None:
    """Write ``curves`` in the same format, atomically (a crash never leaves half a file)."""
    header = [NAME_COLUMN, *map(str, curves.sizes), PARAMS_COLUMN, "family"]
    if curves.ntk_f is not None:
        header.append("ntk_f")
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(header)
    for i, name in enumerate(curves.names):
        cells = ["" if math.isnan(v) else repr(float(v)) for v in curves.losses[i]]
        row = [name, *cells, str(int(curves.params[i])), curves.families[i]]
        if curves.ntk_f is not None:
            row.append("" if math.isnan(curves.ntk_f[i]) else repr(float(curves.ntk_f[i])))
        writer.writerow(row)
    write_atomic(path, handle.getvalue())


def _number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise InputError("curves", f"{path} line {line}: column {column!r} must be a number, got {cell!r}") from None
