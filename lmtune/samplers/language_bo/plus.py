"""``language-bo+``: language-aided BO that uses what only language gives, and the numbers it should never lose.

Three ideas on top of the paper's sampler (``sampler.LanguageBOSampler``), each switchable so the benchmark can
measure it alone (``lmtune.samplers.registry.LANGUAGE_BO_PLUS``):

1. ``numeric``: the GP's kernel is a sum of a Matérn kernel over the log-scaled numbers and the text deep
   kernel, weighted by the marginal likelihood (``surrogate``), so it is never worse than its numeric part.
2. ``transfer``: observations of other studies or tables, described in words, give the GP a prior mean
   (``transfer``); they never become trials of this study, so they take no slot of its budget and no config
   out of its pool.
3. ``start="space-filling"``: the first trials are a scrambled Sobol design over the numbers instead of random
   draws (``numeric.space_filling``). With a transfer source the first trial is the config the sources rate
   best, then ``transfer_design`` design points guard against a misleading source, then the GP whose prior mean
   the sources set takes over.

Everything else (the pool, the claims between workers, failures imputed as the worst value, running configs as
constant liars) is the paper sampler's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmtune.errors import InputError
from lmtune.samplers.language_bo.numeric import NumericFeatures, space_filling
from lmtune.samplers.language_bo.sampler import LanguageBOSampler
from lmtune.samplers.language_bo.surrogate import Surrogate
from lmtune.samplers.language_bo.text import TextFeatures
from lmtune.samplers.language_bo.transfer import (
    TransferSource,
    check_compatible,
    description_similarity,
    main_effects,
    source_prediction,
)
from lmtune.space import SearchSpace

STARTS = ("random", "space-filling")
#: Off, the whole memory judged at once, or each parameter's part of it judged too.
MEMORY_GATES = (False, True, "parameter")


class LanguageBOPlusSampler(LanguageBOSampler):
    """Language-BO with a numeric kernel, memory of past studies and a space-filling start.

    Args (besides ``LanguageBOSampler``'s):
        numeric: add the Matérn kernel over the log-scaled numbers to the text kernel.
        text: keep the text deep kernel (False: the numbers alone, for comparison).
        start: ``"space-filling"`` or ``"random"`` first trials (when no transfer source is given).
        transfer: finished observations of other studies or tables (``transfer.TransferSource``); they must
            search the same parameters.
        description: this study in words (task, data, metric, model), compared with each source's description.
        weight_sd: standard deviation of the Normal prior on each source's weight in the GP's mean.
        lbfgs: refit the GP's hyperparameters by L-BFGS-B after the joint AdamW steps.
        transfer_design: with a transfer source, space-filling trials after the sources' best config and before
            the model takes over: they guard against a misleading source (the default was chosen on the
            synthetic design suite, docs/benchmarks.md).
        memory_gate: keep the transferred prior mean only while it predicts this study's left-out results better
            than a GP without it (``surrogate.Surrogate``); ``"parameter"`` also judges each searched parameter's
            part of it (each source's prediction split into per-parameter main effects, ``transfer.main_effects``),
            so a source can be kept for the learning rate and dropped for the dropout.
    """

    def __init__(self, space: SearchSpace, *, numeric: bool = True, text: bool = True,
                 start: str = "space-filling", transfer: Sequence[TransferSource] = (),
                 description: str | None = None, weight_sd: float = 0.5, lbfgs: bool = True,
                 text_ard: bool = True, transfer_design: int = 2, memory_gate: bool | str = True,
                 **language_bo: Any):
        super().__init__(space, **language_bo)
        if start not in STARTS:
            raise InputError("start", f"{start!r} is not allowed; allowed: {', '.join(STARTS)}")
        if not (numeric or text):
            raise InputError("text", "language-bo+ needs the numeric kernel, the text kernel or both; both are off")
        if memory_gate not in MEMORY_GATES:
            raise InputError("memory_gate", f"{memory_gate!r} is not allowed; allowed: True, False, 'parameter'")
        for source in transfer:
            check_compatible(source, space)
        self._numeric, self._text, self._start = numeric, text, start
        self.transfer = tuple(transfer)
        self.description = description or "LoRA fine-tuning."
        self._weight_sd, self._text_ard, self._memory_gate = weight_sd, text_ard, memory_gate
        self._fit = "adamw+lbfgs" if lbfgs else "adamw"
        self.transfer_design = transfer_design
        self._features = NumericFeatures(space)
        self._pool_x: torch.Tensor | None = None
        self._text_features: TextFeatures | None = None
        #: Each source's prediction over the pool (a column each) and its description similarity (the prior mean
        #: of its weight), once prepared.
        self._prior: torch.Tensor | None = None
        self.similarity: torch.Tensor | None = None
        #: With the per-parameter gate: the prior's columns of each searched parameter.
        self._prior_groups: list[list[int]] | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def prepare(self) -> LanguageBOPlusSampler:
        """Embed the pool (when the text kernel is on), encode its numbers, and fit each source once."""
        if self._surrogate is not None:
            return self
        started = time.perf_counter()
        if self._text:
            self._embed_pool()
            self._text_features = self._new_text_features()
        self._pool_x = self._features.pool()
        if self.transfer:
            columns = [source_prediction(s, self._features, self._pool_x)[0] for s in self.transfer]
            similarity = description_similarity(self._encoder(), self.description,
                                                [s.description for s in self.transfer])
            if self._memory_gate == "parameter":  # column s * P + j: source s's view of parameter j
                effects = [main_effects(column, self.space) for column in columns]
                self._prior = torch.cat(effects, dim=1)
                self.similarity = similarity.repeat_interleave(effects[0].shape[1])
                self._prior_groups = [list(range(j, self._prior.shape[1], effects[0].shape[1]))
                                      for j in range(effects[0].shape[1])]
            else:
                self._prior, self.similarity = torch.stack(columns, dim=1), similarity
        self._surrogate = self._new_surrogate()
        self.last_timings = {**self.last_timings, "prepare_s": time.perf_counter() - started}
        return self

    def _encoder(self):
        if self.text_pool is not None:
            return self.text_pool.encoder
        from lmtune.samplers.language_bo.encoder import FrozenEncoder

        return FrozenEncoder.load(self._encoder_name, device=self._device, dtype=self._encoder_dtype)

    def _new_surrogate(self) -> Surrogate:
        """A fresh GP, at ``prepare`` and after a degenerate fit, over the same ψ and projection."""
        return Surrogate(numeric=self._pool_x if self._numeric else None, text=self._text_features,
                         prior=self._prior, weight_mean=None if self.similarity is None else self.similarity.clone(),
                         weight_sd=self._weight_sd, fit=self._fit, text_ard=self._text_ard,
                         memory_gate=bool(self._memory_gate), prior_groups=self._prior_groups)

    def memory_report(self) -> dict[str, Any] | None:
        """What the sampler remembers (None: nothing) and whether its memory gate keeps it: ``kept`` is whether the
        GP with the memory predicted this study's left-out results better than the GP without it at the last fit,
        None before a fit has judged it (the first trials) or without the gate (``memory_gate=False``)."""
        if not self.transfer:
            return None
        surrogate = self._surrogate
        judged = surrogate is not None and surrogate.memory_gate and surrogate.gp_no_memory is not None
        similarity = None if self.similarity is None else [round(float(v), 4) for v in self.similarity]
        return {"sources": [source.name for source in self.transfer], "similarity": similarity,
                "gate": self._memory_gate, "kept": bool(surrogate.uses_memory) if judged else None}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_pool_x=None, _text_features=None, _prior=None, similarity=None)
        return state

    # -- one suggestion -------------------------------------------------------------------------
    def _start_point(self, observed: dict[int, float], failed: list[int], held: list[int], free: np.ndarray,
                     rng: np.random.Generator) -> int | None:
        """With a transfer source: the config the sources rate best, then ``transfer_design`` design points.
        Without: the start-up trials from the space-filling design, or random ones."""
        if self.transfer:
            self.prepare()
            if not observed:  # nothing of our own yet: the config the sources rate best
                scores = self._prior @ self.similarity.clamp_min(1e-3)
                scores[~torch.from_numpy(free)] = -torch.inf
                best = np.flatnonzero((scores >= scores.max() - 1e-12).numpy())
                return int(rng.choice(best))
            if len(observed) + len(failed) < 1 + self.transfer_design:
                return self._design_point(held, free, rng)
            return None
        if self._start == "space-filling" and len(observed) < max(self.n_startup_trials, 2):
            return self._design_point(held, free, rng)
        return super()._start_point(observed, failed, held, free, rng)

    def _design_point(self, held: list[int], free: np.ndarray, rng: np.random.Generator) -> int:
        """The first config of this seed's design that no trial holds (the design is the same on every worker)."""
        if self._pool_x is None:
            self._pool_x = self._features.pool()
        everything = np.ones(self.pool_size, dtype=bool)
        size = max(self.n_startup_trials, self.transfer_design + 1, 2)
        design = space_filling(self._pool_x, everything, size, self._seed, dims=self._features.numeric_dims or None)
        taken = set(held)
        for index in design:
            if index not in taken and free[index]:
                return index
        return int(rng.choice(np.flatnonzero(free)))

    label = "language-BO+"
