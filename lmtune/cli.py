"""The ``lmtune`` command: parses flags, builds a config, calls the library. Nothing else."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmtune.config import LoraRunConfig, build_config
from lmtune.errors import InputError
from lmtune.progress import quiet_libraries
from lmtune.study import Interrupted

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Choose LoRA configs, base models and decoding settings with few expensive runs.")
lora_app = typer.Typer(help="Search LoRA fine-tuning hyperparameters (rank, alpha, learning rate, batch, dropout).")
app.add_typer(lora_app, name="lora")
bench_app = typer.Typer(no_args_is_help=True,
                        help="Benchmarks: search methods on replayable result tables, model selection.")
app.add_typer(bench_app, name="bench")

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
    quiet_libraries()
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


@bench_app.command("build-table")
def build_table_command(
    table: Annotated[str, typer.Option(help="Which table to build: bbc-minilm or arith-sft.")] = "bbc-minilm",
    output: Annotated[Path | None, typer.Option(help="Table file (.json.gz); default benchmarks/data/<table>.json.gz. "
                                                "Rows already in it are not trained again.")] = None,
    storage: Annotated[str, typer.Option(help="Optuna storage of the build study; share it between "
                                         "processes or machines to build together.")] = "sqlite:///lmtune-bench.db",
    study_name: Annotated[str | None, typer.Option(help="Build study name (default: the table name).")] = None,
    max_trials: Annotated[int | None, typer.Option(help="Stop after this many configs (default: the whole grid).")
                          ] = None,
    full_runs: Annotated[int, typer.Option(help="Then train this many configs, spread over the quality range, on "
                                           "the whole training split (needs the whole grid).")] = 0,
    threads: Annotated[int, typer.Option(help="Torch CPU threads per process.")] = 1,
) -> None:
    """Train every config of a benchmark table's grid through one resumable Optuna study; write the table file."""
    from lmtune.bench.build import build_full_runs, build_table
    from lmtune.bench.table import Table
    from lmtune.bench.tables import load_table_spec

    quiet_libraries()
    spec = load_table_spec(table)
    output = output or Path("benchmarks/data") / f"{spec.name}.json.gz"
    seed_from = Table.load(output) if output.exists() else None
    result = build_table(spec, storage=storage, study_name=study_name, threads=threads, max_trials=max_trials,
                         seed_from=seed_from, output=output, console=console)
    if full_runs and result.complete:
        result = build_full_runs(result, spec, full_runs, storage=storage, threads=threads, console=console)
    elif full_runs:
        console.print(f"[yellow]Full runs wait for the whole grid ({len(result.rows)} of "
                      f"{result.grid.pool_size} built).[/]")
    result.save(output)
    summary = result.summary()
    print(f"{output}: {summary['configs']} of {summary['grid']} configs, {summary['failed']} failed, "
          f"{summary['metric']} best {summary['best']:.4f} worst {summary['worst']:.4f}")


@bench_app.command("show")
def show_table_command(
    table: Annotated[list[Path], typer.Option(help="Table file(s); repeat for several.")],
) -> None:
    """Summarize tables: configs, failures, best/worst/median metric, proxy-to-full correlation, build hours."""
    from lmtune.bench.compare import table_summary_markdown
    from lmtune.bench.table import Table

    print(table_summary_markdown([Table.load(path) for path in table]))


@bench_app.command("samplers")
def samplers_command(
    table: Annotated[list[Path], typer.Option(help="Table file(s) to replay against; repeat for several.")],
    samplers: Annotated[str, typer.Option(help="Comma-separated methods: random, tpe, gp, botorch, nomad, "
                                          "language-bo, language-bo-no-token, language-bo-plain, "
                                          "language-bo-none.")] = "random,tpe,gp,botorch,nomad,language-bo",
    budget: Annotated[int, typer.Option(help="Trials per search.")] = 30,
    seeds: Annotated[int, typer.Option(help="Searches per method (seeds 0..N-1).")] = 20,
    output: Annotated[Path, typer.Option(help="Folder for runs.jsonl, samplers.md/.json/.png.")
                      ] = Path("benchmarks/results/samplers"),
    threads: Annotated[int, typer.Option(help="Torch CPU threads for the model-based samplers.")] = 1,
    jobs: Annotated[int, typer.Option(help="Replays run in this many processes at once (each with --threads).")
                    ] = 1,
) -> None:
    """Replay search methods against real result tables (lookups, no training) and compare their regret."""
    from lmtune.bench.compare import compare_samplers
    from lmtune.bench.table import Table

    for name, value in (("budget", budget), ("seeds", seeds), ("jobs", jobs), ("threads", threads)):
        if value < 1:
            raise InputError(name, f"must be at least 1, got {value}")
    quiet_libraries()
    tables = [Table.load(path) for path in table]
    methods = [m.strip() for m in samplers.split(",") if m.strip()]
    report = compare_samplers(tables, methods, seeds, budget, output, threads=threads, jobs=jobs,
                              console=console)
    print(report)
    print(f"written: {output / 'samplers.md'}, {output / 'samplers.json'}, {output / 'samplers.png'}")

