"""Memory of past studies: observations from other tables or finished studies as a prior for a new study.

A numeric GP starts every study from nothing. A past study on another dataset or model is not the same task,
but LoRA landscapes share their shape (a band of workable step sizes, capacity against overfitting), so what it
found is a useful prior. Each source is described in words (task, data, metric, model family and size); the
words of the new study and of each source are embedded by the frozen language model, and their similarity sets
how much the new study trusts each source before it has results of its own.

What transfers is a prior mean, as in "A Quantile-based Approach for Hyperparameter Transfer Learning"
(Salinas, Shen and Perrone, ICML 2020, arXiv:1909.13595): each source's values are mapped to normal scores of
their ranks (so an accuracy and a loss, maximized or minimized, speak one language), a numeric GP is fitted to
them once, and its predictions over the new study's pool become one column of the new GP's mean,
c + Σ_s w_s m_s(x), with w_s fitted by the marginal likelihood under a Normal prior centred on the
description similarity (``surrogate``). Transferred observations are never trials of the new study: they take
no slot of its budget and leave its pool as it is (a config tried elsewhere may be tried here).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune.errors import InputError
from lmtune.samplers.language_bo.numeric import NumericFeatures
from lmtune.space import SearchSpace

#: A source with more observations is subsampled (seeded by its content) to this many for its one-time GP fit:
#: an exact GP costs n³, and a few hundred rows of a smooth landscape pin its shape down (the synthetic design
#: suite's sources, benchmarks/language_bo_plus_design.py; docs/benchmarks.md).
MAX_SOURCE_ROWS = 800
#: How lmtune's task names read in a description.
TASK_WORDS = {"causal": "causal language modelling", "classification": "sequence classification"}
#: Rows per chunk when predicting over the pool.
CHUNK = 8192


@dataclass(frozen=True)
class TransferSource:
    """Finished observations of another study or table: configs (searched parameters), values, its direction
    and a short description of its task and model."""

    name: str
    description: str
    space: SearchSpace
    direction: str
    configs: tuple[dict[str, Any], ...]
    values: tuple[float, ...]
    fixed: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A short hash of the source's results: its space by the configs it holds, not by how a sampler sees them
        (``SearchSpace.values_dict``), so a source reads the same before and after ordered parameters."""
        blob = json.dumps([self.name, self.direction, self.space.values_dict(), list(self.configs), list(self.values)],
                          sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- describing a study in words --------------------------------------------------------------------------


def model_summary(model: str | None) -> str:
    """``arith-lm (llama, 0.9M parameters)``: the model's name, its family and size when its files are here."""
    from lmtune.llm import resolve_model

    name = str(model or "minilm")
    folder = Path(resolve_model(model))
    family = size = None
    if (folder / "config.json").is_file():
        family = json.loads((folder / "config.json").read_text()).get("model_type")
        count = 0
        for weights in folder.glob("*.safetensors"):
            with weights.open("rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            count += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        size = f"{count / 1e6:.1f}M parameters" if count else None
    details = ", ".join(x for x in (family, size) if x)
    return f"{name} ({details})" if details else name


def describe_task(*, model: str | None, dataset: str | None, task: str | None, metric: str | None,
                  direction: str, fixed: dict[str, Any] | None = None) -> str:
    """One sentence naming what a study tunes: model, data, task, metric and its direction, fixed settings."""
    task = TASK_WORDS.get(task, task)
    text = (f"LoRA fine-tuning of {model_summary(model)} for {task or 'a task'} on {dataset or 'a dataset'}; "
            f"metric {metric or 'objective'}, {'higher' if direction == 'maximize' else 'lower'} is better")
    if fixed:
        text += "; fixed " + ", ".join(f"{k}={v}" for k, v in sorted(fixed.items()))
    return text + "."


def describe_recipe(recipe: dict[str, Any], metric: str | None, direction: str, fixed: dict[str, Any]) -> str:
    """The description of a benchmark table from its recipe (``lmtune.bench.specs.TableSpec``)."""
    task = recipe.get("task") or ("classification" if metric == "accuracy" else None)
    return describe_task(model=recipe.get("model"), dataset=recipe.get("dataset"), task=task, metric=metric,
                         direction=direction, fixed=fixed)


# -- loading sources --------------------------------------------------------------------------------------


def source_from_rows(name: str, space: SearchSpace, direction: str, rows: Sequence[tuple[dict[str, Any], Any]],
                     description: str) -> TransferSource:
    """A source from (config, value) pairs; failed (None) and non-finite values are left out."""
    searched = [p.name for p in space.params]
    kept = [({k: config[k] for k in searched}, float(value)) for config, value in rows
            if value is not None and math.isfinite(float(value))]
    if not kept:
        raise InputError("memory", f"{name} has no finished observation to transfer")
    configs, values = zip(*kept, strict=True)
    return TransferSource(name, description, space, direction, tuple(configs), tuple(values), dict(space.fixed))


def read_table_file(path: Path) -> TransferSource:
    """A benchmark table file (``lmtune bench build-table``: gzipped JSON, format 1; plain JSON is read too) as a
    source."""
    try:
        blob = path.read_bytes()
        data = json.loads(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
        recipe, rows = data["recipe"], data["rows"]
        space = SearchSpace.from_stored(recipe["grid"], source=f"table {path}")
    except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise InputError("memory", f"{path} is not an lmtune table file: {exc}") from None
    description = describe_recipe(recipe, data.get("metric_name"), data["direction"], space.fixed)
    return source_from_rows(str(data.get("name", path)), space, data["direction"],
                            [(r["params"], r["metric"]) for r in rows], description)


def read_study(storage, study_name: str) -> TransferSource:
    """A finished (or running) lmtune study in ``storage`` as a source: its COMPLETE trials."""
    import optuna

    studies = {s.study_name: s for s in storage.get_all_studies()}
    if study_name not in studies:
        names = ", ".join(sorted(studies)[:10]) or "none"
        raise InputError("memory", f"{study_name!r} is neither a table file nor a study in the storage; "
                                   f"studies there: {names}")
    summary = studies[study_name]
    if len(summary.directions) != 1:
        raise InputError("memory", f"study {study_name!r} has several objectives; transfer needs one")
    if "space" not in summary.user_attrs:
        raise InputError("memory", f"study {study_name!r} has no stored search space (not an lmtune study)")
    space = SearchSpace.from_stored(summary.user_attrs["space"], source=f"study {study_name}")
    direction = summary.direction.name.lower()
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    metric = next((t.user_attrs.get("metric_name") for t in trials if t.user_attrs.get("metric_name")), None)
    attrs = summary.user_attrs
    description = describe_task(model=attrs.get("model"), dataset=attrs.get("dataset"), task=attrs.get("task"),
                                metric=metric, direction=direction, fixed=space.fixed)
    return source_from_rows(study_name, space, direction, [(t.params, t.value) for t in trials], description)


def load_source(spec: str | Path, storage=None) -> TransferSource:
    """``spec`` is a table file, else the name of a study in ``storage`` (an Optuna storage object)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return read_table_file(path)
    if storage is None:
        raise InputError("memory", f"{spec!r} is not a file, and no storage was given to find a study in")
    return read_study(storage, str(spec))


def space_differences(theirs: SearchSpace, ours: SearchSpace) -> list[str]:
    """How a remembered space differs from this one (empty: compatible): memory needs the same searched parameters,
    each a number in both or a name in both. The one rule ``lmtune lora``'s memory and ``lmtune bench samplers``'
    memory of other tables both follow."""
    their_kinds, our_kinds = NumericFeatures(theirs).kinds(), NumericFeatures(ours).kinds()
    only_there = sorted(set(their_kinds) - set(our_kinds))
    only_here = sorted(set(our_kinds) - set(their_kinds))
    kinds = sorted(n for n in set(their_kinds) & set(our_kinds) if their_kinds[n] != our_kinds[n])
    problems = []
    if only_there:
        problems.append(f"only in the source: {', '.join(only_there)}")
    if only_here:
        problems.append(f"only in this study: {', '.join(only_here)}")
    if kinds:
        problems.append("numbers in one, names in the other: " + ", ".join(kinds))
    return problems


def check_compatible(source: TransferSource, space: SearchSpace) -> None:
    """A source must search a compatible space (``space_differences``); else an ``InputError`` that names every
    parameter that differs."""
    problems = space_differences(source.space, space)
    if problems:
        raise InputError("memory", f"{source.name} searches another space than this study ("
                                   + "; ".join(problems) + "); transfer needs the same searched parameters")


# -- what a source predicts ---------------------------------------------------------------------------------


def normal_scores(values: Sequence[float], direction: str) -> torch.Tensor:
    """Values as normal scores of their ranks, best highest: Φ⁻¹((rank - 0.5) / n), ties sharing their mean rank."""
    import scipy.stats

    x = np.asarray(values, dtype=float) * (1.0 if direction == "maximize" else -1.0)
    ranks = scipy.stats.rankdata(x)
    return torch.from_numpy(scipy.stats.norm.ppf((ranks - 0.5) / len(x)))


_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def source_prediction(source: TransferSource, features: NumericFeatures,
                      pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``source`` predicts for every pool config (its GP's posterior mean, standardized over the pool), and
    its GP's numeric lengthscales. Fitted once per source and pool in a process (replays reuse it).

    The rows kept from a large source and the fit's seed follow from the source's content alone, so the prior is
    the same in every study and process: seeded by the study, the first study of a process set it for every
    later replay there, and the same replay gave other values after other replays."""
    from lmtune.samplers.language_bo.gp import fit_lbfgs, make_gp

    key = hashlib.sha256(source.fingerprint().encode() + pool.numpy().tobytes()).hexdigest()
    if key in _CACHE:
        return _CACHE[key]
    seed = int(source.fingerprint()[:8], 16)
    x = features.encode(source.configs)
    y = normal_scores(source.values, source.direction)
    if len(y) > MAX_SOURCE_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), MAX_SOURCE_ROWS, replace=False))
        x, y = x[keep], y[keep]
    y = (y - y.mean()) / (y.std() if len(y) > 1 and y.std() > 0 else 1.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        gp = make_gp(x, y, numeric_dims=list(range(x.shape[1])))
        fit_lbfgs(gp, x, y)
    gp.eval()
    with torch.no_grad():
        mean = torch.cat([gp.posterior(pool[i:i + CHUNK]).mean.squeeze(-1) for i in range(0, len(pool), CHUNK)])
    mean = (mean - mean.mean()) / (mean.std() if mean.std() > 0 else 1.0)
    lengthscale = gp.covar_module.base_kernel.lengthscale.detach().squeeze(0)
    _CACHE[key] = (mean, lengthscale)
    return mean, lengthscale


def main_effects(prediction: torch.Tensor, space: SearchSpace) -> torch.Tensor:
    """A source's prediction over the pool split into one column per searched parameter: each value's mean
    prediction over every config with that value, centred (the partial dependence of "Greedy Function
    Approximation: A Gradient Boosting Machine", Friedman 2001, over the whole grid). Their sum is the additive
    part of the prediction, so a study can keep a source's view of the learning rate and drop its view of the
    dropout. ``prediction`` is in pool order (the last parameter varies fastest)."""
    shape = [len(p.values()) for p in space.params]
    grid = prediction.reshape(shape)
    columns = []
    for axis in range(len(shape)):
        others = tuple(a for a in range(len(shape)) if a != axis)
        effect = grid.mean(dim=others) - grid.mean() if others else grid - grid.mean()
        view = [1] * len(shape)
        view[axis] = shape[axis]
        columns.append(effect.reshape(view).expand(shape).reshape(-1))
    return torch.stack(columns, dim=1)


def description_similarity(encoder, target: str, sources: Sequence[str]) -> torch.Tensor:
    """Cosine similarity of the target's description with each source's, under the frozen encoder's pooling,
    clipped to [0, 1]: how much a source is trusted before the new study has results of its own."""
    from lmtune.samplers.language_bo.embeddings import TextPool

    pooled = TextPool(encoder, [target, *sources], share_prefix=False).embed(range(len(sources) + 1)).double()
    pooled = torch.nn.functional.normalize(pooled, dim=1)
    return (pooled[1:] @ pooled[0]).clamp(0.0, 1.0)
