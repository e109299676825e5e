"""The language model's view of the pool as a GP: frozen embeddings with a soft token, a projection, a deep kernel.

The surrogate of "Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" (Eq. 10):
h(x, ψ) is the frozen encoder's embedding of config x's text with the learnable token ψ appended, g is the
projection ELU(Dropout(W h + b)), and a float64 BoTorch ``SingleTaskGP`` with a Matérn-5/2 ARD kernel models
the metric on g(h). Kernel hyperparameters ω, projection θ and ψ are fitted jointly by maximizing the marginal
log likelihood with AdamW, GOLLuM's recipe ("GOLLuM: Gaussian Process Optimized LLMs", arXiv:2504.06265).
ω, θ and ψ persist between suggestions, so later fits warm-start from the previous optimum.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmtune.samplers.language_bo.acquisition import log_ei_scorer

#: Rows per chunk when scoring the pool (bounds the memory of the cross-covariance).
SCORE_CHUNK = 8192


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


class Projection(torch.nn.Module):
    """g(h) = ELU(Dropout(W h + b)), the paper's Eq. 10 (Xavier init and bias 0.01, as in GOLLuM)."""

    def __init__(self, width: int, out: int, dropout: float, seed: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, out, dtype=torch.float64)
        torch.nn.init.xavier_uniform_(self.linear.weight, generator=torch.Generator().manual_seed(seed))
        torch.nn.init.constant_(self.linear.bias, 0.01)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(self.dropout(self.linear(h)))


@dataclass
class FitReport:
    """Exact MLL per observation (no dropout) before and after one fit, and the steps taken."""

    mll_before: float
    mll_after: float
    steps: int
    warm: bool


