"""How long a search trial trains: a proxy sized by each config's own optimizer steps, and its cost.

"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" trains each trial on a
random 10% of the training data (its Table 7: Pearson 0.87-0.94 with the full run). Its training sets held
100,000 examples, so one epoch of 10% was hundreds of optimizer steps. On a few thousand examples one epoch
of 10% is a handful of steps at any batch size: most configs have not left chance when it ends, and the
ranking measures how fast a config starts to learn, not where it ends (docs/benchmarks.md).

lmtune's default proxy (``DEFAULT_SHARE``) trains each config for a share of *its own* full run's optimizer
steps, on batches from the whole training split that no trial sees twice: a batch-4 config takes 8 times the
steps of a batch-32 one, every config processes the same number of examples, and the learning-rate schedule
runs its whole course. Equal steps for every batch size (``StepsProxy``, which stays available) were the
first default; they leave small-batch configs near where they started (docs/decisions.md says how the rule
and its constants were chosen, and on which data). On large data the share is capped so that a trial takes at
most ``MAX_PROXY_STEPS`` steps at the space's mean batch size, the paper's own range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmtune.errors import InputError
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.space import Float, SearchSpace

#: The proxy of lmtune's benchmark tables: one epoch of this share of the training split.
EPOCH_PROXY_FRACTION = 0.1
#: Default: a trial trains on this share of its own full run (the issue's cost cap of 30%) ...
DEFAULT_SHARE = 0.3
#: ... but on at most as many examples as this many steps at the space's mean batch size (the language-BO
#: paper's Table 7: 5-10% of 100,000 examples, 300-600 steps at batch 16, track the full run).
MAX_PROXY_STEPS = 512
#: How a proxy is written as text (a flag's value, a YAML scalar): its kind, then its number, if any.
PROXY_TEXT = "share, share:R, steps:N or epochs"


class ShareProxy(BaseModel):
    """Each config trains this share of its own full run's optimizer steps (None: ``default_share``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["share"] = "share"
    share: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)

    def __str__(self) -> str:
        return "share" if self.share is None else f"share:{self.share:g}"


class StepsProxy(BaseModel):
    """Every config trains this many optimizer steps, whatever its batch size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["steps"] = "steps"
    steps: int = Field(ge=1)

    def __str__(self) -> str:
        return f"steps:{self.steps}"


class EpochsProxy(BaseModel):
    """``epochs`` passes over the proxy subset: the recipe of lmtune's benchmark tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["epochs"] = "epochs"

    def __str__(self) -> str:
        return "epochs"


#: One proxy of three kinds; a config field of this type takes a mapping (``{kind: steps, steps: 40}``) or text.
Proxy = Annotated[ShareProxy | StepsProxy | EpochsProxy, Field(discriminator="kind")]


def parse_proxy(text: str) -> dict[str, str]:
    """The mapping of a proxy written as text (``PROXY_TEXT``); pydantic checks its number."""
    kind, colon, number = text.partition(":")
    kind = kind.strip()
    if kind not in ("share", "steps", "epochs") or (colon and kind == "epochs"):
        raise ValueError(f"must be {PROXY_TEXT}, got {text!r}")
    return {"kind": kind, kind: number.strip()} if colon else {"kind": kind}


def batch_sizes(space: SearchSpace) -> tuple[int, ...]:
    """Every batch size a config of the space can have (an unbounded range: its two ends)."""
    if "batch_size" in space.fixed:
        return (int(space.fixed["batch_size"]),)
    if "batch_size" not in {p.name for p in space.params}:
        return (LoraHyperparams.batch_size,)
    param = space.param("batch_size")
    if isinstance(param, Float) and param.step is None:
        return (int(param.low), int(param.high))
    values = param.values()
    return tuple(sorted({int(v) for v in values}))


