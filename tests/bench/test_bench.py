"""lmtune bench: building a table resumes, lookups are strict, replays are deterministic and scored right."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from lmtune.bench.build import build_full_runs, build_table, choose_full_configs
from lmtune.bench.compare import compare_samplers, summarize
from lmtune.bench.replay import regret_curve, replay, trials_to_reach
from lmtune.bench.specs import TABLES, TableSpec, load_table_spec
from lmtune.bench.table import Table
from lmtune.errors import InputError
from lmtune.finetune.data import load_dataset
from lmtune.space import Categorical, Ordered, SearchSpace, config_key

ROOT = Path(__file__).resolve().parents[2]
GRID = SearchSpace(
    (
        Ordered("rank", (2, 4, 8, 16), log=True),
        Ordered("alpha_ratio", (0.5, 1.0, 2.0), log=True),
        Ordered("learning_rate", (1e-4, 1e-3, 1e-2), log=True),
        Ordered("dropout", (0.0, 0.1)),
    ),
    {"variant": "lora", "batch_size": 8},
    "synthetic",
)


SMALL_GRID = SearchSpace(
    (Ordered("rank", (2, 8, 16), log=True), Ordered("alpha_ratio", (1.0, 2.0), log=True),
     Ordered("learning_rate", (1e-3, 1e-2), log=True), Ordered("dropout", (0.0,))),
    {"variant": "lora", "batch_size": 8},
    "synthetic-small",
)


def synthetic_table(fail: set[int] = frozenset(), grid: SearchSpace = GRID) -> Table:
    """A smooth landscape over a grid (72 configs by default): best at rank 8, alpha ratio 2, lr 1e-3, no dropout."""
    rows = []
    for i, config in enumerate(grid.iter_pool()):
        params = {k: v for k, v in config.items() if k not in grid.fixed}
        score = (0.9 - 0.05 * abs(math.log2(config["rank"] / 8)) - 0.1 * abs(math.log2(config["alpha_ratio"] / 2))
                 - 0.15 * abs(math.log10(config["learning_rate"] / 1e-3)) - 0.2 * config["dropout"])
        failed = i in fail
        rows.append({"params": params, "state": "FAIL" if failed else "COMPLETE", "metric": None if failed else score,
                     "eval_loss": None, "trajectory": [], "step_losses": [], "train_seconds": 1.0,
                     "fail_reason": "diverged" if failed else None})
    recipe = {"name": "synthetic", "grid": grid.to_dict()}
    return Table(name="synthetic", recipe=recipe, metric_name="accuracy", direction="maximize", rows=rows)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_committed_table_holds_its_whole_grid_built_with_its_spec(name):
    """A committed file's numbers are stored as categorical choices: they read back as the spec's ordered
    parameters, the recipe is the spec's, and every config of the grid has its row, each once."""
    table = Table.load(ROOT / "benchmarks" / "data" / f"{name}.json.gz")
    spec = load_table_spec(name)
    assert table.built_with(spec.recipe()) and table.complete
    assert [(type(p), p.values(), getattr(p, "log", None)) for p in table.grid.params] == [
        (type(p), p.values(), getattr(p, "log", None)) for p in spec.grid.params]
    assert sorted(config_key({**r["params"], **spec.grid.fixed}) for r in table.rows) == sorted(
        config_key(c) for c in spec.grid.iter_pool())


def test_lookup_is_exact_and_rejects_configs_outside_the_grid():
    table = synthetic_table()
    assert table.lookup({"rank": 8, "alpha_ratio": 2, "learning_rate": 1e-3, "dropout": 0.0})["metric"] == (
        pytest.approx(0.9))
    with pytest.raises(InputError) as excinfo:
        table.lookup({"rank": 32, "alpha_ratio": 2, "learning_rate": 1e-3, "dropout": 0.0})
    assert excinfo.value.field == "rank" and "outside the space" in excinfo.value.message
    with pytest.raises(InputError) as excinfo:
        table.lookup({"rank": 8, "alpha_ratio": 2, "learning_rate": 1e-3})
    assert excinfo.value.field == "dropout"
    partial = Table(name="p", recipe=table.recipe, metric_name="accuracy", direction="maximize", rows=table.rows[:10])
    with pytest.raises(InputError, match="has no row yet"):
        partial.lookup(table.rows[-1]["params"])
    with pytest.raises(InputError, match="replay needs every config"):
        replay(partial, "random", 0, 5)


