"""``lmtune infer``: tune decoding under a per-instance and a total cost budget."""

from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.cli.app import app, console
from lmtune.cli.options import as_flags, config_options
from lmtune.config import build_config
from lmtune.inference.config import InferConfig, parse_stop
from lmtune.runtime.quiet import quiet_libraries


@app.command("infer")
@config_options(InferConfig)
def infer_command(values: dict[str, Any] | None = None) -> None:
    """Tune model, temperature/top_p, max_tokens, n, prompt and stop under a per-instance and a total budget."""
    from lmtune.cli.progress import TrialProgress
    from lmtune.inference.tuner import tune_inference

    if "templates" in values:  # escapes like \\n as typed on a command line
        values["templates"] = [t.encode().decode("unicode_escape") for t in values["templates"]]
    if "stops" in values:
        values["stops"] = [parse_stop(x) for x in values["stops"]]
    cfg = build_config(InferConfig, **values)
    quiet_libraries()
    with TrialProgress(console, describe=describe_trial) as progress:
        results = tune_inference(cfg, listener=progress)
    print(spend_line(results.spend, cfg.optimization_budget)
          + f"; {results.configs_scored} configs scored, {results.configs_over_budget_measured} over budget, "
          f"{results.configs_pruned_by_knowledge} pruned by knowledge")
    best = results.best
    if results.stopped == "endpoint":  # not bad input (exit 2): the backend failed; results.json says how
        if cfg.output_dir is not None:
            print(f"results: {cfg.output_dir / 'results.json'}")
        field = "endpoint" if cfg.endpoint is not None else "local_model" if cfg.local_model is not None else "models"
        print(f"error: {field}: {as_flags(results.error)}", file=sys.stderr)
        raise SystemExit(1)
    if best is None:
        print("no config met the per-instance budget")
    else:
        print(f"best config: {best['config']}")
        tested = best.get("test")
        print(f"tuning {cfg.metric}: {best['tuning']['quality']:.4f} at ${best['tuning']['cost_per_instance']:.6g} "
              "per instance" + (f"; test {cfg.metric}: {tested['quality']:.4f} at ${tested['cost_per_instance']:.6g} "
                                "per instance" if tested else "; not tested"))
        print(f"pareto front: {len(results.pareto_front)} configs")
    if cfg.output_dir is not None:
        from lmtune.report.reports import report_study

        print(f"results: {cfg.output_dir / 'results.json'}")
        report = report_study(cfg.storage, results.study_name, cfg.output_dir / "report.html", dashboard=True)
        if report is not None:
            print(f"report: {report}")
    if results.error is not None:  # the search finished but the test evaluation failed
        print(f"error: endpoint: {as_flags(results.error)}", file=sys.stderr)
        raise SystemExit(1)


def spend_line(spend: dict, budget: float) -> str:
    """What the search spent of its budget and what testing on the held-out split cost on top (paid apart, so
    the search's budget holds), in dollars as the prices are."""
    line = f"spent ${spend['real']:.4g} of ${budget:.4g} on the search"
    if spend.get("unsettled", 0) > 0:
        line += f" (${spend['unsettled']:.4g} of it counted at worst case: calls whose bill is unknown)"
    if spend.get("cached", 0) > 0:
        line += f", ${spend['cached']:.4g} more answered from the cache (not paid)"
    if spend.get("test_real") is not None:
        line += f"; testing the best config on the held-out split cost ${spend['test_real']:.4g} more"
    return line


def describe_trial(study: optuna.Study, trial: FrozenTrial) -> str:
    """How a finished inference trial reads in the progress line: its score and cost, or why it has none (a field
    the reason names, as its flag), and what the search has spent so far."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.4f} at ${trial.user_attrs[attrs.COST_PER_INSTANCE]:.4g}/instance"
    else:
        why = trial.user_attrs.get(attrs.INFEASIBLE) or trial.user_attrs.get(attrs.FAIL_REASON)
        outcome = f"{trial.state.name} ({as_flags(str(why))})"
    spent = study.user_attrs.get(attrs.SPEND)
    if spent is None:
        spent = sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in study.get_trials(deepcopy=False))
    budget = study.user_attrs.get(attrs.OPTIMIZATION_BUDGET)
    return f"{outcome}; spent ${spent:.4g} of ${budget:.4g} {trial.params}"