# --- lmtune select (seed 004) ---------------------------------------------------------------------------------

@app.command("select", context_settings={"allow_extra_args": True})
def select_command(
    ctx: typer.Context,
    curves: Annotated[Path | None, typer.Option(help="Curves CSV (config name, 0, 200, ..., size).")] = None,
    models: Annotated[list[str] | None, typer.Option(help="Candidates to measure: --models A B C.")] = None,
    dataset: Annotated[str | None, typer.Option(help="With --models: bbc-news (default), CSV/JSONL, HF id.")] = None,
    sizes: Annotated[str | None, typer.Option(help="With --models: subset sizes, e.g. 0,50,100,200.")] = None,
    target_size: Annotated[int | None, typer.Option(help="Training size to predict (default: largest in the file; "
                                                         "with --models, the whole training split).")] = None,
    budget_ratio: Annotated[float | None, typer.Option(help="Methods see sizes <= target/ratio (default 8 for "
                                                            "--curves; every measured size for --models).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of points and fitted curves (default: by the CSV).")] = None,
    tokens_per_sample: Annotated[float | None, typer.Option(help="Mean tokens per example, for FLOPs.")] = None,
    out: Annotated[Path, typer.Option(help="With --models: the curves CSV to fill (resumable).")] = Path(
        "lmtune-out/select/curves.csv"),
    mode: Annotated[str, typer.Option(help="With --models: lora or full fine-tuning.")] = "lora",
    learning_rate: Annotated[float | None, typer.Option(help="With --models (default 2e-4 lora, 5e-5 full).")] = None,
    batch_size: Annotated[int, typer.Option(help="With --models: training batch size.")] = 16,
    max_length: Annotated[int, typer.Option(help="With --models: tokens per example.")] = 128,
    epochs: Annotated[float, typer.Option(help="With --models: epochs over each subset.")] = 1.0,
    ntk_examples: Annotated[int, typer.Option(help="With --models: examples for LENSLLM's NTK term (0: skip).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the nested subsets and of training.")] = 0,
) -> None:
    """Choose the model to fine-tune: rank candidates with ZeroShot, SubTuning, ModelSize, AtS, ats-median and
    fitted scaling laws, from a curves file or from curves measured here (--models A B C --dataset --sizes)."""
    from lmtune.selection.cli_select import run_select

    extra = list(ctx.args)
    if extra and not models:
        raise InputError("models", f"unexpected arguments {' '.join(extra)}")
    text = run_select(curves=curves, models=(models or []) + extra, dataset=dataset, sizes=sizes,
                      target_size=target_size, budget_ratio=budget_ratio, plot=plot,
                      tokens_per_sample=tokens_per_sample, out=out, mode=mode, learning_rate=learning_rate,
                      batch_size=batch_size, max_length=max_length, epochs=epochs, ntk_examples=ntk_examples, seed=seed,
                      console=console)
    print(text, end="")


@bench_app.command("select")
def select_bench_command(
    curves: Annotated[Path, typer.Option(help="Curves CSV with the true losses at the target size.")],
    ratios: Annotated[str, typer.Option(help="Budget ratios, comma-separated.")] = "8,16,32,64,128,256,512",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object instead of Markdown.")] = False,
    tokens_per_sample: Annotated[float | None, typer.Option(help="Mean tokens per example, for FLOPs.")] = None,
) -> None:
    """The seed-004 table: PearCorr, RelAcc and compute of every selection method at every budget ratio."""
    from lmtune.selection.bench import bench_select
    from lmtune.selection.cli_select import parse_ints

    print(bench_select(curves, parse_ints(ratios, "ratios"), json_output, tokens_per_sample=tokens_per_sample))