def test_table_file_round_trips_and_summary_counts(tmp_path):
    table = synthetic_table(fail={0, 5})
    loaded = Table.load(table.save(tmp_path / "t.json.gz"))
    assert loaded.rows == table.rows and loaded.fingerprint() == table.fingerprint()
    summary = loaded.summary()
    assert summary["configs"] == 72 and summary["failed"] == 2
    assert summary["best"] == pytest.approx(0.9)
    assert summary["worst"] == pytest.approx(min(r["metric"] for r in table.rows if r["metric"] is not None))
    (tmp_path / "bad.json.gz").write_text("not gzip")
    with pytest.raises(InputError, match="not a gzipped lmtune table"):
        Table.load(tmp_path / "bad.json.gz")


def old_grid(grid: SearchSpace) -> dict:
    """A grid as table files stored it before ordered parameters existed: every number categorical, no format."""
    return {"name": grid.name, "fixed": dict(grid.fixed),
            "params": {p.name: {"type": "categorical", "choices": list(p.values())} for p in grid.params}}


def test_a_table_file_written_before_ordered_parameters_reads_its_numbers_ordered(tmp_path):
    """Old table files (the committed ones among them) read as ordered, log-scaled where all values are positive
    and span a factor of 4; the file, its recipe and its fingerprint stay as they were."""
    old = synthetic_table(grid=GRID.with_param(Categorical("target", ("q", "v"))))
    old.recipe = {**old.recipe, "grid": old_grid(old.grid)}
    loaded = Table.load(old.save(tmp_path / "old.json.gz"))
    assert loaded.grid.param("rank") == Ordered("rank", (2, 4, 8, 16), log=True)
    assert loaded.grid.param("alpha_ratio") == Ordered("alpha_ratio", (0.5, 1.0, 2.0), log=True)
    assert loaded.grid.param("dropout") == Ordered("dropout", (0.0, 0.1), log=False)
    assert loaded.grid.param("target") == Categorical("target", ("q", "v"))
    assert loaded.recipe == old.recipe and loaded.fingerprint() == old.fingerprint()
    assert loaded.built_with({**old.recipe, "grid": loaded.grid.to_dict()})  # today's spec of the same grid
    assert not loaded.built_with({**old.recipe, "grid": GRID.to_dict()})  # another grid
    committed = {json.loads(line)["table"]: json.loads(line)["fingerprint"]
                 for line in (ROOT / "benchmarks/results/samplers/runs.jsonl").read_text().splitlines()}
    for name in ("arith-sft", "bbc-minilm"):
        table = Table.load(ROOT / f"benchmarks/data/{name}.json.gz")
        assert table.fingerprint() == committed[name]  # the committed replays stay keyed to it
        assert table.grid == load_table_spec(name).grid  # the spec declares what the old rule reads


def test_logged_replays_are_reused_only_for_methods_whose_search_did_not_change(tmp_path):
    """A run logged before ordered parameters (no ``search`` key) is reused for NOMAD, replayed again for Optuna's
    samplers (now index-encoded and never repeating)."""
    table = synthetic_table()
    logged = [{"table": "synthetic", "fingerprint": table.fingerprint(), "method": method, "seed": 0, "budget": 6,
               "prior": "", "values": [0.5] * 6, "seconds": 0.0} for method in ("nomad", "random")]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    compare_samplers([table], ["nomad", "random"], seeds=1, budget=6, output=tmp_path)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["method"], r.get("search")) for r in runs] == [("nomad", None), ("random", None),
                                                              ("random", "ordered-index")]
    assert runs[-1]["values"] != [0.5] * 6


