"""Language-BO's one surrogate: a GP over a config's numbers, its text and what other studies learned.

The paper's surrogate ("Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization",
Eq. 10) sees a config only through the embedding of its text: a Matérn-5/2 ARD kernel on g(h(x, ψ))
(``text.TextFeatures``), fitted jointly with g and ψ by AdamW, GOLLuM's recipe ("GOLLuM: Gaussian Process
Optimized LLMs", arXiv:2504.06265). That is this model with the text block alone and ``fit="paper"``.

A GP on text embeddings of a few dozen configs predicts held-out configs far worse than a GP on the log-scaled
numbers (docs/benchmarks.md), so ``language-bo+`` keeps the text and adds the numbers, as a sum of two kernels
whose weights (output scales) the marginal likelihood sets:

    k(x, x') = s_num · Matérn-5/2(u(x), u(x')) + s_text · Matérn-5/2(g(h(x)), g(h(x')))

with u the numbers in the unit cube (``numeric``). With s_text → 0 it is the numeric GP, so the likelihood can
always fall back to the numbers; the text adds what they miss (names such as the variant, the template's
knowledge). The mean is c + Σ_s w_s m_s(x): m_s is what source study s predicts for x (``transfer``), and w_s
is fitted with the kernel, so a source that does not agree with this study's own results loses its weight.

Each extra block is kept only while it predicts. The marginal likelihood of a model with more freedom is higher
on the data it was fitted to whether or not the freedom helps, so it cannot judge whether a block earns its
place: a GP without the text (numbers alone) and one without the prior mean are fitted beside, and the block
stays only while the GP with it predicts left-out observations better (``gp.loo_log_predictive``). A source
whose good region this study's results contradict is then dropped after a few trials instead of pulling every
proposal back to it (the weight w_s alone falls too slowly from its prior; docs/benchmarks.md).

The next config is the free candidate of highest log Expected Improvement (``acquisition``); configs still
running enter as constant liars (the worst observed value), so parallel workers spread out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmtune.samplers.language_bo.acquisition import log_ei_scorer
from lmtune.samplers.language_bo.gp import fit_lbfgs, loo_log_predictive, make_gp
from lmtune.samplers.language_bo.text import TextFeatures

#: Rows per chunk when scoring the pool (bounds the memory of the cross-covariance).
SCORE_CHUNK = 8192
#: How the GP's hyperparameters are fitted: ``paper``: by AdamW jointly with ψ and the projection, the kernel
#: without an outputscale prior (the paper's recipe); ``adamw+lbfgs``: by L-BFGS-B (BoTorch's
#: ``fit_gpytorch_mll``, the fit Optuna's and BoTorch's numeric GPs use) after the joint AdamW steps that train
#: ψ and the projection, as a handful of Adam steps leave lengthscales far from their optimum; ``adamw``: by
#: the joint AdamW steps, and by L-BFGS-B only when there is neither ψ nor a projection to train.
FITS = ("paper", "adamw+lbfgs", "adamw")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run a block with ``count`` torch threads. Fitting and scoring handle small tensors, where OpenMP
    threads mostly wait on each other, so one thread is usually fastest (docs/benchmarks.md)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class FitReport:
    """Exact MLL per observation (no dropout) before and after one fit, and the steps taken."""

    mll_before: float
    mll_after: float
    steps: int
    warm: bool


class Surrogate:
    """A GP over pool configs from any of three blocks: numbers (``numeric``, (N, d)), text (``text``,
    ``TextFeatures``) and source predictions for the mean (``prior``, (N, S), with ``weight_mean`` and
    ``weight_sd`` the Normal prior of their weights). ``fit`` is one of ``FITS``.

    Kept between suggestions: the GP, ψ and the projection warm-start the next fit. With numbers and text, a GP
    on the numbers alone (and the same mean) is fitted beside; with a prior mean and ``memory_gate``, a GP
    without it (the numbers alone when there are numbers). ``model`` is the GP that scores candidates.
    """

    def __init__(self, *, numeric: torch.Tensor | None = None, text: TextFeatures | None = None,
                 prior: torch.Tensor | None = None, weight_mean: torch.Tensor | None = None, weight_sd: float = 0.5,
                 fit: str = "adamw+lbfgs", text_ard: bool = True, memory_gate: bool = True,
                 prior_groups: Sequence[Sequence[int]] | None = None):
        if fit not in FITS or (fit == "paper" and text is None):
            raise ValueError(f"fit {fit!r}: one of {FITS}; 'paper' needs text features")
        self.numeric, self.text, self.prior = numeric, text, prior
        self.weight_mean, self.weight_sd = weight_mean, weight_sd
        self.fit_kind, self.text_ard = fit, text_ard
        self.memory_gate = memory_gate and prior is not None
        #: Columns of the prior that stand or fall together (one group per searched parameter), or None: the
        #: memory is judged as a whole only.
        self.prior_groups = [list(g) for g in prior_groups] if prior_groups and self.memory_gate else None
        #: The groups the per-parameter gate keeps (all until a fit judges them).
        self.kept_groups = list(range(len(self.prior_groups or ())))
        self.device = torch.device("cpu") if text is None else text.device
        d = 0 if numeric is None else numeric.shape[1]
        p = 0 if text is None else text.out_dim
        s = 0 if prior is None else prior.shape[1]
        self.numeric_dims, self.text_dims = list(range(d)), list(range(d, d + p))
        self.prior_dims = list(range(d + p, d + p + s))
        self.gp = None
        #: The numbers-only GP beside the sum (numbers and text both on), and whether the text kernel is used.
        self.gp_numeric = None
        self.uses_text = text is not None
        #: The GP without the prior mean beside the one with it (``memory_gate``), and whether the prior is used.
        self.gp_no_memory = None
        self.uses_memory = prior is not None
        #: Leave-one-out log predictive density of the last fit, per model fitted: ``with_text``, ``numbers_only``
        #: (numbers and text both on), ``with_memory`` and ``no_memory`` (with ``memory_gate``).
        self.last_loo: dict[str, float] = {}

    @property
    def trains_features(self) -> bool:
        return self.text is not None and self.text.trainable

    # -- inputs ----------------------------------------------------------------------------------
    def inputs(self, indices: Sequence[int], *, shift: torch.Tensor | None = None, text: bool = True) -> torch.Tensor:
        """GP inputs of these pool configs. With ``shift`` the text block comes from the cached ψ-free embeddings
        moved by ``shift`` (the cheap ranking of the whole pool); ``text=False`` leaves it at zero (for a GP that
        does not read it)."""
        blocks = []
        index = list(indices)
        if self.numeric is not None:
            blocks.append(self.numeric[index])
        if self.text is not None and not text:
            blocks.append(torch.zeros(len(index), len(self.text_dims), dtype=torch.float64))
        elif self.text is not None:
            h = self.text.embeddings(index) if shift is None else self.text.base[index] + shift
            blocks.append(self.text.features(h))
        if self.prior is not None:
            blocks.append(self.prior[index])
        return torch.cat(blocks, dim=1)

    def _eval_inputs(self, indices: Sequence[int]) -> torch.Tensor:
        if self.text is not None:
            self.text.projection.eval()
        with torch.no_grad():
            return self.inputs(indices).detach()

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, indices: Sequence[int], y: torch.Tensor, steps: int, *, lr_gp: float, lr_features: float,
            decay: float) -> FitReport:
        """Fit to standardized values ``y`` of these pool configs: ``steps`` AdamW steps (learning rates
        ``lr_gp`` and ``lr_features``, both decayed by ``decay`` per step) and/or L-BFGS-B, as ``fit`` says;
        then the checks of the text kernel and of the memory."""
        from gpytorch.mlls import ExactMarginalLogLikelihood

        y = y.to(self.device)
        warm = self.gp is not None
        if not warm:
            self.gp = self._first_gp(indices, y)
        mll = ExactMarginalLogLikelihood(self.gp.likelihood, self.gp)
        before = self._exact_mll(indices, y, mll)
        joint = self.fit_kind == "paper" or self.trains_features
        if joint and steps:
            self._adamw(indices, y, mll, steps, lr_gp=lr_gp, lr_features=lr_features, decay=decay)
        x = self._eval_inputs(indices)
        if self.prior_groups is not None:  # every part of the memory is fitted; the gate below judges each
            self._mask_groups(range(len(self.prior_groups)))
        if self.fit_kind == "adamw+lbfgs" or not joint:
            fit_lbfgs(self.gp, x, y)
        if self.text is not None and self.numeric is not None:
            self._gate_text(x, y)
        if self.memory_gate:
            self._gate_memory(x, y)
        return FitReport(before, self._exact_mll(indices, y, mll), steps, warm)

    def _first_gp(self, indices: Sequence[int], y: torch.Tensor):
        with torch.no_grad():
            # The paper's loop builds its first GP from features in training mode (a dropout draw); kept so that
            # its proposals stay what they were.
            x = self.inputs(indices) if self.fit_kind == "paper" else self._eval_inputs(indices)
            return make_gp(x, y, numeric_dims=self.numeric_dims, text_dims=self.text_dims,
                           prior_dims=self.prior_dims, weight_mean=self.weight_mean, weight_sd=self.weight_sd,
                           text_ard=self.text_ard, outputscale_prior=self.fit_kind != "paper")

    def _adamw(self, indices: Sequence[int], y: torch.Tensor, mll, steps: int, *, lr_gp: float,
               lr_features: float, decay: float) -> None:
        """Maximize the MLL jointly over the GP, the projection and ψ with AdamW (GOLLuM's recipe: featurizer
        lr 0.002, GP lr 0.2, both decayed per step; weight decay on the projection only)."""
        groups = [{"params": list(self.gp.parameters()), "lr": lr_gp, "weight_decay": 0.0},
                  {"params": list(self.text.projection.parameters()), "lr": lr_features, "weight_decay": 1e-3}]
        if self.text.psi is not None:
            groups.append({"params": [self.text.psi], "lr": lr_features, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=decay)
        self.gp.train()
        self.text.projection.train()
        for _ in range(steps):
            optimizer.zero_grad()
            x = self.inputs(indices)
            self.gp.set_train_data(x, y, strict=False)
            loss = -mll(self.gp(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()

    def _exact_mll(self, indices: Sequence[int], y: torch.Tensor, mll) -> float:
        x = self._eval_inputs(indices)
        self.gp.train()
        with torch.no_grad():
            self.gp.set_train_data(x, y, strict=False)
            return float(mll(self.gp(x), y))

    def _gate_text(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the GP on the numbers alone and keep the text kernel only while the sum predicts the left-out
        observations better."""
        if self.gp_numeric is None:
            self.gp_numeric = make_gp(x, y, numeric_dims=self.numeric_dims, prior_dims=self.prior_dims,
                                      weight_mean=self.weight_mean, weight_sd=self.weight_sd)
        fit_lbfgs(self.gp_numeric, x, y)
        self.last_loo = {"with_text": loo_log_predictive(self.gp, x, y),
                         "numbers_only": loo_log_predictive(self.gp_numeric, x, y)}
        self.uses_text = self.last_loo["with_text"] > self.last_loo["numbers_only"]

    def _gate_memory(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the GP without the prior mean and keep the memory only while the GP with it predicts the left-out
        observations better."""
        if self.gp_no_memory is None:
            blocks = {"numeric_dims": self.numeric_dims} if self.numeric is not None else {
                "text_dims": self.text_dims, "text_ard": self.text_ard}
            self.gp_no_memory = make_gp(x, y, **blocks)
        fit_lbfgs(self.gp_no_memory, x, y)
        if self.prior_groups is not None:
            with_memory = self._gate_groups(x, y)
        elif self.gp_numeric is not None:  # the text check has just scored the GP with memory
            with_memory = self.last_loo["with_text" if self.uses_text else "numbers_only"]
        else:
            with_memory = loo_log_predictive(self._with_memory, x, y)
        self.last_loo = {**self.last_loo, "with_memory": with_memory,
                         "no_memory": loo_log_predictive(self.gp_no_memory, x, y)}
        self.uses_memory = with_memory > self.last_loo["no_memory"]

    def _gate_groups(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Drop, one at a time, the parameter whose part of the memory the left-out observations are best without,
        while dropping it helps (backward elimination on the leave-one-out score, the fitted weights held); returns
        the score of what is kept."""
        gp = self._with_memory
        kept = list(range(len(self.prior_groups)))
        score = loo_log_predictive(gp, x, y)
        while kept:
            trials = {}
            for group in kept:
                self._mask_groups([g for g in kept if g != group], gp)
                trials[group] = loo_log_predictive(gp, x, y)
            drop = max(trials, key=trials.get)
            if trials[drop] <= score:
                break
            kept.remove(drop)
            score = trials[drop]
        self._mask_groups(kept, gp)
        self.kept_groups = kept
        return score

    def _mask_groups(self, keep, gp=None) -> None:
        """Switch the prior's columns of the groups in ``keep`` on and all others off, in every GP with the prior."""
        mask = torch.zeros(len(self.prior_dims), dtype=torch.float64)
        for group in keep:
            mask[self.prior_groups[group]] = 1.0
        for model in (gp,) if gp is not None else (self.gp, self.gp_numeric):
            if model is not None and hasattr(model.mean_module, "mask"):
                model.mean_module.mask.copy_(mask)

    @property
    def _with_memory(self):
        return self.gp if self.uses_text or self.gp_numeric is None else self.gp_numeric

    @property
    def _memory_dropped(self) -> bool:
        return not self.uses_memory and self.gp_no_memory is not None

    @property
    def model(self):
        """The GP that scores candidates: the sum, or the numbers alone when the text kernel did not earn its place;
        without the prior mean when the memory did not."""
        return self.gp_no_memory if self._memory_dropped else self._with_memory

    @property
    def reads_text(self) -> bool:
        """Whether the scoring GP reads the text block (so the pool's text features must be computed)."""
        if self.text is None:
            return False
        if self._memory_dropped:
            return self.numeric is None
        return self.uses_text

    # -- acquisition -----------------------------------------------------------------------------
    def propose(self, observed: Sequence[int], y: torch.Tensor, best: float, pending: Sequence[int],
                candidates: np.ndarray, shortlist_k: int, threads: int) -> tuple[int, dict[str, float]]:
        """The candidate of highest log-EI over ``best``; returns its pool index and stage timings.

        With ψ, the whole pool is ranked on its cached ψ-free embeddings shifted by the mean effect of ψ on the
        observed configs (the GP was fitted on ψ embeddings; the shift keeps the two consistent), and only the
        top ``shortlist_k`` are re-embedded with the current ψ and scored exactly."""
        timings = {}
        started = time.perf_counter()
        gp = self.model
        y = y.to(self.device)
        with torch_threads(threads), torch.no_grad():
            gp.eval()
            x = self._eval_inputs(observed)
            if pending:  # constant liar: pending configs count as bad, so EI looks elsewhere
                x = torch.cat([x, self._eval_inputs(pending)])
                y = torch.cat([y, y.min().expand(len(pending))])
            acquisition = log_ei_scorer(gp, x, y, best)
            with_psi = self.reads_text and self.text.psi is not None
            if with_psi and len(candidates) > shortlist_k:
                shift = (self.text.embeddings(list(observed)) - self.text.base[list(observed)]).mean(0)
                rough = self._score(acquisition, candidates, shift=shift)
                candidates = candidates[np.argsort(-rough.cpu().numpy(), kind="stable")[:shortlist_k]]
                timings["rank_pool_s"] = time.perf_counter() - started
            started = time.perf_counter()
            scores = self._score(acquisition, candidates)
            timings["exact_s"] = time.perf_counter() - started
        if with_psi:
            self.text.keep_states(candidates, observed, pending)
        return int(candidates[int(torch.argmax(scores))]), timings

    def mean(self, indices: Sequence[int]) -> torch.Tensor:
        """Posterior mean at these pool configs (for tests and diagnostics)."""
        gp = self.model
        with torch.no_grad():
            gp.eval()
            return gp.posterior(self._eval_inputs(indices)).mean.squeeze(-1)

    def _score(self, acquisition, candidates: np.ndarray, *, shift: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for start in range(0, len(candidates), SCORE_CHUNK):
            chunk = candidates[start:start + SCORE_CHUNK].tolist()
            out.append(acquisition(self.inputs(chunk, shift=shift, text=self.reads_text)))
        return torch.cat(out)
