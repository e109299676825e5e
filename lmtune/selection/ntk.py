"""LENSLLM's F term for a real model: F = ||exp(-eta * Theta * t) (f0(X) - Y)||^2.

lmtune takes each example's output to be its loss l_i (mean cross-entropy over its target tokens) and its target
0, so the residual is r0 = l(theta0), and Theta is the empirical NTK of those outputs on a small batch:
Theta = G G^T / n with G_i = d l_i / d theta over the trainable parameters (LoRA matrices and head under PEFT).
Then gradient descent on the mean loss evolves r as r' = -eta Theta r, and F = sum_k exp(-2 eta t lambda_k) (u_k.r0)^2.

Exact: keep the n per-example gradients and eigendecompose the n x n kernel. When n x parameters would not fit
in ``exact_limit_bytes``, the documented approximation replaces Theta by its mean eigenvalue tr(Theta)/n, which
needs only the gradient norms: F ~ exp(-2 eta t tr(Theta)/n) ||r0||^2. (Exact when Theta is a multiple of the
identity; otherwise it over-weights fast directions, so it is a lower bound on F by Jensen's inequality when r0
is spread evenly over the eigenvectors.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lmtune.errors import InputError

ETA = 0.01  # LENSLLM's eta


@dataclass(frozen=True)
class NTKTerm:
    f: float
    trace: float  # tr(Theta)
    initial_loss: float  # mean l_i(theta0)
    residual_norm2: float  # ||r0||^2
    steps: int
    eta: float
    examples: int
    exact: bool

    def to_dict(self) -> dict:
        return asdict(self)


def per_example_gradients(loss_fn, params: list[torch.Tensor], n: int, keep: bool):
    """Losses l_i, squared gradient norms, and (when ``keep``) the gradients as rows of a float64 matrix."""
    losses, norms, rows = [], [], []
    for i in range(n):
        loss = loss_fn(i)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params, strict=True)]).double()
        losses.append(float(loss.detach()))
        norms.append(float(flat @ flat))
        if keep:
            rows.append(flat.cpu())
    return np.array(losses), np.array(norms), (torch.stack(rows).numpy() if keep else None)


def f_from_kernel(theta: np.ndarray, residual: np.ndarray, eta: float, steps: int) -> float:
    """||exp(-eta t Theta) r||^2 through the eigendecomposition of the symmetric kernel."""
    values, vectors = np.linalg.eigh((theta + theta.T) / 2)
    values = np.clip(values, 0.0, None)  # a Gram matrix is PSD; clip rounding
    coefficients = vectors.T @ residual
    return float(np.sum(np.exp(-2 * eta * steps * values) * coefficients ** 2))


def ntk_term(model, tokenizer, rows: list[dict], *, task: str, steps: int, eta: float = ETA,
             max_length: int = 128, exact_limit_bytes: int = 1 << 30) -> NTKTerm:
    """F for ``model`` (a built, possibly PEFT-wrapped, HF model) on a small batch ``rows`` of the user's data.

    ``steps`` is t, the number of optimizer steps of the fine-tuning run the law describes.
    """
    from lmtune.finetune.train import TrainingRun, TrainSettings

    if not rows:
        raise InputError("ntk_examples", "needs at least one example")
    if steps < 0:
        raise InputError("steps", f"must be >= 0, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("model", "has no trainable parameters to take gradients of")
    run = TrainingRun(model, tokenizer, task, "eval_loss", TrainSettings(max_length=max_length, exact_match=False))
    encoded = run.encode(rows)
    count = sum(p.numel() for p in params)
    exact = len(rows) * count * 8 <= exact_limit_bytes
    was_training = model.training
    model.eval()  # no dropout: the kernel of the deterministic network

    def loss_fn(i):
        loss_sum, n, _ = run.loss_of([encoded[i]])
        return loss_sum / n

    try:
        losses, norms, grads = per_example_gradients(loss_fn, params, len(rows), keep=exact)
    finally:
        model.train(was_training)
    n = len(rows)
    trace = float(norms.sum() / n)
    residual2 = float(losses @ losses)
    if exact:
        f = f_from_kernel(grads @ grads.T / n, losses, eta, steps)
    else:
        f = math.exp(-2 * eta * steps * trace / n) * residual2
    return NTKTerm(f=f, trace=trace, initial_loss=float(losses.mean()), residual_norm2=residual2, steps=int(steps),
                   eta=eta, examples=n, exact=exact)
