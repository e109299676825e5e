"""What a fine-tuning trial's scores say: its last validation metrics, and whether it learned anything at all.

A classifier that predicts its largest class for everything scores that class's share, which can look like a
result. A study stores what one constant answer scores (``constant_score``, the ``constant_score`` study
attribute); a trial no better than it learned nothing, whatever the trials are ranked by. ``lmtune infer``
stores its own floor (nothing solved) under the same attribute, so reports and progress lines flag both.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.finetune.data import DatasetSplits, reply_of


def constant_score(splits: DatasetSplits, metric: str) -> dict[str, Any] | None:
    """What one constant answer scores on the validation split, where trials are scored: the majority-class rate
    (accuracy) or the share of the most common response or last assistant turn (exact match). None for loss
    metrics. A trial whose ``metric`` is at or below it learned nothing (``learned_nothing``), also when trials are
    ranked by their validation loss."""
    rows = splits.validation
    if not rows or metric not in ("accuracy", "exact_match"):
        return None
    answers = (str(row["label"]) if metric == "accuracy" else reply_of(row) for row in rows)
    answer, count = Counter(answers).most_common(1)[0]
    if metric == "accuracy" and splits.label_names:
        answer = splits.label_names[int(answer)]
    rate = count / len(rows)
    what = f"the majority-class rate, {rate:.4f}" if metric == "accuracy" else f"{rate:.4f}"
    return {"value": rate, "label": "learned nothing", "metric": metric,
            "what": f"no better than answering {answer!r} for every example ({what})"}


def last_metrics(trial: FrozenTrial) -> dict[str, float]:
    """Every validation metric of the trial's last evaluation (e.g. accuracy and eval_loss): a LoRA proxy ranks
    by one of them, the others are reported beside it."""
    trajectory = trial.user_attrs.get(attrs.TRAJECTORY) or [{}]
    return {k: v for k, v in trajectory[-1].items() if k not in ("step", "epoch", "train_loss")}


def learned_nothing(constant: dict | None, trial: FrozenTrial, maximize: bool = True) -> str | None:
    """Why a COMPLETE trial learned nothing, or None: its score is no better than one constant answer.

    ``constant`` is the study's ``constant_score`` attribute (``{"value", "what", "label"}``: the majority-class
    rate of the validation split for a classifier, 0 for an inference task). A classifier at the share of its
    largest class predicts that class for everything; a decoding config at 0 solves nothing.
    With a ``metric`` (accuracy) the trial's last evaluation of that metric is compared, not its value: a
    LoRA study ranked by validation loss still flags trials whose accuracy sits at the majority class.
    Scores within 1e-9 of the constant count as equal (floating point).
    """
    if not constant or constant.get("value") is None or trial.state != TrialState.COMPLETE or trial.value is None:
        return None
    floor, score = float(constant["value"]), trial.value
    if constant.get("metric"):  # a metric of the trajectory (accuracy), whatever the trials are ranked by
        last = last_metrics(trial)
        if last.get(constant["metric"]) is not None:
            score, maximize = last[constant["metric"]], True
    if (score > floor + 1e-9) if maximize else (score < floor - 1e-9):
        return None
    what = constant.get("what") or f"no better than a constant answer ({floor:.4f})"
    return f"{constant.get('label', 'learned nothing')}: {what}"


def constant_of(study: optuna.Study) -> tuple[dict | None, bool]:
    """The study's ``constant_score`` attribute and whether it maximizes, for ``learned_nothing``."""
    return study.user_attrs.get(attrs.CONSTANT_SCORE), study.direction == optuna.study.StudyDirection.MAXIMIZE