def full_run_steps(rows: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of ``epochs`` passes over ``rows`` examples at ``batch_size``."""
    return max(1, math.ceil(math.ceil(rows / batch_size) * epochs))


def default_share(rows: int, space: SearchSpace, *, epochs: float = 1.0) -> float:
    """The share of each config's full run a default trial trains: ``DEFAULT_SHARE``, or less on data so large
    that it would exceed ``MAX_PROXY_STEPS`` steps at the space's mean batch size."""
    sizes = batch_sizes(space)
    cap = MAX_PROXY_STEPS * (sum(sizes) / len(sizes)) / max(1.0, rows * epochs)
    return min(DEFAULT_SHARE, cap)


@dataclass(frozen=True)
class ProxyPlan:
    """What each trial trains on and for how long, and its cost next to a full run of the same config.

    The three kinds of ``Proxy``: ``share`` (each config trains that share of its own full run's steps), ``steps``
    (every config that many steps), or neither (``epochs`` passes over the subset).
    ``fraction`` of the ``train_rows`` training examples form the subset (``rows`` of them).
    """

    steps: int | None
    fraction: float
    rows: int
    train_rows: int
    epochs: float
    batch_sizes: tuple[int, ...]
    rule: str
    metric: str | None = None
    min_steps: int = 1
    notes: list[str] = field(default_factory=list)
    share: float | None = None

    def steps_at(self, batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.share is not None:
            return max(self.min_steps, math.ceil(self.share * full_run_steps(self.train_rows, batch_size, self.epochs)))
        return max(self.min_steps, full_run_steps(self.rows, batch_size, self.epochs))

    @property
    def epoch_sized(self) -> bool:
        """``epochs`` passes over the subset, neither a share of each run nor a fixed number of steps."""
        return self.steps is None and self.share is None

    def trial_steps(self, batch_size: int) -> int | None:
        """``TrainSettings.steps`` of a trial at ``batch_size`` (None: an epoch-sized proxy counts its own)."""
        return None if self.epoch_sized else self.steps_at(batch_size)

    def resource(self, step: int, batch_size: int) -> int:
        """Where a report at ``step`` lies on the pruner's axis: optimizer steps when every trial takes the same
        number, else training examples, so that trials of every batch size meet at the same rungs."""
        return step if self.steps is not None else step * batch_size

    def rungs(self, evaluations: int) -> tuple[int, int]:
        """The pruner's (min_resource, max_resource): the earliest first evaluation and the latest last one."""
        first = min(self.resource(math.ceil(self.steps_at(b) / evaluations), b) for b in self.batch_sizes)
        return max(1, first), max(self.resource(self.steps_at(b), b) for b in self.batch_sizes)

    def cost_share(self, batch_size: int) -> float:
        """Training examples a trial processes over those of a full run, at ``batch_size``."""
        full = full_run_steps(self.train_rows, batch_size, self.epochs)
        return self.steps_at(batch_size) / full

    @property
    def longest(self) -> int:
        """The steps of the longest trial (the resource of a pruner's last rung)."""
        return max(self.steps_at(b) for b in self.batch_sizes)

    def to_dict(self) -> dict[str, Any]:
        shares = {b: round(self.cost_share(b), 4) for b in self.batch_sizes}
        return {"steps": self.steps, "fraction": round(self.fraction, 4), "rows": self.rows,
                "share": self.share, "train_rows": self.train_rows, "epochs": self.epochs, "metric": self.metric,
                "rule": self.rule,
                "steps_by_batch": {b: self.steps_at(b) for b in self.batch_sizes},
                "cost_share_by_batch": shares, "mean_cost_share": round(sum(shares.values()) / len(shares), 4),
                "notes": list(self.notes)}


def plan_proxy(train_rows: int, space: SearchSpace, proxy: ShareProxy | StepsProxy | EpochsProxy = ShareProxy(), *,
               epochs: float = 1.0, fraction: float | None = None, metric: str | None = None,
               min_steps: int = 1) -> ProxyPlan:
    """The proxy of a search on ``train_rows`` training examples over ``space``.

    ``proxy``: a share of each config's full run, a number of steps for every config, or ``epochs`` passes over
    ``fraction`` of the split (default 10%). ``fraction``: None for the default (a share: the whole split; fixed
    steps: as many rows as the trial that processes the most examples uses, so no trial sees an example twice).
    """
    if train_rows < 1:
        raise InputError("dataset", "no training rows")
    sizes = batch_sizes(space)
    if isinstance(proxy, EpochsProxy):
        fraction = EPOCH_PROXY_FRACTION if fraction is None else fraction
        rows = max(1, round(fraction * train_rows))
        return ProxyPlan(None, fraction, rows, train_rows, epochs, sizes, f"{epochs:g} epoch(s) of {fraction:.0%}",
                         metric, min_steps)
    if isinstance(proxy, StepsProxy):
        probe = ProxyPlan(proxy.steps, 1.0, train_rows, train_rows, epochs, sizes, f"{proxy.steps} steps", metric,
                          min_steps)
    else:
        share = default_share(train_rows, space, epochs=epochs) if proxy.share is None else proxy.share
        rule = f"{share:.0%} of each config's full run" + (" (default)" if proxy.share is None else "")
        probe = ProxyPlan(None, 1.0, train_rows, train_rows, epochs, sizes, rule, metric, min_steps, share=share)
    needed = max(probe.steps_at(b) * b for b in sizes)
    notes = []
    if fraction is None:  # a share of a run never passes over the split twice: batches come from all of it
        fraction = 1.0 if probe.share is not None else min(1.0, needed / train_rows)
    rows = max(1, round(fraction * train_rows))
    if needed > rows:
        notes.append(f"at batch {max(sizes, key=lambda b: probe.steps_at(b) * b)} a trial passes "
                     f"{needed / rows:.1f} times over its {rows} rows")
    plan = dataclasses.replace(probe, fraction=fraction, rows=rows, notes=notes)
    over = [b for b in sizes if plan.cost_share(b) > 1]
    if over:
        plan.notes.append(f"at batch {', '.join(map(str, over))} a trial trains longer than a full run "
                          f"({max(plan.cost_share(b) for b in over):.1f}x)")
    return plan
