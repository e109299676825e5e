"""The rectified law's fit as its authors coded it (Lin et al., ICML 2024), reimplemented from its description.

Stage 1 fits L(D) = (A - |E|) / (1 + exp(B) D^beta) + |E| in log space with one surrogate Z_i = exp(beta log D_i + B)
per point (parameterised as a square), so the curve term and the exponent are fitted as two coupled least-squares
problems; stage 2 refits A and E with B and beta fixed. D = 0 is placed at 1e-10. BFGS, start A = max L,
E = geometric mean of max and min L, B = 0, beta = 1; a fit with A <= E is rejected. We keep it to reproduce the
published table (their numbers are sensitive to the optimizer); :class:`RectifiedLaw` defaults to a bounded,
multi-start fit instead.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

ZERO_AT = 1e-10


def fit_rectified_lin2024(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Return ``(a, c, beta, e)`` in :class:`RectifiedLaw`'s parameterisation and the log-space RMSE."""
    from lmtune.selection.laws import FitError

    lx = np.log(np.where(d > 0, d, ZERO_AT))
    ly = np.log(y)
    n = len(ly)

    def stage1(v):
        a, b, beta, e = v[:4]
        s = v[4:]
        z = s * s
        inner = a + abs(e) * z
        r = np.log(inner) - np.log1p(z) - ly
        q = np.log(z) - beta * lx - b
        value = np.mean(r * r) + np.mean(q * q)
        dz = 2 / n * (r * (abs(e) / inner - 1 / (1 + z)) + q / z)
        grad = np.concatenate([[2 / n * np.sum(r / inner), -2 / n * np.sum(q), -2 / n * np.sum(q * lx),
                                2 / n * np.sum(r * np.sign(e) * z / inner)], dz * 2 * s])
        return value, grad

    def stage2(v, b, beta):
        a, e = v
        pred = np.log((a - abs(e)) / (1 + np.exp(beta * lx + b)) + abs(e))
        return np.mean((pred - ly) ** 2)

    start = np.concatenate([[math.exp(ly.max()), 0.0, 1.0, math.exp((ly.max() + ly.min()) / 2)], np.ones(n)])
    with np.errstate(all="ignore"):
        first = minimize(stage1, start, jac=True, method="BFGS")
        a, b, beta, e = first.x[:4]
        second = minimize(stage2, [a, e], args=(b, beta), method="BFGS")
    a, e = second.x
    if not (np.isfinite(second.fun) and a > e):
        raise FitError("rectified (lin2024): the fit did not converge to A > E")
    return np.array([a, b, beta, abs(e)]), math.sqrt(second.fun)
