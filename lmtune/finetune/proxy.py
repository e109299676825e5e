"""How long a search trial trains: a proxy sized by optimizer steps, and what it costs next to a full run.

"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" trains each trial on a
random 10% of the training data (its Table 7: Pearson 0.87-0.94 with the full run). Its training sets held
100,000 examples, so one epoch of 10% was hundreds of optimizer steps. On a few thousand examples one epoch
of 10% is a handful of steps at any batch size: most configs have not left chance when it ends, and the
ranking measures how fast a config starts to learn, not where it ends (docs/benchmarks.md). What a proxy
needs is enough optimizer steps, so lmtune sizes it in steps: every trial takes the same number of steps
whatever its batch size, and draws its batches from a subset large enough that no trial sees an example
twice. The data fraction then only sets the pool the steps draw from; the steps set the cost.

The default number of steps (``default_proxy_steps``) follows from the data size and the space's batch
sizes; docs/decisions.md says how its constants were chosen and on which data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lmtune.errors import InputError
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.space import Categorical, Float, SearchSpace

#: The proxy of lmtune before steps: one epoch of this share of the training split.
EPOCH_PROXY_FRACTION = 0.1
#: Default steps give a trial this share of a full run's training examples, averaged over the batch sizes ...
COST_SHARE = 0.25
#: ... but at least this many steps (fewer leave slowly learning configs where they started) ...
MIN_PROXY_STEPS = 32
#: ... and at most this many: on large data a proxy needs enough steps, not a share (the language-BO paper's
#: Table 7: 5-10% of 100,000 examples, 300-600 steps at batch 16, track the full run; 1% does less well).
MAX_PROXY_STEPS = 512


def batch_sizes(space: SearchSpace) -> tuple[int, ...]:
    """Every batch size a config of the space can have (an unbounded range: its two ends)."""
    if "batch_size" in space.fixed:
        return (int(space.fixed["batch_size"]),)
    if "batch_size" not in {p.name for p in space.params}:
        return (LoraHyperparams.batch_size,)
    param = space.param("batch_size")
    if isinstance(param, Float) and param.step is None:
        return (int(param.low), int(param.high))
    values = param.values() if isinstance(param, Categorical) or hasattr(param, "values") else ()
    return tuple(sorted({int(v) for v in values}))


def full_run_steps(rows: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of ``epochs`` passes over ``rows`` examples at ``batch_size``."""
    return max(1, math.ceil(math.ceil(rows / batch_size) * epochs))


def default_proxy_steps(rows: int, space: SearchSpace, *, epochs: float = 1.0) -> int:
    """Steps every trial takes by default on ``rows`` training examples with the space's batch sizes.

    ``COST_SHARE`` of a full run on average over the batch sizes, within ``MIN_PROXY_STEPS`` and
    ``MAX_PROXY_STEPS``, and never more than the longest full run (the one at the smallest batch).
    """
    sizes = batch_sizes(space)
    steps = round(COST_SHARE * rows * epochs / (sum(sizes) / len(sizes)))
    steps = min(MAX_PROXY_STEPS, max(MIN_PROXY_STEPS, steps))
    return max(1, min(steps, full_run_steps(rows, min(sizes), epochs)))


@dataclass(frozen=True)
class ProxyPlan:
    """What each trial trains on and for how long, and its cost next to a full run of the same config.

    ``steps`` is None for an epoch-sized proxy (``epochs`` passes over the subset, the recipe of lmtune's
    benchmark tables). ``fraction`` of the ``train_rows`` training examples form the subset (``rows`` of them).
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

    def steps_at(self, batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(self.min_steps, full_run_steps(self.rows, batch_size, self.epochs))

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
                "train_rows": self.train_rows, "epochs": self.epochs, "metric": self.metric, "rule": self.rule,
                "steps_by_batch": {b: self.steps_at(b) for b in self.batch_sizes},
                "cost_share_by_batch": shares, "mean_cost_share": round(sum(shares.values()) / len(shares), 4),
                "notes": list(self.notes)}


def plan_proxy(train_rows: int, space: SearchSpace, *, epochs: float = 1.0, steps: int | None = None,
               fraction: float | None = None, metric: str | None = None, min_steps: int = 1) -> ProxyPlan:
    """The proxy of a search on ``train_rows`` training examples over ``space``.

    ``steps``: None for the default (``default_proxy_steps``), 0 for an epoch-sized proxy (``epochs`` passes
    over ``fraction``, default 10%), N for N optimizer steps. ``fraction``: None for the default (step-sized:
    as many rows as the longest-batch trial uses, so no trial sees an example twice).
    """
    if train_rows < 1:
        raise InputError("dataset", "no training rows")
    if steps is not None and steps < 0:
        raise InputError("proxy_steps", f"must be >= 0, got {steps}")
    if fraction is not None and not 0 < fraction <= 1:
        raise InputError("proxy_fraction", f"must be in (0, 1], got {fraction}")
    sizes = batch_sizes(space)
    if steps == 0:
        fraction = EPOCH_PROXY_FRACTION if fraction is None else fraction
        rows = max(1, round(fraction * train_rows))
        return ProxyPlan(None, fraction, rows, train_rows, epochs, sizes, f"{epochs:g} epoch(s) of {fraction:.0%}",
                         metric, min_steps)
    rule = f"{steps} steps (--proxy-steps)"
    if steps is None:
        steps = default_proxy_steps(train_rows, space, epochs=epochs)
        rule = (f"{steps} steps (default: {COST_SHARE:.0%} of a full run at the mean batch size, within "
                f"{MIN_PROXY_STEPS}-{MAX_PROXY_STEPS} steps)")
    notes = []
    if fraction is None:
        fraction = min(1.0, steps * max(sizes) / train_rows)
    rows = max(1, round(fraction * train_rows))
    if steps * max(sizes) > rows:
        notes.append(f"at batch {max(sizes)} a trial passes {steps * max(sizes) / rows:.1f} times over its "
                     f"{rows} rows")
    plan = ProxyPlan(steps, fraction, rows, train_rows, epochs, sizes, rule, metric, min_steps, notes)
    over = [b for b in sizes if plan.cost_share(b) > 1]
    if over:
        plan.notes.append(f"at batch {', '.join(map(str, over))} a trial trains longer than a full run "
                          f"({max(plan.cost_share(b) for b in over):.1f}x)")
    return plan
