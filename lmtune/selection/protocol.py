"""Leave-one-dataset-out: every choice a selection method makes is made on files other than the one it is scored on.

For each curves file in turn (the held-out file), each method's design step receives the *other* files only,
whole (their target columns included: they are design data), and returns a fixed predictor. Only then is the
held-out file used, through ``evaluate_methods``: the predictor sees the held-out points under each budget (sizes <=
target/ratio, and D=0) and nothing else, and its ranking is scored against the held-out target losses afterwards.
A method therefore cannot receive the held-out target column while it designs, nor while it predicts.

A method without choices (AtS, a fitted law) is :class:`Fixed`: its design step returns it unchanged. The guard
(:mod:`lmtune.selection.guard`) is :class:`GuardDesign`: its design step scores every setting of its grid on every
design file and budget ratio, and keeps the one ``choose_setting`` picks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmtune.errors import InputError
from lmtune.selection.curves import Curves, load_curves
from lmtune.selection.evaluate import MethodResult, check_budget, evaluate_methods
from lmtune.selection.guard import Setting, choose_setting, extrapolations, settings_grid
from lmtune.selection.metrics import pearcorr, relacc
from lmtune.selection.predictors import AtS, GuardedAtS, LawPredictor, Predictor, all_predictors


@dataclass(frozen=True)
class DesignFile:
    """One curves file as design data: every model's losses including the target column, and the budget ratios
    at which it is scored (those that leave at least two visible positive sizes)."""

    name: str
    curves: Curves
    target: int
    ratios: tuple[int, ...]

    def truth(self) -> np.ndarray:
        return self.curves.loss_at(self.target)


def design_file(path: str | Path, ratios: Sequence[int]) -> DesignFile:
    """Load a curves file for the protocol: its target is its largest size, where every model needs a loss."""
    curves = load_curves(path)
    target = int(curves.sizes.max())
    if curves.loss_at(target) is None:
        raise InputError("curves", f"{path}: every model needs its true loss at the largest size {target:,}")
    usable = tuple(int(r) for r in ratios if (curves.positive_sizes <= target / r).sum() >= 2)
    if not usable:
        raise InputError("ratios", f"{path}: no ratio in {list(ratios)} leaves two positive sizes below the target")
    return DesignFile(Path(path).stem, curves, target, usable)


class Method:
    """A selection method as the protocol sees it: a design step that gets design files and returns a predictor."""

    name = "method"

    def design(self, files: Sequence[DesignFile]) -> tuple[Predictor, str]:
        """The predictor to score on the held-out file, and a note saying what was chosen (empty: nothing)."""
        raise NotImplementedError


class Fixed(Method):
    """A method with nothing to choose."""

    def __init__(self, predictor: Predictor):
        self.predictor, self.name = predictor, predictor.name

    def design(self, files):
        return self.predictor, ""


class GuardDesign(Method):
    """The guard, its setting chosen on the design files by ``choose_setting``."""

    name = GuardedAtS.name

    def __init__(self, grid: list[Setting] | None = None):
        self.grid = grid or settings_grid()

    def design(self, files):
        setting, summary = design_guard(files, self.grid)
        note = (f"chose `{setting.name}` ({summary['admissible']} of {summary['settings']} settings never below "
                f"AtS on {summary['cells']} design cells; mean gain {summary['mean_gain']:.2f} points)")
        return GuardedAtS(setting, self.name), note


def design_guard(files: Sequence[DesignFile], grid: list[Setting] | None = None) -> tuple[Setting, dict]:
    """Score every setting on every design file and ratio; ``choose_setting`` keeps one."""
    grid = grid or settings_grid()
    scores: dict[Setting, list[tuple[float, float]]] = {s: [] for s in grid}
    baseline = []
    for file in files:
        truth = file.truth()
        for ratio in file.ratios:
            budget = check_budget(file.curves, file.target, ratio)
            extra = extrapolations(file.curves.up_to(budget), file.target)
            baseline.append(_score(np.exp(extra.ats), truth))
            for setting in grid:
                scores[setting].append(_score(extra.predict(setting), truth))
    return choose_setting(scores, baseline, grid)


def _score(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return pearcorr(predicted, truth), relacc(int(np.argsort(predicted, kind="stable")[0]), truth)


def default_methods() -> list[Method]:
    """The methods of the leave-one-dataset-out table: AtS, the rectified law (the authors' fit), LENSLLM's law,
    ats-median, and the guard with its setting designed in the protocol."""
    fixed = {p.name: p for p in all_predictors() if isinstance(p, AtS | LawPredictor) or p.name == "ats-median"}
    return [Fixed(fixed["ats"]), Fixed(fixed["rectified"]), Fixed(fixed["lensllm"]), Fixed(fixed["ats-median"]),
            GuardDesign()]


@dataclass
class HeldOut:
    """One fold: the file left out, the files designed on, and each method's held-out results per ratio."""

    name: str
    design: list[str]
    results: dict[str, dict[int, MethodResult]]
    notes: dict[str, str] = field(default_factory=dict)


def score_held_out(held: DesignFile, design: Sequence[DesignFile], method: Method) -> tuple[dict[int, MethodResult],
                                                                                             str]:
    """Design ``method`` on ``design`` (deep copies: nothing it keeps can change or reach the originals), then
    score the fixed predictor on ``held`` at each of its ratios."""
    predictor, note = method.design(copy.deepcopy(list(design)))
    results = {}
    for ratio in held.ratios:
        selection = evaluate_methods(held.curves, held.target, ratio, predictors=[predictor])
        results[ratio] = selection.results[predictor.name]
    return results, note


def leave_one_out(files: Sequence[DesignFile], methods: Sequence[Method] | None = None) -> list[HeldOut]:
    """Each file in turn held out; each method designed on all the others and scored on it."""
    names = [f.name for f in files]
    if len(files) < 2:
        raise InputError("curves", "leave-one-dataset-out needs two or more curves files")
    if len(set(names)) != len(names):
        raise InputError("curves", f"two curves files share a name ({', '.join(names)}); rename one")
    methods = list(methods or default_methods())
    folds = []
    for k, held in enumerate(files):
        design = [f for j, f in enumerate(files) if j != k]
        fold = HeldOut(held.name, [f.name for f in design], {})
        for method in methods:
            fold.results[method.name], note = score_held_out(held, design, method)
            if note:
                fold.notes[method.name] = note
        folds.append(fold)
    return folds