@app.command("infer")
def infer_command(
    inference_budget: Annotated[float, typer.Option(help="Mean $ per instance the chosen config may cost.")],
    optimization_budget: Annotated[float, typer.Option(help="Total $ the search may spend (never exceeded).")],
    task: Annotated[str, typer.Option(help="arith-add3, humaneval, or a JSONL file of {..., answer} lines.")
                    ] = "arith-add3",
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
                        ] = None,
    local_model: Annotated[str | None, typer.Option(help="Local HF causal LM folder, or arith-lm.")] = None,
    models: Annotated[str | None, typer.Option(help="With --endpoint: comma-separated model names to search.")
                      ] = None,
    metric: Annotated[str, typer.Option(help="success, expected_success, vote, pass@K, or module:function.")
                      ] = "success",
    template: Annotated[list[str] | None, typer.Option(help="Prompt template (str.format fields of the task); "
                                                            "repeat to search several.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop choice: strings joined by '|', escapes like \\n "
                                                        "allowed, 'none' for none; repeat to search several.")] = None,
    sampling: Annotated[str, typer.Option(help="Search temperature or top_p.")] = "temperature",
    temperature: Annotated[str, typer.Option(help="Range LOW,HIGH.")] = "0,2",
    top_p: Annotated[str, typer.Option(help="Range LOW,HIGH.")] = "0,1",
    max_tokens: Annotated[str | None, typer.Option(help="Range LOW,HIGH (log scale; default: the task's).")] = None,
    n: Annotated[str, typer.Option(help="Responses per request, range LOW,HIGH (log scale).")] = "1,16",
    prices: Annotated[Path | None, typer.Option(help="YAML of extra prices: model: {input: $/1K, output: $/1K}.")
                      ] = None,
    task_size: Annotated[int, typer.Option(help="arith-add3: problems generated.")] = 300,
    test_fraction: Annotated[float, typer.Option(help="Held-out test share of the task's instances.")] = 0.4,
    max_trials: Annotated[int, typer.Option(help="Stop after this many configs even if budget is left.")] = 200,
    pruning: Annotated[bool, typer.Option("--pruning/--no-pruning", help="Cost-based pruning (EcoOptiGen).")
                       ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the split, subsamples, sampler and sampling.")] = 0,
    storage: Annotated[str | None, typer.Option(help=STORAGE_HELP)] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name (default infer-<task>); an existing study "
                                                        "resumes.")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where results.json and the response cache go.")] = Path(
        "lmtune-out/infer"),
    cache: Annotated[str | None, typer.Option(help="Response cache file (default OUTPUT_DIR/responses.sqlite); "
                                                   "'none' disables it.")] = None,
    concurrency: Annotated[int, typer.Option(help="Parallel requests to the endpoint.")] = 8,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the endpoint's API key.")
                           ] = "OPENAI_API_KEY",
) -> None:
    """Tune model, temperature/top_p, max_tokens, n, prompt and stop under a per-instance and a total budget."""
    from lmtune.inference.tuner import InferSettings, parse_range, parse_stop, tune_inference

    quiet_libraries()
    settings = InferSettings(
        task=task, endpoint=endpoint, local_model=local_model, models=[m for m in (models or "").split(",") if m],
        inference_budget=inference_budget, optimization_budget=optimization_budget, metric=metric,
        templates=[t.encode().decode("unicode_escape") for t in template or []],
        stops=[parse_stop(x) for x in stop or []], sampling=sampling,
        temperature=parse_range(temperature, "temperature", float), top_p=parse_range(top_p, "top_p", float),
        max_tokens=parse_range(max_tokens, "max_tokens", int) if max_tokens else None, n=parse_range(n, "n", int),
        prices=str(prices) if prices else None, task_size=task_size, test_fraction=test_fraction,
        max_trials=max_trials, pruning=pruning, seed=seed, storage=storage, study_name=study_name,
        output_dir=output_dir, cache=cache, concurrency=concurrency, api_key_env=api_key_env)
    results = tune_inference(settings, console=console)
    spend = results["spend"]
    print(f"spent {spend['real']:.6g} of {optimization_budget:.6g} (cached {spend['cached']:.6g}); "
          f"{results['configs_scored']} configs scored, {results['configs_over_budget_measured']} over budget, "
          f"{results['configs_pruned_by_knowledge']} pruned by knowledge")
    best = results["best"]
    if best is None:
        print("no config met the per-instance budget")
    else:
        print(f"best config: {best['config']}")
        print(f"tuning {metric}: {best['tuning']['quality']:.4f} at {best['tuning']['cost_per_instance']:.6g} "
              f"per instance; test {metric}: {best['test']['quality']:.4f} at "
              f"{best['test']['cost_per_instance']:.6g} per instance")
        print(f"pareto front: {len(results['pareto_front'])} configs")
    print(f"results: {output_dir / 'results.json'}")


@app.command("serve")
def serve_command(
    model: Annotated[str, typer.Option(help="Local HF causal LM folder, or arith-lm.")] = "arith-lm",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
) -> None:
    """Serve a local causal LM on an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models)."""
    from lmtune.llm.server import serve

    quiet_libraries()
    serve(model, host=host, port=port, device=device)


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

    quiet_libraries(transformers=objective is None)
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

    quiet_libraries(transformers=False)
    result = study_status(study, storage)
    print(json.dumps(result, indent=2, default=str) if as_json else format_status(result))


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