class TextSurrogate:
    """ψ, projection and GP over one embedded pool (a ``TextPool``); kept between suggestions (warm start).

    Everything lives on the pool's ``device``: a CUDA encoder's device (the cached embeddings, the projection,
    the GP and the ranking of the whole pool run there), else the CPU.
    """

    def __init__(self, pool, base: torch.Tensor, *, use_projection: bool, use_token: bool, projection_dim: int,
                 dropout: float, seed: int):
        self.pool = pool
        self.device = pool.device
        self.base = base.to(self.device)  # (N, width) float32, ψ-free
        mean, std = self.base.double().mean(0), self.base.double().std(0)
        # Dimensions constant over the pool (MiniLM has two) keep scale 1: dividing by ~0 would blow up
        # the tiny differences ψ makes in them.
        self.shift, self.scale = mean, torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
        width = base.shape[1]
        self.psi = torch.nn.Parameter(pool.encoder.mean_token_embedding()) if use_token else None
        self.projection = (Projection(width, projection_dim, dropout, seed).to(self.device) if use_projection
                           else torch.nn.Identity())
        self.out_dim = projection_dim if use_projection else width
        self.gp = None
        self._batch = None
        #: Recent shortlists: their suffix states are kept, as the next shortlist mostly repeats them.
        self._recent: deque[set[int]] = deque(maxlen=3)

    # -- features --------------------------------------------------------------------------------
    def _normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Centre and scale each embedding dimension with pool statistics: texts of one template are
        nearly collinear, and 30 points cannot teach the projection that fixed affine map."""
        return (h.double() - self.shift) / self.scale

    def embeddings(self, indices: Sequence[int]) -> torch.Tensor:
        """h(x, ψ) of these configs (differentiable in ψ), or the cached h(x) without a token."""
        if self.psi is None:
            return self.base[list(indices)]
        key = tuple(indices)
        if self._batch is None or self._batch[0] != key:  # the packed keys/values serve every MLL step
            self._batch = (key, self.pool.psi_batch(key))
        return self._batch[1](self.psi)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(self._normalize(h))

    # -- fitting ---------------------------------------------------------------------------------
    def _new_gp(self, z: torch.Tensor, y: torch.Tensor):
        """SingleTaskGP on the features: constant mean, ScaleKernel(Matérn-5/2, ARD) with BoTorch's
        dimension-scaled lengthscale prior and LogNormal(-4, 1) noise prior. The constraints keep
        their softplus transform (BoTorch drops it for L-BFGS-B bounds) because Adam is unbounded."""
        from botorch.exceptions.warnings import InputDataWarning
        from botorch.models import SingleTaskGP
        from gpytorch.constraints import GreaterThan
        from gpytorch.kernels import MaternKernel, ScaleKernel
        from gpytorch.likelihoods import GaussianLikelihood
        from gpytorch.priors import LogNormalPrior

        lengthscale = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(self.out_dim), scale=math.sqrt(3))
        noise = LogNormalPrior(loc=-4.0, scale=1.0)
        kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=self.out_dim, lengthscale_prior=lengthscale,
                                          lengthscale_constraint=GreaterThan(2.5e-2, initial_value=lengthscale.mode)))
        likelihood = GaussianLikelihood(noise_prior=noise,
                                        noise_constraint=GreaterThan(1e-4, initial_value=noise.mode))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputDataWarning)  # deep-kernel features are not in the unit cube
            return SingleTaskGP(z, y[:, None], likelihood=likelihood, covar_module=kernel, outcome_transform=None)

    def _set_data(self, z: torch.Tensor, y: torch.Tensor) -> None:
        self.gp.set_train_data(z, y, strict=False)

    def _mll(self, indices: Sequence[int], y: torch.Tensor, mll) -> torch.Tensor:
        z = self.features(self.embeddings(indices))
        self._set_data(z, y)
        return mll(self.gp(z), y)

    def fit(self, indices: Sequence[int], y: torch.Tensor, steps: int, *, lr_gp: float, lr_features: float,
            decay: float) -> FitReport:
        """Maximize the MLL jointly over ω, θ and ψ with AdamW (GOLLuM's recipe: featurizer lr 0.002,
        GP lr 0.2, both decayed by ``decay`` per step)."""
        from gpytorch.mlls import ExactMarginalLogLikelihood

        y = y.to(self.device)
        warm = self.gp is not None
        if not warm:
            with torch.no_grad():
                self.gp = self._new_gp(self.features(self.embeddings(indices)), y)
        mll = ExactMarginalLogLikelihood(self.gp.likelihood, self.gp)
        before = self._exact_mll(indices, y, mll)
        groups = [{"params": list(self.gp.parameters()), "lr": lr_gp, "weight_decay": 0.0},
                  {"params": list(self.projection.parameters()), "lr": lr_features, "weight_decay": 1e-3}]
        if self.psi is not None:
            groups.append({"params": [self.psi], "lr": lr_features, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=decay)
        self.gp.train()
        self.projection.train()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = -self._mll(indices, y, mll)
            loss.backward()
            optimizer.step()
            schedule.step()
        return FitReport(before, self._exact_mll(indices, y, mll), steps, warm)

    def _exact_mll(self, indices: Sequence[int], y: torch.Tensor, mll) -> float:
        self.gp.train()
        self.projection.eval()
        with torch.no_grad():
            return float(self._mll(indices, y, mll))

    # -- acquisition -------------------------------------------------------------------------------
    def log_ei(self, z: torch.Tensor, y: torch.Tensor, best: float):
        """A function: features -> log Expected Improvement over ``best`` under the GP conditioned on (z, y)."""
        return log_ei_scorer(self.gp, z, y, best)

    def propose(self, observed: Sequence[int], y: torch.Tensor, best: float, pending: Sequence[int],
                candidates: np.ndarray, shortlist_k: int, threads: int) -> tuple[int, dict[str, float]]:
        """The candidate of highest log-EI; returns its pool index and stage timings."""
        timings = {}
        started = time.perf_counter()
        y = y.to(self.device)
        with torch_threads(threads), torch.no_grad():
            self.gp.eval()
            self.projection.eval()
            h_obs = self.embeddings(observed)
            z = self.features(h_obs)
            if pending:  # constant liar: pending configs count as bad, so EI looks elsewhere
                z = torch.cat([z, self.features(self.embeddings(pending))])
                y = torch.cat([y, y.min().expand(len(pending))])
            acquisition = self.log_ei(z, y, best)
            if self.psi is not None and len(candidates) > shortlist_k:
                shift = (h_obs - self.base[list(observed)]).mean(0)
                rough = self._score(acquisition, self.base[candidates] + shift)
                candidates = candidates[np.argsort(-rough.cpu().numpy(), kind="stable")[:shortlist_k]]
                timings["rank_pool_s"] = time.perf_counter() - started
            started = time.perf_counter()
            h = self.base[candidates] if self.psi is None else self.embeddings(candidates.tolist())
            winner = int(torch.argmax(self._score(acquisition, h)))
            timings["exact_s"] = time.perf_counter() - started
        self._recent.append(set(candidates.tolist()))
        self.pool.forget(set(observed).union(pending, *self._recent))
        return int(candidates[winner]), timings

    def _score(self, acquisition, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([acquisition(self.features(h[start:start + SCORE_CHUNK]))
                          for start in range(0, len(h), SCORE_CHUNK)])
