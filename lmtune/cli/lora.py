"""``lmtune lora`` and ``lmtune lora proxy-check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmtune.cli.app import console, lora_app
from lmtune.cli.options import as_flags, config_options
from lmtune.config import build_config
from lmtune.lora.config import LoraRunConfig
from lmtune.runtime.quiet import quiet_libraries


@lora_app.callback(invoke_without_command=True)
@config_options(LoraRunConfig)
def lora(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these fields; flags override it.",
                                                metavar="FILE")] = None,
    values: dict[str, Any] | None = None,
) -> None:
    """Search LoRA configs on a proxy subset, then retrain the best on the full training split and test it.

    Options given before a subcommand (``lmtune lora --dataset d.csv proxy-check``) configure it too.
    """
    cfg = build_config(LoraRunConfig, config, **values)
    quiet_libraries()
    if ctx.invoked_subcommand is not None:
        ctx.obj = cfg
        return
    from lmtune.cli.progress import TrialProgress
    from lmtune.lora.tune import tune_lora

    with TrialProgress(console) as progress:
        result = tune_lora(cfg, listener=progress)
    if not cfg.run:
        print(f"study {result.study_name}: {result.finished} of {result.budget} trials finished")
        return
    print(f"best config: {result.best['hyperparams']}")
    nothing = result.best.get("learned_nothing")
    print("proxy validation " + ", ".join(f"{k}: {v:.4f}" for k, v in result.best["proxy_metrics"].items())
          + (f" ({nothing})" if nothing else ""))
    spent = result.spent
    print(f"search: {spent['trials']} trials ({spent['pruned']} pruned), {spent['steps']} steps, "
          f"{spent['seconds']:.0f} s, {spent['full_runs']:g} full runs' worth of training examples")
    if result.final is not None:
        print(f"test {result.final['metric_name']}: {result.final['test_metric']:.4f}")
    print(f"results: {cfg.out_dir / 'results.json'}; train it again: lmtune lora --config {cfg.out_dir / 'best.yaml'}")
    if result.report is not None:
        print(f"report: {result.report}")


@lora_app.command("proxy-check")
def proxy_check_command(
    ctx: typer.Context,
    configs: Annotated[int, typer.Option(help="Random configs to train on the proxy and on all data.",
                                         metavar="N")] = 8,
) -> None:
    """Train random configs as search trials and on the full training split; print how well the proxy tracks."""
    from lmtune.lora.proxy_check import proxy_check

    result = proxy_check(ctx.obj, configs)
    size = (f"{result.proxy_steps} steps" if result.proxy_steps else
            f"{result.proxy_share:.0%} of each full run" if result.proxy_share else "epochs")
    print(f"proxy ({size} on {result.proxy_examples} examples, {result.proxy_fraction:.0%}) vs full "
          f"({result.full_examples} examples) over {result.paired} configs:")
    for metric, by_evaluation in result.correlations.items():
        if not by_evaluation:
            continue
        last = by_evaluation[max(by_evaluation)]
        pearson, spearman = last["pearson"], last["spearman"]
        shown = "undefined (fewer than 3 paired results or no spread)" if spearman is None else (
            f"Pearson {pearson:.3f}, Spearman {spearman:.3f}")
        mark = " (ranks trials)" if metric == result.proxy_metric else ""
        print(f"  proxy {metric}{mark} vs full {result.metric_name}: {shown}")
    if result.cost_share is not None:
        seconds = "" if result.seconds_share is None else f", {result.seconds_share:.0%} of its time"
        print(f"  a trial costs {result.cost_share:.0%} of a full run's training examples{seconds}")
    print(f"recommendation: {as_flags(result.recommendation or 'none: the proxy tracks the full run')}")
