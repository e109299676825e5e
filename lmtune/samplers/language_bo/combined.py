"""One GP over a config's numbers and its text, with a prior mean that carries what other studies learned.

The paper's surrogate ("Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization")
sees a config only through the embedding of its text. Measured here (docs/benchmarks.md), a GP on MiniLM
embeddings of 30 configs predicts held-out configs far worse than a GP on the five log-scaled numbers. This
surrogate keeps the text and adds the numbers, as a sum of two kernels whose weights (output scales) the
marginal likelihood sets:

    k(x, x') = s_num · Matérn-5/2(u(x), u(x')) + s_text · Matérn-5/2(g(h(x)), g(h(x')))

with u the numbers in the unit cube (``numeric``), h the frozen embedding of the config's text and g the
learned projection (``model.TextSurrogate``). With s_text → 0 it is the numeric GP, so the likelihood can
always fall back to the numbers; the text adds what they miss (names such as the variant, the template's
knowledge). The mean is c + Σ_s w_s m_s(x): m_s is what source study s predicts for x (``transfer``), and w_s
is fitted with the kernel, so a source that does not agree with this study's own results loses its weight.

Memory is kept only while it predicts. With a prior mean, a GP without it (the same kernel, a constant mean) is
fitted beside, and the prior stays only while its leave-one-out predictions beat that GP's: a source whose good
region this study's results contradict is dropped after a few trials instead of pulling every proposal back to
it (the weight w_s alone falls too slowly from its prior; docs/benchmarks.md).

Fitting: the projection (and ψ) take AdamW steps jointly with the GP as in the paper; then the GP's
hyperparameters, with the features held fixed, are refitted by L-BFGS-B (BoTorch's ``fit_gpytorch_mll``), the
fit Optuna's and BoTorch's numeric GPs use: a handful of Adam steps leave lengthscales far from their optimum.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from lmtune.samplers.language_bo.acquisition import log_ei_scorer
from lmtune.samplers.language_bo.model import FitReport, TextSurrogate, torch_threads

#: Rows per chunk when scoring the pool.
SCORE_CHUNK = 8192


def _gpytorch_mean(prior_dims: Sequence[int], weight_mean: torch.Tensor | None, weight_sd: float):
    import gpytorch

    class PriorMean(gpytorch.means.Mean):
        """c + Σ_s w_s x[s]: a constant plus weighted source predictions (columns of the input), with a Normal
        prior on the weights centred on how related each source is said to be."""

        def __init__(self, dims: Sequence[int], loc: torch.Tensor, scale: float):
            super().__init__()
            self.dims = list(dims)
            self.register_parameter("constant", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
            self.register_parameter("weights", torch.nn.Parameter(loc.clone().double()))
            self.register_prior("weights_prior", gpytorch.priors.NormalPrior(loc.double(), scale), "weights")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.constant + x[..., self.dims] @ self.weights

    if not prior_dims:
        return gpytorch.means.ConstantMean().double()
    return PriorMean(prior_dims, weight_mean, weight_sd)


def make_gp(x: torch.Tensor, y: torch.Tensor, *, numeric_dims: Sequence[int] = (), text_dims: Sequence[int] = (),
            prior_dims: Sequence[int] = (), weight_mean: torch.Tensor | None = None, weight_sd: float = 0.5,
            text_ard: bool = True):
    """A float64 BoTorch ``SingleTaskGP`` on inputs whose columns are numbers, text features and source
    predictions: a sum of Matérn-5/2 ARD kernels (one per block, each with its output scale), the prior mean
    above, BoTorch's dimension-scaled lengthscale prior and LogNormal(-4, 1) noise prior."""
    from botorch.exceptions.warnings import InputDataWarning
    from botorch.models import SingleTaskGP
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import AdditiveKernel, MaternKernel, ScaleKernel
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.priors import GammaPrior, LogNormalPrior

    parts = []
    for dims, ard in ((list(numeric_dims), True), (list(text_dims), text_ard)):
        if not dims:
            continue
        prior = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(len(dims) if ard else 1), scale=math.sqrt(3))
        matern = MaternKernel(nu=2.5, ard_num_dims=len(dims) if ard else None, active_dims=dims,
                              lengthscale_prior=prior,
                              lengthscale_constraint=GreaterThan(2.5e-2, initial_value=prior.mode))
        parts.append(ScaleKernel(matern, outputscale_prior=GammaPrior(2.0, 0.15)))
    if not parts:
        raise ValueError("a GP needs numeric or text dimensions")
    kernel = parts[0] if len(parts) == 1 else AdditiveKernel(*parts)
    noise = LogNormalPrior(loc=-4.0, scale=1.0)
    likelihood = GaussianLikelihood(noise_prior=noise, noise_constraint=GreaterThan(1e-4, initial_value=noise.mode))
    mean = _gpytorch_mean(prior_dims, weight_mean, weight_sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputDataWarning)
        return SingleTaskGP(x, y[:, None], likelihood=likelihood, covar_module=kernel, mean_module=mean,
                            outcome_transform=None).double()


