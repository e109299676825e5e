"""The ``lmtune`` command: parses flags, builds a config, calls the library. Nothing else."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmtune.config import LoraRunConfig, build_config
from lmtune.errors import InputError
from lmtune.study import Interrupted

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Choose LoRA configs, base models and decoding settings with few expensive runs.")
lora_app = typer.Typer(help="Search LoRA fine-tuning hyperparameters (rank, alpha, learning rate, batch, dropout).")
app.add_typer(lora_app, name="lora")

console = Console(stderr=True, soft_wrap=True)

STORAGE_HELP = ("sqlite:///FILE (default sqlite:///lmtune.db), postgresql+psycopg://USER:PASSWORD@HOST/DB, "
                "or journal:///FILE on a shared file system.")
HEARTBEAT_HELP = "Seconds between heartbeats of a running trial (SQLite/PostgreSQL; default 30)."
GRACE_HELP = "Seconds without a heartbeat before a trial is failed and retried once (default 120)."


@lora_app.callback(invoke_without_command=True)
def lora(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these fields; flags override it.")] = None,
    model: Annotated[str | None, typer.Option(help="HF model id or folder (default: offline MiniLM encoder).")] = None,
    dataset: Annotated[str | None, typer.Option(help="bbc-news (default), CSV/JSONL file or folder, or HF id.")] = None,
    task: Annotated[str | None, typer.Option(help="classification or causal (default: from the data).")] = None,
    space: Annotated[str | None, typer.Option(help="Preset (lora-small, lora-paper) or YAML file.")] = None,
    variant: Annotated[str | None, typer.Option(help="lora, rslora, dora, pissa, or 'search' for all four.")] = None,
    trials: Annotated[int | None, typer.Option(help="Finished trials the study should hold (default 10).")] = None,
    proxy_fraction: Annotated[float | None, typer.Option(help="Fraction of the training split per trial.")] = None,
    sampler: Annotated[str | None, typer.Option(help="random, tpe (default), gp, botorch or language-bo.")] = None,
    startup_trials: Annotated[int | None, typer.Option(help="Random trials before the sampler's model.")] = None,
    pruner: Annotated[str | None, typer.Option(help="none (default), median or hyperband.")] = None,
    template: Annotated[str | None, typer.Option(help="language-bo: domain (default), plain, or a file.")] = None,
    encoder: Annotated[str | None, typer.Option(help="language-bo: embedding model id or folder.")] = None,
    projection: Annotated[bool | None, typer.Option("--projection/--no-projection",
                                                    help="language-bo: learnable projection layer.")] = None,
    learnable_token: Annotated[bool | None, typer.Option("--learnable-token/--no-learnable-token",
                                                         help="language-bo: learnable soft token.")] = None,
    shortlist_k: Annotated[int | None, typer.Option(help="language-bo: exact re-scoring shortlist size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data splits, subsets, sampler and training.")] = None,
    storage: Annotated[str | None, typer.Option(help=STORAGE_HELP)] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name; an existing study resumes.")] = None,
    run: Annotated[bool | None, typer.Option("--run/--no-run",
                                             help="Run trials here; --no-run only creates the study.")] = None,
    heartbeat_interval: Annotated[int | None, typer.Option(help=HEARTBEAT_HELP)] = None,
    grace_period: Annotated[int | None, typer.Option(help=GRACE_HELP)] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Where results and the adapter go.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per example (default 128).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs per trial (default 1).")] = None,
    target_modules: Annotated[str | None, typer.Option(help="Comma-separated module names to adapt.")] = None,
    final_train: Annotated[bool | None, typer.Option("--final-train/--no-final-train",
                                                     help="Retrain the best config on all data and test it.")] = None,
) -> None:
    """Search LoRA configs on a proxy subset, then retrain the best on the full training split and test it.

    Options given before a subcommand (``lmtune lora --dataset d.csv proxy-check``) configure it too.
    """
    cfg = build_config(
        LoraRunConfig, config,
        model=model, dataset=dataset, task=task, space=space, variant=variant, trials=trials,
        proxy_fraction=proxy_fraction, sampler=sampler, startup_trials=startup_trials, pruner=pruner, seed=seed,
        template=template, encoder=encoder, projection=projection, learnable_token=learnable_token,
        shortlist_k=shortlist_k,
        storage=storage, study_name=study_name, run=run, heartbeat_interval=heartbeat_interval,
        grace_period=grace_period, output_dir=output_dir, max_length=max_length, epochs=epochs,
        target_modules=target_modules.split(",") if target_modules else None, final_train=final_train,
    )
    _quiet_libraries()
    if ctx.invoked_subcommand is not None:
        ctx.obj = cfg
        return
    from lmtune.lora import tune_lora

    results = tune_lora(cfg, console=console)
    if not cfg.run:
        print(f"study {results['study_name']}: {results['finished']} of {results['budget']} trials finished")
        return
    best = results["best"]
    print(f"best config: {best['hyperparams']}")
    print(f"proxy validation {results['metric_name']}: {best['proxy_metric']:.4f}")
    if "final" in results:
        print(f"test {results['metric_name']}: {results['final']['test_metric']:.4f}")
    print(f"results: {cfg.out_dir / 'results.json'}")


@lora_app.command("proxy-check")
def proxy_check_command(
    ctx: typer.Context,
    configs: Annotated[int, typer.Option(help="Random configs to train on the proxy and on all data.")] = 8,
) -> None:
    """Train random configs on the proxy subset and on the full training split; print their Pearson correlation."""
    from lmtune.proxy_check import proxy_check

    result = proxy_check(ctx.obj, configs, console=console)
    pearson = "undefined (fewer than 3 paired results or no spread)" if result["pearson"] is None else (
        f"{result['pearson']:.3f}")
    print(f"proxy ({result['proxy_fraction']:.0%}, {result['proxy_examples']} examples) vs full "
          f"({result['full_examples']} examples) over {result['paired']} configs: Pearson {pearson}")


@app.command("worker")
def worker_command(
    study: Annotated[str, typer.Option("--study", "--study-name", help="Name of the study to join.")],
    storage: Annotated[str | None, typer.Option(help=STORAGE_HELP)] = None,
    objective: Annotated[str | None, typer.Option(
        help="module:function returning an objective for the study's space, run instead of LoRA training "
             "(e.g. lmtune.synthetic:sleepy_quadratic).")] = None,
    heartbeat_interval: Annotated[int, typer.Option(help=HEARTBEAT_HELP)] = 30,
    grace_period: Annotated[int, typer.Option(help=GRACE_HELP)] = 120,
) -> None:
    """Join a study (from `lmtune lora --no-run` or any lmtune lora run) and run trials until its budget is reached.

    Start as many as you like, on as many machines as share the storage.
    """
    from lmtune.worker import run_worker

    _quiet_libraries(transformers=objective is None)
    result = run_worker(study, storage, objective=objective, heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period, console=console)
    print(f"ran {result['ran']} trials here; study {study}: {result['finished']} of {result['budget']} finished")


@app.command("status")
def status_command(
    study: Annotated[str, typer.Option("--study", "--study-name", help="Name of the study.")],
    storage: Annotated[str | None, typer.Option(help=STORAGE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Trials by state, best so far, workers seen recently and compute used by a study."""
    import json

    from lmtune.status import format_status, study_status

    _quiet_libraries(transformers=False)
    result = study_status(study, storage)
    print(json.dumps(result, indent=2, default=str) if as_json else format_status(result))


def _quiet_libraries(transformers: bool = True) -> None:
    """Keep the terminal for lmtune's progress: no per-trial weight-loading bars, load reports or tracebacks."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # lmtune prints its own line per trial, failures included
    if transformers:
        from transformers.utils import logging as hf_logging

        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main() -> None:
    """Entry point: one-line errors with exit code 2 for bad input, 130 for an interrupt."""
    try:
        app()
    except InputError as exc:
        print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print(f"interrupted: {exc}; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
