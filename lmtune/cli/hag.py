"""``lmtune hag label|global|train|evaluate``: per-input decoding hyperparameters (HAG)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from lmtune.cli.app import app, console
from lmtune.cli.options import config_options
from lmtune.config import build_config
from lmtune.hag.config import HagEvaluateConfig, HagGlobalConfig, HagLabelConfig, HagTrainConfig
from lmtune.runtime.quiet import quiet_libraries

hag_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Per-input decoding: label each input's best decoding, learn to choose it, evaluate.")
app.add_typer(hag_app, name="hag")


def _describe(study, trial) -> str:
    from lmtune.hag.labels import BUDGET

    budget = trial.user_attrs.get(BUDGET, {})
    if trial.value is None:
        return f"chunk {trial.params.get('chunk')}: {trial.state.name} ({trial.user_attrs.get('fail_reason', '')})"
    return (f"chunk {trial.params['chunk']}: mean label score {trial.value:.4f}; {budget.get('requests', 0)} "
            f"requests ({budget.get('cached_requests', 0)} cached) in {budget.get('seconds', 0):.1f} s")


@hag_app.command("label")
@config_options(HagLabelConfig)
def label_command(values: dict[str, Any] | None = None) -> None:
    """Search every input's best decoding (coarse sweep, pruning, coordinate refinement): the training labels."""
    from lmtune.cli.progress import TrialProgress
    from lmtune.hag.labels import label_task

    cfg = build_config(HagLabelConfig, **values)
    quiet_libraries()
    with TrialProgress(console, describe=_describe) as progress:
        result = label_task(cfg, listener=progress)
    b = result.budget
    print(f"labelled {result.labelled} of {result.inputs} {result.split} inputs ({result.failed_chunks} chunks "
          f"failed); mean label score {result.mean_label_score}")
    print(f"generation budget: {b.get('requests', 0):.0f} requests, {b.get('responses', 0):.0f} responses, "
          f"{b.get('prompt_tokens', 0):.0f} prompt + {b.get('completion_tokens', 0):.0f} completion tokens, "
          f"{b.get('seconds', 0):.0f} s ({b.get('cached_requests', 0):.0f} requests from the cache)")
    print(f"labels: {result.labels_file}")


@hag_app.command("global")
@config_options(HagGlobalConfig)
def global_command(values: dict[str, Any] | None = None) -> None:
    """One decoding for every input: lmtune infer's search on the labelled inputs, with the labels' metric and n."""
    from lmtune.cli.infer import describe_trial
    from lmtune.cli.progress import TrialProgress
    from lmtune.hag.global_config import find_global_config
    from lmtune.hag.space import Decoding
    from lmtune.inference.config import InferConfig
    from lmtune.inference.tuner import tune_inference

    cfg = build_config(HagGlobalConfig, **values)
    quiet_libraries()
    with TrialProgress(console, describe=describe_trial) as progress:
        result = find_global_config(cfg, tune=lambda fields: tune_inference(InferConfig(**fields), listener=progress))
    print(f"searched {sum(result.trials.values())} configs; spent {result.spent_tokens:.0f} of {result.budget_tokens} "
          "tokens")
    if result.config is None:
        print(f"error: budget_tokens: no config fitted the budget; see {result.results}", file=sys.stderr)
        raise SystemExit(1)
    print(f"global config: {Decoding.from_dict(result.config).text()}; {result.metric} {result.tuning_score:.4f} on "
          "the inputs it tuned on" + (f", {result.test_score:.4f} on those held out" if result.test_score else ""))
    print(f"results: {result.results} (give it to lmtune hag train and evaluate as --global-config)")


@hag_app.command("train")
@config_options(HagTrainConfig)
def train_command(values: dict[str, Any] | None = None) -> None:
    """Learn to choose decoding per input: a LoRA adapter that emits it (HAG), or a predictor of each candidate
    config's margin over the global config, with a guard."""
    from lmtune.hag.learners import train_hag

    if "instruction" in values:
        values["instruction"] = values["instruction"].encode().decode("unicode_escape")
    cfg = build_config(HagTrainConfig, **values)
    quiet_libraries()
    result = train_hag(cfg)
    print(f"{result.learner} trained on {result.train_labels} labels in {result.seconds:.1f} s"
          + (f"; {result.candidates} candidate configs (those the label search scored on every training input)"
             if result.candidates else ""))
    if result.loss is not None:
        print(f"final loss {result.loss['value']:.4f}: the {result.loss['what']}")
    if result.guard is not None:
        print(guard_text(result.guard))
    validation = (f", of the validation inputs {result.validation['agreement']:.3f}" if result.validation else "")
    print(f"agreement: the share of inputs whose config is exactly their label, of the training inputs "
          f"{result.train_agreement:.3f}{validation} (many configs tie with the label, so a low share is expected)")
    print(f"HAG model: {result.output} (serve it: lmtune serve --model {result.output})")


def guard_text(guard: dict) -> str:
    """The guard's margin and what it gave on the inputs it was calibrated on, as a sentence."""
    inputs = (f"{guard['validation_inputs']} validation inputs and {guard['training_inputs']} training inputs out of "
              "fold")
    unguarded = (f"without it: {guard['unguarded_gain']:+.4f} per input, a config of their own for "
                 f"{guard['unguarded_share']:.0%}")
    if guard["margin"] is None:
        return (f"guard: every input keeps the global config (no margin gained anything on {inputs}; {unguarded})")
    return (f"guard: an input leaves the global config when the predicted gain exceeds {guard['margin']:.4f}; on "
            f"{inputs} that gained {guard['gain']:+.4f} per input over the global config, a config of their own for "
            f"{guard['share']:.0%} ({unguarded})")


@hag_app.command("evaluate")
@config_options(HagEvaluateConfig)
def evaluate_command(values: dict[str, Any] | None = None) -> None:
    """Score HAG, a predictor head, default, global (lmtune infer), random and oracle decoding on held-out inputs."""
    from lmtune.hag.evaluate import evaluate_hag

    cfg = build_config(HagEvaluateConfig, **values)
    quiet_libraries()
    result = evaluate_hag(cfg)
    print(result.table, end="")
    print(f"written: {cfg.output_dir / 'evaluation.json'}, {cfg.output_dir / 'evaluation.md'}")