def fit_lbfgs(gp, x: torch.Tensor, y: torch.Tensor) -> None:
    """Fit the GP's hyperparameters on fixed inputs by L-BFGS-B (BoTorch's ``fit_gpytorch_mll``)."""
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    gp.set_train_data(x, y, strict=False)
    gp.train()
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimizer notes (e.g. ABNORMAL_TERMINATION) are retried by BoTorch
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": 200}})


def loo_log_predictive(gp, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean leave-one-out log predictive density of ``y`` under the fitted ``gp`` ("Gaussian Processes for Machine
    Learning", Rasmussen and Williams, section 5.4.2): from one Cholesky factor, without the hyperparameters'
    priors, so two models with different priors compare on their predictions alone."""
    from linear_operator.utils.cholesky import psd_safe_cholesky

    with torch.no_grad():
        noise = gp.likelihood.noise.squeeze(-1)
        chol = psd_safe_cholesky(gp.covar_module(x).to_dense() + noise * torch.eye(len(x), dtype=x.dtype))
        inverse = torch.cholesky_inverse(chol)
        variance = 1.0 / inverse.diagonal()
        residual = (inverse @ (y - gp.mean_module(x))) * variance  # y_i - (LOO mean)_i
        return float((-0.5 * variance.log() - 0.5 * residual.square() / variance).mean() - 0.5 * math.log(2 * math.pi))


class CombinedSurrogate:
    """A GP over pool configs from any of three blocks: numbers (``numeric``, (N, d)), text (``text``, a
    ``TextSurrogate`` whose projection and ψ are used, not its GP) and source predictions (``prior``, (N, S)).

    Kept between suggestions: the GP and the projection warm-start the next fit.

    With a prior mean and ``memory_gate``, a GP without it (constant mean, the numbers alone when there are
    numbers) is fitted too, and the memory stays only while its leave-one-out prediction is better.

    With both numbers and text, a GP on the numbers alone (and the same prior mean) is fitted beside the sum, and
    the text kernel stays only while it predicts left-out observations better (``loo_log_predictive``): the
    marginal likelihood of a model with more freedom is higher on the data it was fitted to whether or not the
    freedom helps, so it cannot be the judge of whether the language model earns its place.
    """

    def __init__(self, *, numeric: torch.Tensor | None, text: TextSurrogate | None, prior: torch.Tensor | None,
                 weight_mean: torch.Tensor | None = None, weight_sd: float = 0.5, lbfgs: bool = True,
                 text_ard: bool = True, memory_gate: bool = True):
        self.numeric = numeric
        self.text = text
        self.prior = prior
        self.weight_mean = weight_mean
        self.weight_sd = weight_sd
        self.lbfgs = lbfgs
        self.text_ard = text_ard
        self.memory_gate = memory_gate and prior is not None
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
        #: (numbers and text both on) and ``no_memory`` (with ``memory_gate``).
        self.last_loo: dict[str, float] = {}

    @property
    def base(self) -> torch.Tensor | None:
        return None if self.text is None else self.text.base

    @property
    def trains_features(self) -> bool:
        return self.text is not None and (any(True for _ in self.text.projection.parameters())
                                          or self.text.psi is not None)

    # -- inputs ----------------------------------------------------------------------------------
    def inputs(self, indices: Sequence[int], *, exact: bool = True, text: bool = True) -> torch.Tensor:
        """GP inputs of these pool configs; ``exact=False`` uses the cached ψ-free embeddings (with ``shift``);
        ``text=False`` leaves the text block at zero (for the numbers-only GP, which does not read it)."""
        blocks = []
        index = list(indices)
        if self.numeric is not None:
            blocks.append(self.numeric[index])
        if self.text is not None and not text:
            blocks.append(torch.zeros(len(index), len(self.text_dims), dtype=torch.float64))
        elif self.text is not None:
            h = self.text.embeddings(index) if exact else self.text.base[index] + self._shift
            blocks.append(self.text.features(h))
        if self.prior is not None:
            blocks.append(self.prior[index])
        return torch.cat(blocks, dim=1)

    _shift: torch.Tensor | float = 0.0

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, indices: Sequence[int], y: torch.Tensor, steps: int, *, lr_gp: float, lr_features: float,
            decay: float) -> FitReport:
        from gpytorch.mlls import ExactMarginalLogLikelihood

        warm = self.gp is not None
        if not warm:
            with torch.no_grad():
                self.gp = make_gp(self._eval_inputs(indices), y, numeric_dims=self.numeric_dims,
                                  text_dims=self.text_dims, prior_dims=self.prior_dims, weight_mean=self.weight_mean,
                                  weight_sd=self.weight_sd, text_ard=self.text_ard)
        mll = ExactMarginalLogLikelihood(self.gp.likelihood, self.gp)
        before = self._exact_mll(indices, y, mll)
        if self.trains_features and steps:
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
        x = self._eval_inputs(indices)
        if self.lbfgs or not self.trains_features:
            fit_lbfgs(self.gp, x, y)
        if self.text is not None and self.numeric is not None:
            if self.gp_numeric is None:
                self.gp_numeric = make_gp(x, y, numeric_dims=self.numeric_dims, prior_dims=self.prior_dims,
                                          weight_mean=self.weight_mean, weight_sd=self.weight_sd)
            fit_lbfgs(self.gp_numeric, x, y)
            self.last_loo = {"with_text": loo_log_predictive(self.gp, x, y),
                             "numbers_only": loo_log_predictive(self.gp_numeric, x, y)}
            self.uses_text = self.last_loo["with_text"] > self.last_loo["numbers_only"]
        if self.memory_gate:
            self._gate_memory(x, y)
        return FitReport(before, self._exact_mll(indices, y, mll), steps, warm)

    def _gate_memory(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the GP without the prior mean and keep the memory only while the GP with it predicts the left-out
        observations better."""
        if self.gp_no_memory is None:
            blocks = {"numeric_dims": self.numeric_dims} if self.numeric is not None else {
                "text_dims": self.text_dims, "text_ard": self.text_ard}
            self.gp_no_memory = make_gp(x, y, **blocks)
        fit_lbfgs(self.gp_no_memory, x, y)
        if self.gp_numeric is not None:  # the text check has just scored the GP with memory
            with_memory = self.last_loo["with_text" if self.uses_text else "numbers_only"]
        else:
            with_memory = loo_log_predictive(self._with_memory, x, y)
        self.last_loo = {**self.last_loo, "with_memory": with_memory,
                         "no_memory": loo_log_predictive(self.gp_no_memory, x, y)}
        self.uses_memory = with_memory > self.last_loo["no_memory"]

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

    def _eval_inputs(self, indices: Sequence[int]) -> torch.Tensor:
        if self.text is not None:
            self.text.projection.eval()
        with torch.no_grad():
            return self.inputs(indices).detach()

    def _exact_mll(self, indices: Sequence[int], y: torch.Tensor, mll) -> float:
        x = self._eval_inputs(indices)
        self.gp.train()
        with torch.no_grad():
            self.gp.set_train_data(x, y, strict=False)
            return float(mll(self.gp(x), y))

    # -- acquisition -----------------------------------------------------------------------------
    def propose(self, observed: Sequence[int], y: torch.Tensor, best: float, pending: Sequence[int],
                candidates: np.ndarray, shortlist_k: int, threads: int) -> tuple[int, dict[str, float]]:
        """The candidate of highest log-EI; returns its pool index and stage timings."""
        timings = {}
        started = time.perf_counter()
        gp = self.model
        with torch_threads(threads), torch.no_grad():
            gp.eval()
            x = self._eval_inputs(observed)
            if pending:  # constant liar: pending configs count as bad, so EI looks elsewhere
                x = torch.cat([x, self._eval_inputs(pending)])
                y = torch.cat([y, y.min().expand(len(pending))])
            acquisition = log_ei_scorer(gp, x, y, best)
            psi = self.reads_text and self.text.psi is not None
            if psi and len(candidates) > shortlist_k:
                self._shift = (self.text.embeddings(list(observed)) - self.text.base[list(observed)]).mean(0)
                rough = self._score(acquisition, candidates, exact=False)
                candidates = candidates[np.argsort(-rough.numpy(), kind="stable")[:shortlist_k]]
                timings["rank_pool_s"] = time.perf_counter() - started
            started = time.perf_counter()
            scores = self._score(acquisition, candidates, exact=psi)
            timings["exact_s"] = time.perf_counter() - started
        if psi:
            self.text._recent.append(set(candidates.tolist()))
            self.text.pool.forget(set(observed).union(pending, *self.text._recent))
        return int(candidates[int(torch.argmax(scores))]), timings

    def mean(self, indices: Sequence[int]) -> torch.Tensor:
        """Posterior mean at these pool configs (for tests and diagnostics)."""
        gp = self.model
        with torch.no_grad():
            gp.eval()
            return gp.posterior(self._eval_inputs(indices)).mean.squeeze(-1)

    def _score(self, acquisition, candidates: np.ndarray, *, exact: bool) -> torch.Tensor:
        out = []
        for start in range(0, len(candidates), SCORE_CHUNK):
            chunk = candidates[start:start + SCORE_CHUNK].tolist()
            out.append(acquisition(self.inputs(chunk, exact=exact, text=self.reads_text)))
        return torch.cat(out)
