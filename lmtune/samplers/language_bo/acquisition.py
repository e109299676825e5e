"""Log Expected Improvement over a whole pool, from the fitted GP's posterior written out in closed form.

gpytorch's batched prediction repeats the training rows for every candidate; writing the posterior out
(one Cholesky factor of the training covariance, then a cross-covariance per chunk of candidates) gives the
same numbers as BoTorch's ``LogExpectedImprovement`` on the model, much faster on a pool of tens of thousands
(tests/samplers/test_language_bo.py compares the two). Log EI of the standardized improvement is BoTorch's own
(``lmtune._compat.log_ei``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmtune._compat import log_ei


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
