"""Leave-one-dataset-out: no method ever receives the file it is scored on, neither to design nor to predict."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lmtune.errors import InputError
from lmtune.selection.bench import bench_select
from lmtune.selection.curves import save_curves
from lmtune.selection.guard import Setting, settings_grid
from lmtune.selection.predictors import DESIGNED, PROPOSED, AtS, GuardedAtS, Prediction, Predictor
from lmtune.selection.protocol import (
    DesignFile,
    Fixed,
    GuardDesign,
    Method,
    design_file,
    design_guard,
    leave_one_out,
    score_held_out,
)
from tests.selection.test_guard import synthetic

RATIOS = (4, 16)


def files(count: int = 3) -> list[DesignFile]:
    out = []
    for k in range(count):
        curves = synthetic(10 + k, n=5, noise=0.01)
        out.append(DesignFile(f"f{k}", curves, int(curves.sizes.max()), RATIOS))
    return out


def _fingerprint(curves) -> bytes:
    """What identifies a file from any budget's view of it: its losses at the smallest positive size."""
    return np.round(curves.losses[:, curves.sizes > 0][:, 0], 12).tobytes()


class Oracle(Method):
    """A deliberately leaking method: it memorises the target column of every file its design step receives and,
    shown any budget's view of one of those files, returns the true target losses. Otherwise it is AtS."""

    name = "oracle"

    def design(self, design_files):
        memory = {_fingerprint(f.curves): f.truth().copy() for f in design_files}

        class Cheat(Predictor):
            name = "oracle"

            def predict(self, seen, target):
                truth = memory.get(_fingerprint(seen))
                if truth is None:
                    return AtS().predict(seen, target)
                return Prediction(self.name, truth, truth.copy(), [])

        return Cheat(), ""


class Recorder(Method):
    """Writes down every loss its design step and its predictor are given."""

    name = "recorder"

    def __init__(self):
        self.designed_on, self.seen = [], []

    def design(self, design_files):
        self.designed_on.append([f.name for f in design_files])
        recorder = self

        class Looks(Predictor):
            name = "recorder"

            def predict(self, seen, target):
                recorder.seen.append((seen.sizes.copy(), seen.losses.copy(), target))
                return AtS().predict(seen, target)

        return Looks(), ""


def test_a_leaking_method_gains_nothing_held_out():
    data = files()
    folds = leave_one_out(data, [Fixed(AtS()), Oracle()])
    for fold in folds:
        for ratio in RATIOS:
            ats, oracle = fold.results["ats"][ratio], fold.results["oracle"][ratio]
            assert oracle.pearcorr == pytest.approx(ats.pearcorr) and oracle.relacc == ats.relacc
    # the control: had the held-out file been among the design files, the oracle would have been perfect,
    # so the equality above is the protocol's doing, not the oracle's weakness
    leaked, _ = score_held_out(data[0], data, Oracle())
    assert all(leaked[r].pearcorr == pytest.approx(100.0) and leaked[r].relacc == 100.0 for r in RATIOS)
    assert min(f.results["ats"][r].pearcorr for f in folds for r in RATIOS) < 99.9


def test_design_gets_the_other_files_and_prediction_only_the_budget():
    data = files()
    recorder = Recorder()
    leave_one_out(data, [recorder])
    assert recorder.designed_on == [["f1", "f2"], ["f0", "f2"], ["f0", "f1"]]
    assert len(recorder.seen) == len(data) * len(RATIOS)
    for (sizes, losses, target), (fold, ratio) in zip(recorder.seen, [(f, r) for f in data for r in RATIOS],
                                                      strict=True):
        assert sizes.max() <= target / ratio and target not in sizes
        visible = fold.curves.up_to(target / ratio)
        assert np.array_equal(losses, visible.losses)


def test_the_design_step_works_on_copies():
    data = files()

    class Vandal(Method):
        name = "vandal"

        def design(self, design_files):
            for f in design_files:
                f.curves.losses[:] = 1.0
            return AtS(), ""

    before = [f.curves.losses.copy() for f in data]
    leave_one_out(data, [Vandal(), Fixed(AtS())])
    assert all(np.array_equal(b, f.curves.losses) for b, f in zip(before, data, strict=True))


def test_the_guard_is_designed_per_fold_and_never_below_ats_on_its_design_files():
    data = files()
    folds = leave_one_out(data, [Fixed(AtS()), GuardDesign()])
    for fold in folds:
        assert "chose `" in fold.notes[PROPOSED]
        design = [f for f in data if f.name != fold.name]
        setting, summary = design_guard(design)
        assert fold.notes[PROPOSED].startswith(f"chose `{setting.name}`")
        for f in design:
            for ratio in f.ratios:
                ours = score_held_out(f, [], Fixed(GuardedAtS(setting)))[0][ratio]
                ats = score_held_out(f, [], Fixed(AtS()))[0][ratio]
                assert ours.pearcorr >= ats.pearcorr - 1e-9 and ours.relacc >= ats.relacc
        assert summary["admissible"] >= 1 and summary["cells"] == 2 * len(RATIOS)
    assert design_guard(data[:1], [Setting()])[0] == Setting()


def test_bench_select_lodo_and_design_through_files(tmp_path):
    paths = []
    for f in files():
        save_curves(f.curves, tmp_path / f"{f.name}.csv")
        paths.append(tmp_path / f"{f.name}.csv")
    out = json.loads(bench_select(curves=paths, protocol="lodo", ratios=[4, 16], as_json=True))
    assert set(out["folds"]) == {"f0", "f1", "f2"}
    fold = out["folds"]["f1"]
    assert fold["designed_on"] == ["f0", "f2"]
    assert set(fold["scores"]) == {"ats", "rectified", "lensllm", "ats-median", PROPOSED}
    assert set(fold["scores"]["ats"]) == {"4", "16"}
    markdown = bench_select(curves=paths, protocol="lodo", ratios=[4, 16])
    assert "**f0 held out** (designed on f1, f2)" in markdown and "| PearCorr | ats-guard |" in markdown
    assert "AtS" in markdown.splitlines()[-1]
    design = json.loads(bench_select(curves=paths, protocol="design", ratios=[4, 16], as_json=True))
    assert Setting.parse(design["setting"]) == design_guard([design_file(p, [4, 16]) for p in paths])[0]
    assert out["design_all"] == design and f"Design on f0, f1, f2: `{design['setting']}`" in markdown
    several = json.loads(bench_select(curves=paths[:2], ratios=[16], as_json=True))
    assert set(several) == {"f0", "f1"} and "best" in several["f0"]
    with pytest.raises(InputError, match="two or more"):
        bench_select(curves=paths[:1], protocol="lodo")
    with pytest.raises(InputError, match="largest size") as info:
        bench_select(curves=paths, protocol="lodo", target_size=800)
    assert info.value.field == "target_size"
    twin = tmp_path / "twin"
    twin.mkdir()
    save_curves(files(1)[0].curves, twin / "f0.csv")
    with pytest.raises(InputError, match="share a name"):
        bench_select(curves=[paths[0], twin / "f0.csv"], protocol="lodo")


def test_the_default_setting_is_the_one_the_committed_run_designed_on_every_file():
    text = (Path(__file__).parents[2] / "benchmarks/results/select_lodo.md").read_text()
    chosen = re.search(r"^Design on (.+?): `([^`]+)`", text, re.MULTILINE)
    assert chosen, "benchmarks/select_lodo.sh output lacks its 'Design on' line"
    assert "flan" in chosen.group(1) and "bbc-minilm" in chosen.group(1)
    assert Setting.parse(chosen.group(2)) == DESIGNED and DESIGNED in settings_grid()
