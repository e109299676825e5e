"""lmtune infer's tuner: the monotone pruning rules, the cost bound, the Pareto front, and whole searches on the
committed arithmetic model, locally and through a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from lmtune.inference.config import InferConfig
from lmtune.inference.evaluate import doubling, hoeffding_serfling
from lmtune.inference.pruning import PruningKnowledge
from lmtune.inference.tuner import tune_inference
from lmtune.llm.local import LocalGenerator
from lmtune.pareto import pareto_front
from tests.servers import Server


@pytest.fixture(scope="module")
def arith():
    return LocalGenerator("arith-lm")


def test_monotone_pruning_rules():
    k = PruningKnowledge()
    k.record("m|t0|s0", 4, 16, valid=False)
    assert k.status("m|t0|s0", 4, 16) == "invalid"
    assert k.status("m|t0|s0", 8, 16) == "invalid" and k.status("m|t0|s0", 4, 64) == "invalid"
    assert k.status("m|t0|s0", 2, 16) is None and k.status("m|t0|s0", 8, 8) is None
    assert k.evidence("m|t0|s0", 16, 32) == (4, 16)
    k.record("m|t0|s0", 2, 32, valid=True)
    assert k.status("m|t0|s0", 1, 8) == "valid" and k.status("m|t0|s0", 2, 32) == "valid"
    assert k.status("m|t0|s0", 3, 8) is None
    # another model, template or stop bills differently: nothing carries over
    assert k.status("m|t1|s0", 16, 64) is None and k.status("other|t0|s0", 16, 64) is None


def test_doubling_and_cost_bound():
    assert doubling(1) == [1] and doubling(8) == [1, 2, 4, 8] and doubling(6) == [1, 2, 4, 6]
    assert hoeffding_serfling(1.0, 10, 10, 0.1) == 0.0  # the whole population: no uncertainty left
    wide = hoeffding_serfling(1.0, 4, 100, 0.1)
    assert wide == pytest.approx((0.97 * 2.302585 / 8) ** 0.5, rel=1e-4)
    assert hoeffding_serfling(1.0, 50, 100, 0.1) < wide / 3


def test_pareto_front():
    points = [(1.0, 0.5, "a"), (2.0, 0.5, "b"), (2.0, 0.8, "c"), (0.5, 0.1, "d"), (3.0, 0.7, "e")]
    assert [p[2] for p in pareto_front(points)] == ["d", "a", "c"]


def settings(tmp_path, **kw) -> InferConfig:
    base = dict(local_model="arith-lm", inference_budget=0.02, optimization_budget=4.0, task_size=80,
                test_fraction=0.5, max_tokens=(2, 16), n=(1, 8), cache="none", test_pareto=False,
                storage=f"sqlite:///{tmp_path / 'infer.db'}", output_dir=None, seed=0)
    base.update(kw)
    return InferConfig(**base)


def test_search_respects_both_budgets_and_records_infeasible_configs(arith, tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    results = tune_inference(settings(tmp_path, storage=storage, models=["arith-lm"], local_model=None),
                             generator=arith)
    assert results.spend["real"] <= 4.0 and results.spend["real"] > 3.5
    best = results.best
    assert best["tuning"]["cost_per_instance"] <= 0.02 and best["tuning"]["quality"] > 0.8
    assert best["test"]["quality"] > 0.8 and results.test_instances == 40
    study = optuna.load_study(study_name="infer-arith-add3", storage=storage)
    trials = study.get_trials()
    assert trials[0].params["n"] == 1 and trials[0].params["max_tokens"] == 2  # the low-cost start
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.value is None and t.user_attrs["infeasible"] for t in pruned)
    assert all(t.user_attrs["cost_per_instance"] > 0.02 for t in pruned if not t.user_attrs.get("inferred"))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("optimization budget exhausted")
    assert sum(t.user_attrs["spend"] for t in trials) == pytest.approx(results.spend["real"])


def test_resume_continues_the_budget_and_reuses_cached_responses(arith, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    cache = str(tmp_path / "cache.sqlite")
    first = tune_inference(settings(tmp_path, storage=url, optimization_budget=1.0, cache=cache, models=["arith-lm"],
                                    local_model=None, output_dir=tmp_path), generator=arith)
    assert first.spend["real"] <= 1.0
    second = tune_inference(settings(tmp_path, storage=url, optimization_budget=2.0, cache=cache, models=["arith-lm"],
                                     local_model=None, output_dir=tmp_path), generator=arith)
    assert 1.0 < second.spend["real"] <= 2.0
    assert second.spend["cached"] > 0  # the interrupted-by-budget trial's responses came from the cache
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["spend"]["real"] == second.spend["real"]


def test_pruning_scores_more_configs_at_equal_budget(arith, tmp_path):
    common = dict(optimization_budget=3.0, n=(1, 32), models=["arith-lm"], local_model=None)
    pruned = tune_inference(settings(tmp_path, storage=f"sqlite:///{tmp_path / 'p.db'}", **common), generator=arith)
    plain = tune_inference(settings(tmp_path, storage=f"sqlite:///{tmp_path / 'n.db'}", pruning=False, **common),
                           generator=arith)
    tried = lambda r: r.configs_scored + r.configs_over_budget_measured + r.configs_pruned_by_knowledge  # noqa: E731
    assert tried(pruned) > tried(plain)
    assert pruned.spend["real"] <= 3.0 and plain.spend["real"] <= 3.0


def test_cli_through_a_real_openai_compatible_server(arith, tmp_path):
    from lmtune.cli import app
    from lmtune.llm.server import make_app

    runner = CliRunner()
    with Server(make_app(arith)) as url:
        args = ["infer", "--endpoint", url, "--models", "arith-lm", "--inference-budget", "0.02",
                "--optimization-budget", "1.5", "--task-size", "40", "--max-tokens", "2,12", "--n", "1,4",
                "--storage", f"sqlite:///{tmp_path / 'e.db'}", "--output-dir", str(tmp_path)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        written = json.loads((tmp_path / "results.json").read_text())
        assert written["spend"]["real"] <= 1.5 and written["best"]["test"]["cost_per_instance"] > 0
        # an unknown model without a price, before anything is stored
        bad = runner.invoke(app, ["infer", "--endpoint", url, "--models", "mystery", "--inference-budget", "1",
                                  "--optimization-budget", "1", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert isinstance(bad.exception, Exception) and "no price for model 'mystery'" in str(bad.exception)
    assert not (tmp_path / "x.db").exists()


def test_cli_errors_exit_2_with_one_line(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "lmtune.cli", "infer", *args], capture_output=True, text=True,
                              env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    out = run("--local-model", "arith-lm", "--inference-budget", "0.02", "--optimization-budget", "1",
              "--template", "{prompt", "--storage", f"sqlite:///{tmp_path / 'a.db'}")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: template: malformed template")
    out = run("--endpoint", "http://127.0.0.1:9/v1", "--models", "arith-lm", "--inference-budget", "0.02",
              "--optimization-budget", "1", "--storage", f"sqlite:///{tmp_path / 'a.db'}")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: endpoint: cannot reach")
    assert not (tmp_path / "a.db").exists()
