"""Log Expected Improvement over a whole pool, from the fitted GP's posterior written out in closed form.

gpytorch's batched prediction repeats the training rows for every candidate; writing the posterior out
(one Cholesky factor of the training covariance, then a cross-covariance per chunk of candidates) gives the
same numbers as BoTorch's ``LogExpectedImprovement`` on the model, much faster on a pool of tens of thousands
(tests/samplers/test_language_bo.py compares the two).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: Constants of the standard normal, written as BoTorch writes them so that log-EI agrees to the last bit.
_LOG_SQRT_2PI = math.log(2 * math.pi) / 2
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_NEG_INV_SQRT_2 = -(2**-0.5)
_NEG_INV_SQRT_2_PHI = -0.7071067811865475  # BoTorch's ndtr constant (one ulp from the one above)
_LOG_SQRT_PI_DIV_2 = math.log(math.pi / 2) / 2
_LOG_2 = math.log(2)
#: Below this u the log(1 - exp(w)) term is replaced by its leading order (float64: about -1/sqrt(eps)).
_NEG_INV_SQRT_EPS = -1e6


def log_ei(u: torch.Tensor) -> torch.Tensor:
    """log(φ(u) + u Φ(u)): log Expected Improvement per unit of posterior σ at standardized improvement u.

    Accurate far into negative u, where EI itself underflows to 0 and every candidate would tie ("Unexpected
    Improvements to Expected Improvement for Bayesian Optimization", Ament et al., NeurIPS 2023,
    arXiv:2310.20708): for u > -1 the plain formula; below, log φ(u) + log(1 - exp(w)) with
    w = log(|u| Φ(u) / φ(u)) computed through the scaled complementary error function.
    """
    upper = u.clamp_min(-1)
    log_upper = (_INV_SQRT_2PI * (-0.5 * upper.square()).exp()
                 + upper * (0.5 * torch.erfc(_NEG_INV_SQRT_2_PHI * upper))).log()
    lower = u.clamp_max(-1)
    clipped = lower.clamp_min(_NEG_INV_SQRT_EPS)
    w = torch.log(torch.special.erfcx(_NEG_INV_SQRT_2 * clipped) * clipped.abs()) + _LOG_SQRT_PI_DIV_2
    log1mexp = torch.where(w > -_LOG_2, (-w.expm1()).log(), (-w.exp()).log1p())
    tail = torch.where(u > _NEG_INV_SQRT_EPS, log1mexp, -2 * lower.abs().log())
    return torch.where(u > -1, log_upper, -0.5 * u.square() - _LOG_SQRT_2PI + tail)


def log_ei_scorer(gp, z: torch.Tensor, y: torch.Tensor, best: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function: features -> log EI over ``best`` under ``gp`` (a fitted ``SingleTaskGP``) conditioned on (z, y).

    The GP's own mean, kernel and noise are used; only the linear algebra is written out.
    """
    from linear_operator.utils.cholesky import psd_safe_cholesky

    noise = gp.likelihood.noise.squeeze(-1)
    chol = psd_safe_cholesky(gp.covar_module(z).to_dense() + noise * torch.eye(len(z), dtype=z.dtype, device=z.device))
    alpha = torch.cholesky_solve((y - gp.mean_module(z))[:, None], chol)

    def score(x: torch.Tensor) -> torch.Tensor:
        cross = gp.covar_module(x, z).to_dense()
        mean = gp.mean_module(x) + (cross @ alpha).squeeze(-1)
        reduction = torch.linalg.solve_triangular(chol, cross.T, upper=False).pow(2).sum(0)
        sigma = (gp.covar_module(x, diag=True) - reduction).clamp_min(1e-12).sqrt()
        return log_ei((mean - best) / sigma) + sigma.log()

    return score