def test_regret_curve_and_trials_to_top():
    table = synthetic_table()
    worst, best = table.worst, table.best
    mid = (worst + best) / 2
    curve = regret_curve(table, [None, worst, mid, best, worst], budget=6)
    np.testing.assert_allclose(curve, [1.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    assert trials_to_reach(table, [worst, mid, best], best) == 3
    assert trials_to_reach(table, [worst, mid], best) == math.inf


@pytest.mark.parametrize("method", ["random", "tpe", "gp", "nomad"])
def test_replay_is_deterministic_under_a_seed_and_spends_exactly_the_budget(method):
    table = synthetic_table(fail={3, 40})
    first, again = replay(table, method, 7, 12), replay(table, method, 7, 12)
    assert first.values == again.values
    assert len(first.values) == 12
    assert all(v is None or v in {r["metric"] for r in table.rows} for v in first.values)


def test_summary_matches_an_independent_computation_from_the_runs():
    table = synthetic_table()
    runs = [replay(table, m, s, 20) for m in ("random", "tpe", "nomad") for s in range(6)]
    assert len({tuple(r.values) for r in runs if r.method == "random"}) == 6  # seeds differ
    summary = summarize(table, runs, 20)
    spread = table.best - table.worst
    for method, stats in summary["methods"].items():
        finals = [(table.best - max(v for v in r.values[:10] if v is not None)) / spread
                  for r in runs if r.method == method]
        assert stats["regret"][10][0] == pytest.approx(np.mean(finals))
        assert stats["regret"][10][1] == pytest.approx(np.std(finals, ddof=1) / np.sqrt(6))
        assert stats["regret"][20][0] <= stats["regret"][5][0]  # best so far never gets worse
        assert 1 <= stats["mean_rank"] <= 3 and stats["mean_rank_at"][20] == stats["mean_rank"]
    assert sum(s["mean_rank"] for s in summary["methods"].values()) == pytest.approx(1 + 2 + 3)


def test_compare_samplers_writes_report_and_resumes_from_its_run_log(tmp_path):
    table = synthetic_table()
    report = compare_samplers([table], ["random", "nomad"], seeds=3, budget=10, output=tmp_path)
    assert "| random |" in report and "| nomad |" in report and "regret@10" in report
    assert (tmp_path / "samplers.png").stat().st_size > 10_000
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert compare_samplers([table], ["random", "nomad"], seeds=3, budget=10, output=tmp_path) == report
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6  # nothing replayed again


def test_compare_samplers_in_parallel_processes_finds_the_same_results(tmp_path):
    table = synthetic_table()
    compare_samplers([table], ["random", "tpe"], seeds=3, budget=8, output=tmp_path / "serial")
    compare_samplers([table], ["random", "tpe"], seeds=3, budget=8, output=tmp_path / "parallel", jobs=2)

    def runs(folder):
        return sorted((r["method"], r["seed"], r["values"]) for r in map(json.loads, (
            tmp_path / folder / "runs.jsonl").read_text().splitlines()))

    assert len(runs("parallel")) == 6
    assert runs("parallel") == runs("serial")


def test_language_bo_replay_is_deterministic(tmp_path, monkeypatch):
    """The ablation without the learnable token: same surrogate code path, a fraction of the CPU time."""
    monkeypatch.setenv("LMTUNE_CACHE_DIR", str(tmp_path))
    table = synthetic_table(grid=SMALL_GRID)
    first = replay(table, "language-bo-plain", 1, 7)  # five random trials, then two chosen by the surrogate
    assert replay(table, "language-bo-plain", 1, 7).values == first.values
    assert len(set(map(str, first.values))) > 1


VARIANT_GRID = SearchSpace(
    (Categorical("variant", ("lora", "dora")), Ordered("rank", (2, 8), log=True),
     Ordered("learning_rate", (1e-3, 1e-2), log=True)),
    {"alpha_ratio": 2.0, "batch_size": 8, "dropout": 0.0},
    "synthetic-variants",
)


def variant_table() -> Table:
    """A table of another shape: it searches the variant (a name) and no alpha ratio nor dropout."""
    rows = [{"params": {k: v for k, v in config.items() if k not in VARIANT_GRID.fixed}, "state": "COMPLETE",
             "metric": 0.5 + 0.1 * (config["variant"] == "dora") - 0.01 * config["rank"], "eval_loss": None,
             "trajectory": [], "step_losses": [], "train_seconds": 1.0, "fail_reason": None}
            for config in VARIANT_GRID.iter_pool()]
    return Table(name="variants", recipe={"grid": VARIANT_GRID.to_dict()}, metric_name="accuracy",
                 direction="maximize", rows=rows)


def test_transferring_methods_remember_the_other_compatible_tables_never_the_one_they_search(tmp_path, monkeypatch):
    """Leave one out: each table's transferring replays remember the other tables that search a compatible space
    (and an extra file), never the table itself, even when it is passed again as an extra; a table of another
    shape remembers nothing and is remembered by none, and its replay runs; other methods remember nothing."""
    monkeypatch.setenv("LMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    first = synthetic_table()
    second = Table(name="shifted", recipe={"grid": SMALL_GRID.to_dict()}, metric_name="accuracy",
                   direction="maximize", rows=synthetic_table(grid=SMALL_GRID).rows)
    third = variant_table()
    report = compare_samplers([first, second, third], ["language-bo+", "random"], seeds=1, budget=6,
                              output=tmp_path / "out", transfer_from=[first])
    assert "synthetic remembers shifted; shifted remembers synthetic; variants remembers nothing" in report
    runs = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    prior = {(r["table"], r["method"]): r["prior"] for r in runs}
    assert prior[("synthetic", "language-bo+")] == f"shifted:{second.fingerprint()}"
    assert prior[("shifted", "language-bo+")] == f"synthetic:{first.fingerprint()}"
    assert prior[("variants", "language-bo+")] == ""
    assert prior[("synthetic", "random")] == prior[("shifted", "random")] == ""
    assert len(runs) == 6 and all(len(r["values"]) == 6 for r in runs)  # remembered rows never took a trial
    assert "| mean rank @5 |" in report


@pytest.fixture
def tiny_model_dir(tmp_path_factory, tiny_bert, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_spec(tmp_path, model: str) -> TableSpec:
    rows = [f"{'good' if i % 2 else 'bad'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    grid = SearchSpace((Ordered("rank", (2, 4), log=True), Ordered("learning_rate", (1e-3, 1e-2), log=True),
                        Ordered("alpha_ratio", (1.0, 2.0), log=True)), {"variant": "lora", "batch_size": 8}, "tiny")
    return TableSpec(name="tiny", grid=grid, dataset=str(tmp_path / "reviews.csv"), model=model, proxy_fraction=0.5,
                     max_length=16, eval_points=2)


def test_build_resumes_without_training_finished_rows_again(tmp_path, tiny_model_dir):
    spec = tiny_spec(tmp_path, tiny_model_dir)
    storage = f"sqlite:///{tmp_path / 'bench.db'}"
    output = tmp_path / "tiny.json.gz"
    partial = build_table(spec, storage=storage, max_trials=3, output=output)
    assert len(partial.rows) == 3 and Table.load(output).rows == partial.rows
    first_trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert optuna.load_study(study_name="tiny", storage=storage).metric_names == ["accuracy"]  # not "Objective 0"

    full = build_table(spec, storage=storage, output=output)
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert len(full.rows) == 8 and full.complete and len(trials) == 8  # five more trials, not eight
    assert [(t.params, t.value, t.datetime_start) for t in trials[:3]] == [
        (t.params, t.value, t.datetime_start) for t in first_trials]
    keys = {tuple(sorted(r["params"].items())) for r in full.rows}
    assert len(keys) == 8  # every grid config exactly once
    assert all(r["trajectory"] and r["step_losses"] for r in full.rows if r["state"] == "COMPLETE")

    # a fresh checkout has the committed table file but no study: its rows are imported, not retrained
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    again = build_table(spec, storage=fresh, output=output, seed_from=Table.load(output))
    fresh_trials = optuna.load_study(study_name="tiny", storage=fresh).get_trials()
    assert len(fresh_trials) == 8 and all(t.user_attrs.get("imported_from") == "tiny" for t in fresh_trials)
    assert sorted(map(str, again.rows)) == sorted(map(str, full.rows))


def test_full_runs_train_chosen_configs_on_the_whole_split_once(tmp_path, tiny_model_dir):
    spec = tiny_spec(tmp_path, tiny_model_dir)
    storage = f"sqlite:///{tmp_path / 'bench.db'}"
    table = build_table(spec, storage=storage)
    bare = copy.deepcopy(table)  # build_full_runs adds to the rows of the table it is given
    with_full = build_full_runs(table, spec, 3, storage=storage)
    paired = [r for r in with_full.rows if "full" in r]
    assert sorted(config_key({**r["params"], **spec.grid.fixed}) for r in paired) == sorted(
        config_key(c) for c in choose_full_configs(table, 3))
    train_size = len(load_dataset(spec.dataset, task=spec.task, seed=spec.seed).train)
    assert all(r["full"]["metric"] is not None and r["full"]["train_examples"] == train_size for r in paired)

    again = build_full_runs(bare, spec, 3, storage=storage)
    assert len(optuna.load_study(study_name="tiny-full", storage=storage).trials) == 3  # resumed, not retrained
    assert [r.get("full") for r in again.rows] == [r.get("full") for r in with_full.rows]


def test_full_run_configs_spread_over_the_quality_range():
    table = synthetic_table(fail={1})
    chosen = choose_full_configs(table, 5)
    values = [table.lookup(c)["metric"] for c in chosen]
    assert values == sorted(values) and values[0] == pytest.approx(table.worst)
    assert values[-1] == pytest.approx(table.best)
    with pytest.raises(InputError, match="at least 3"):
        choose_full_configs(table, 2)


def test_cli_reports_bad_tables_and_methods_in_one_line(tmp_path):
    import subprocess
    import sys

    table = synthetic_table()
    Table(name="p", recipe=table.recipe, metric_name="accuracy", direction="maximize",
          rows=table.rows[:10]).save(tmp_path / "partial.json.gz")
    table.save(tmp_path / "full.json.gz")

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "lmtune.cli", "bench", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    partial = bench("samplers", "--table", "partial.json.gz", "--seeds", "1", "--budget", "3")
    assert partial.returncode == 2 and partial.stderr.startswith("error: table: table p holds 10 of its 72")
    unknown = bench("samplers", "--table", "full.json.gz", "--samplers", "random,smac")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: samplers: unknown method 'smac'")
    no_jobs = bench("samplers", "--table", "full.json.gz", "--jobs", "0")
    assert no_jobs.returncode == 2 and no_jobs.stderr.startswith("error: jobs: must be at least 1, got 0")
    missing = bench("show", "--table", "nope.json.gz")
    assert missing.returncode == 2 and "error: table: file nope.json.gz does not exist" in missing.stderr
    shown = bench("show", "--table", "full.json.gz")
    assert shown.returncode == 0 and "| synthetic | 72 | 0 | accuracy | 0.9000 |" in shown.stdout
    assert not (tmp_path / "benchmarks").exists()  # failed commands wrote nothing


def test_agent_replay_shows_the_rows_curves_to_the_model_and_reports_its_fallbacks(tmp_path):
    """A real HTTP server on 127.0.0.1 whose Optimizer replies are never JSON: every asked suggestion of the lead
    mode falls back, and the Analyzer's prompt holds the TCS report of the rows' trajectories."""
    from tests.samplers.test_agent import Misbehaving
    from tests.servers import Server

    table = synthetic_table(fail={3})
    for i, row in enumerate(table.rows):  # curves as a table build stores them; every fifth row overfits
        overfit = i % 5 == 0
        row["trajectory"] = [{"step": 5, "epoch": 0.5, "train_loss": 1.2, "eval_loss": 1.0, "accuracy": 0.5},
                             {"step": 10, "epoch": 1.0, "train_loss": 0.6, "eval_loss": 1.3 if overfit else 0.8,
                              "accuracy": 0.6}]
        row["step_losses"] = [1.5 - 0.08 * s for s in range(10)]
    server = Misbehaving()
    with Server(server.app()) as url:
        agent = {"endpoint": url, "model": "m", "timeout": 5.0}
        report = compare_samplers([table], ["agent-lead", "random"], seeds=2, budget=8, output=tmp_path, agent=agent)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    agent_runs = [r for r in runs if r["method"] == "agent-lead:m"]
    assert len(agent_runs) == 2 and all(r["extra"]["fallback_rate"] == 1.0 for r in agent_runs)
    assert all(r["extra"]["suggestions"] == 3 for r in agent_runs)  # 8 trials, 5 start-up
    assert "| agent-lead:m | 6 | 6 (100%) | 3.00 |" in report
    prompts = [r["messages"][1]["content"] for r in server.requests if not r.get("response_format")]
    assert len(prompts) == 6 and any("overfitting" in p for p in prompts)


def test_a_centaur_replay_whose_model_overrides_nothing_is_its_base_samplers_row_value_for_value(tmp_path):
    """Replies that are never JSON: the centaur agent overrides nothing, and its replay is the default sampler's own
    row (integer-coded, as the replays of Optuna's samplers see the grid), seed for seed; runs.jsonl keeps the mode
    and the share in the method's name."""
    from lmtune.samplers.registry import DEFAULT_SAMPLER
    from tests.samplers.test_agent import Misbehaving
    from tests.servers import Server

    table = synthetic_table(fail={3})
    server = Misbehaving()
    with Server(server.app()) as url:
        agent = {"endpoint": url, "model": "m", "timeout": 5.0, "override_share": 0.3}
        report = compare_samplers([table], [DEFAULT_SAMPLER, "agent"], seeds=3, budget=20, output=tmp_path,
                                  agent=agent)
    runs = {(r["method"], r["seed"]): r for r in map(json.loads, (tmp_path / "runs.jsonl").read_text().splitlines())}
    for seed in range(3):
        centaur = runs["agent:m (centaur 0.3)", seed]
        assert centaur["values"] == runs[DEFAULT_SAMPLER, seed]["values"]
        assert centaur["extra"]["overrides"] == 0 and centaur["extra"]["refused"] == centaur["extra"]["asked"] > 0
    assert "| agent:m (centaur 0.3) | 0 of 60 (0%) |" in report
