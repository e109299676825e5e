"""The guard around AtS: its fallback rule, its bound, the design rule, and what it reduces to."""

import numpy as np
import pytest

from lmtune.selection.curves import Curves
from lmtune.selection.evaluate import evaluate_methods
from lmtune.selection.guard import (
    ALTERNATIVES,
    Extrapolations,
    Setting,
    choose_setting,
    extrapolations,
    guarded,
    settings_grid,
)
from lmtune.selection.predictors import AtS, AtSMedian, GuardedAtS

SIZES = np.array([0] + [200 * 2 ** k for k in range(10)])


def synthetic(seed: int = 0, n: int = 8, noise: float = 0.02) -> Curves:
    """Rectified-law curves with multiplicative noise: a pre-power phase, a bend, a floor."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, c, beta, e = 4 + rng.uniform(0, 1), -rng.uniform(4, 9), rng.uniform(0.4, 0.9), rng.uniform(0.2, 1.0)
        d = SIZES.astype(float)
        rows.append((e + (a - e) / (1 + np.exp(c) * d ** beta)) * np.exp(rng.normal(0, noise, len(d))))
    return Curves([f"m{i}" for i in range(n)], SIZES, np.array(rows), 1e6 * (1 + np.arange(n)))


def test_the_guard_is_ats_wherever_the_interval_overlaps_ats_prediction():
    rng = np.random.default_rng(3)
    anchor = rng.normal(0, 1, 20)
    side = {"tail3": -1, "kernel": 1, "rectified": -1, "lensllm": 1}  # fits on all points: two below, two above
    alternatives = {name: anchor[:, None] + sign * rng.uniform(0.1, 1, (20, 1)) for name, sign in side.items()}
    for name in ("tail3", "kernel"):  # jackknife refits on both sides of AtS
        alternatives[name] = np.concatenate([alternatives[name], anchor[:, None] - rng.uniform(0, 1, (20, 3)),
                                             anchor[:, None] + rng.uniform(0, 1, (20, 3))], axis=1)
    extra = Extrapolations(anchor, alternatives, [])
    everywhere = 0
    for setting in settings_grid():
        low, high = extra.interval(setting)
        inside = (low <= anchor) & (anchor <= high)
        predicted = extra.predict(setting)
        assert predicted[inside] == pytest.approx(np.exp(anchor[inside]), rel=1e-12), setting.name
        assert (predicted[~inside] != np.exp(anchor[~inside])).all()
        if inside.all():  # intervals overlap AtS everywhere: the ranking and the losses are AtS's
            everywhere += 1
            assert (np.argsort(predicted, kind="stable") == np.argsort(anchor, kind="stable")).all()
    assert everywhere >= 20


def test_the_guard_moves_only_to_the_nearest_end_of_an_interval_that_excludes_ats():
    anchor = np.array([0.0, 0.0, 0.0, 0.0])
    low, high = np.array([-0.5, 0.2, -0.1, np.nan]), np.array([-0.3, 0.4, 0.1, np.nan])
    assert guarded(anchor, low, high) == pytest.approx([-0.3, 0.2, 0.0, 0.0])
    assert guarded(anchor, low, high, weight=0.5) == pytest.approx([-0.15, 0.1, 0.0, 0.0])
    assert guarded(anchor, low, high, weight=0.0) == pytest.approx(anchor)


def test_the_guard_is_never_farther_from_a_truth_its_interval_covers():
    rng = np.random.default_rng(0)
    anchor, a, b = rng.normal(0, 1, (3, 10_000))
    low, high = np.minimum(a, b), np.maximum(a, b)
    truth = low + rng.uniform(0, 1, 10_000) * (high - low)
    for weight in (0.5, 1.0):
        moved = guarded(anchor, low, high, weight)
        assert (np.abs(moved - truth) <= np.abs(anchor - truth) + 1e-12).all()


def test_settings_reduce_to_ats_and_to_ats_median():
    curves = synthetic()
    seen = curves.up_to(curves.sizes.max() / 8)
    target = int(curves.sizes.max())
    ats = AtS().predict(seen, target).scores
    assert GuardedAtS(Setting()).predict(seen, target).scores == pytest.approx(ats, rel=1e-12)
    assert GuardedAtS(Setting(("tail3", "kernel"), weight=0.0)).predict(seen, target).scores == pytest.approx(ats)
    # clip(AtS, [min, max] of the two end-weighted lines) is the median of the three: ats-median
    median = AtSMedian().predict(seen, target).scores
    assert GuardedAtS(Setting(("tail3", "kernel"))).predict(seen, target).scores == pytest.approx(median, rel=1e-12)


def test_extrapolations_hold_every_alternative_and_a_jackknife_of_the_lines():
    curves = synthetic(1)
    seen = curves.up_to(curves.sizes.max() / 4)
    extra = extrapolations(seen, int(curves.sizes.max()))
    replicates = 1 + int((seen.sizes > 0).sum())
    assert extra.alternatives["tail3"].shape == (8, replicates) and extra.alternatives["rectified"].shape == (8, 1)
    assert np.isfinite(extra.alternatives["kernel"]).all() and np.isfinite(extra.ats).all()
    low, high = extra.interval(Setting(("tail3",), jackknife=True))
    plain_low, plain_high = extra.interval(Setting(("tail3",)))
    assert (low <= plain_low).all() and (high >= plain_high).all() and (plain_low == plain_high).all()
    assert extrapolations(seen, int(curves.sizes.max())) is extra  # memoised on the visible data
    changed = curves.up_to(curves.sizes.max() / 4)
    changed.losses[0, -1] *= 1.01
    assert extrapolations(changed, int(curves.sizes.max())) is not extra


def test_a_guarded_ranking_scores_in_the_harness():
    curves = synthetic(2, noise=0.0)
    selection = evaluate_methods(curves, int(curves.sizes.max()), 8, predictors=[AtS(), GuardedAtS(Setting(ALTERNATIVES,
                                                                                                       True, 1.0))])
    assert selection.results["ats-guard"].pearcorr > 90
    assert selection.results["ats-guard"].flops == selection.results["ats"].flops  # it trains what AtS trains


def test_setting_names_round_trip_and_the_grid_starts_with_ats():
    grid = settings_grid()
    assert grid[0] == Setting() and grid[0].name == "ats"
    assert len({s.name for s in grid}) == len(grid)
    for setting in grid:
        assert Setting.parse(setting.name) == setting
    with pytest.raises(ValueError, match="unknown alternative"):
        Setting.parse("vanilla@1")


def test_the_design_rule_never_takes_a_setting_below_ats_on_a_design_cell():
    grid = [Setting(), Setting(("tail3",)), Setting(("kernel",)), Setting(("rectified",))]
    baseline = [(50.0, 90.0), (60.0, 90.0)]
    scores = {grid[0]: baseline,
              grid[1]: [(70.0, 90.0), (59.9, 100.0)],  # a large mean gain, but below AtS in one cell
              grid[2]: [(51.0, 90.0), (61.0, 90.0)],  # never below: admissible, mean gain 1
              grid[3]: [(51.0, 90.0), (61.0, 90.0)]}  # the same gain, later in the grid: the tie goes to kernel
    chosen, summary = choose_setting(scores, baseline, grid)
    assert chosen == grid[2] and summary["admissible"] == 3 and summary["mean_gain"] == pytest.approx(1.0)
    scores[grid[2]] = scores[grid[3]] = [(51.0, 89.0), (61.0, 90.0)]  # a RelAcc loss counts too
    assert choose_setting(scores, baseline, grid)[0] == Setting()  # nothing is safe: fall back to AtS
    scores[grid[2]] = [(float("nan"), 90.0), (61.0, 90.0)]  # an undefined PearCorr where AtS has one is a loss
    assert choose_setting(scores, baseline, grid)[0] == Setting()
