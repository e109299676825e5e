"""``lmtune hag label|train|evaluate``: per-input decoding hyperparameters (HAG)."""

from __future__ import annotations

from typing import Any

import typer

from lmtune.cli.app import app, console
from lmtune.cli.options import config_options
from lmtune.config import build_config
from lmtune.hag.config import HagEvaluateConfig, HagLabelConfig, HagTrainConfig
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


@hag_app.command("train")
@config_options(HagTrainConfig)
def train_command(values: dict[str, Any] | None = None) -> None:
    """Learn to choose decoding per input: a LoRA adapter that emits it (HAG), or a head on the last hidden state."""
    from lmtune.hag.learners import train_hag

    if "instruction" in values:
        values["instruction"] = values["instruction"].encode().decode("unicode_escape")
    cfg = build_config(HagTrainConfig, **values)
    quiet_libraries()
    result = train_hag(cfg)
    print(f"{result.learner} trained on {result.train_labels} labels in {result.seconds:.1f} s; agreement with "
          f"them {result.train_agreement:.3f}"
          + (f", with the validation labels {result.validation['agreement']:.3f}" if result.validation else ""))
    print(f"HAG model: {result.output} (serve it: lmtune serve --model {result.output})")


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
