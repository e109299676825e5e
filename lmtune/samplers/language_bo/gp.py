"""Language-BO's GPs: one builder for every block of inputs, the L-BFGS-B fit, and leave-one-out prediction.

Inputs are columns of numbers, text features and source predictions; each block present gets a Matérn-5/2
kernel with its own output scale, and source predictions enter the mean, not the kernel. Every GP is a float64
BoTorch ``SingleTaskGP`` with BoTorch's dimension-scaled lengthscale prior and a LogNormal(-4, 1) noise prior.
The constraints keep their softplus transform (BoTorch drops it for L-BFGS-B bounds) because the features are
fitted with Adam, which is unbounded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch


def prior_mean(prior_dims: Sequence[int], weight_mean: torch.Tensor | None, weight_sd: float):
    """A constant mean, or with ``prior_dims`` the constant plus weighted source predictions."""
    import gpytorch

    class PriorMean(gpytorch.means.Mean):
        """c + Σ_s w_s m_s x[s]: a constant plus weighted source predictions (columns of the input), with a Normal
        prior on the weights centred on how related each source is said to be; ``mask`` (m_s, 1 or 0) switches a
        column off without touching its fitted weight (the per-parameter memory gate)."""

        def __init__(self, dims: Sequence[int], loc: torch.Tensor, scale: float):
            super().__init__()
            self.dims = list(dims)
            self.register_parameter("constant", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
            self.register_parameter("weights", torch.nn.Parameter(loc.clone().double()))
            self.register_prior("weights_prior", gpytorch.priors.NormalPrior(loc.double(), scale), "weights")
            self.register_buffer("mask", torch.ones(len(self.dims), dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.constant + x[..., self.dims] @ (self.weights * self.mask)

    if not prior_dims:
        return gpytorch.means.ConstantMean().double()
    return PriorMean(prior_dims, weight_mean, weight_sd)


def make_gp(x: torch.Tensor, y: torch.Tensor, *, numeric_dims: Sequence[int] = (), text_dims: Sequence[int] = (),
            prior_dims: Sequence[int] = (), weight_mean: torch.Tensor | None = None, weight_sd: float = 0.5,
            text_ard: bool = True, outputscale_prior: bool = True):
    """A float64 BoTorch ``SingleTaskGP`` on inputs whose columns are numbers, text features and source
    predictions: a sum of Matérn-5/2 kernels (one per block, each with its output scale, ARD over the numbers and,
    with ``text_ard``, over the text), the mean of ``prior_mean``. ``outputscale_prior``: a Gamma(2, 0.15) prior
    on each output scale (language-bo+'s kernels; the paper's text-only kernel has none)."""
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
        parts.append(ScaleKernel(matern, outputscale_prior=GammaPrior(2.0, 0.15) if outputscale_prior else None))
    if not parts:
        raise ValueError("a GP needs numeric or text dimensions")
    kernel = parts[0] if len(parts) == 1 else AdditiveKernel(*parts)
    noise = LogNormalPrior(loc=-4.0, scale=1.0)
    likelihood = GaussianLikelihood(noise_prior=noise, noise_constraint=GreaterThan(1e-4, initial_value=noise.mode))
    mean = prior_mean(prior_dims, weight_mean, weight_sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputDataWarning)  # deep-kernel features are not in the unit cube
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
