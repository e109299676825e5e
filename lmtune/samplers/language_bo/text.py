"""A config's text as GP features: its frozen embedding with a soft token, normalized and projected.

The feature map of "Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" (Eq. 10):
h(x, ψ) is the frozen encoder's embedding of config x's text with the learnable token ψ appended
(``embeddings.TextPool``), g is the projection ELU(Dropout(W h + b)), and the GP (``surrogate``) models the
metric on g(h). ψ and g are trained with the GP's hyperparameters and persist between suggestions, so later
fits warm-start from the previous optimum.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch


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


class TextFeatures:
    """ψ, the projection and the pool's ψ-free embeddings (``base``) of one embedded pool (a ``TextPool``).

    Everything lives on the pool's ``device``: a CUDA encoder's device (the cached embeddings, the projection,
    the GP and the ranking of the whole pool run there), else the CPU.
    """

    def __init__(self, pool, base: torch.Tensor, *, use_projection: bool, use_token: bool, projection_dim: int,
                 dropout: float, seed: int):
        self.pool = pool
        self.device = pool.device
        self.base = base.to(self.device)  # (N, width) float32, ψ-free
        mean, std = self.base.double().mean(0), self.base.double().std(0)
        # Dimensions constant over the pool (MiniLM has some) keep scale 1: dividing by ~0 would blow up
        # the tiny differences ψ makes in them.
        self.shift, self.scale = mean, torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
        width = base.shape[1]
        self.psi = torch.nn.Parameter(pool.encoder.mean_token_embedding()) if use_token else None
        self.projection = (Projection(width, projection_dim, dropout, seed).to(self.device) if use_projection
                           else torch.nn.Identity())
        self.out_dim = projection_dim if use_projection else width
        self._batch = None
        #: Recent shortlists: their suffix states are kept, as the next shortlist mostly repeats them.
        self._recent: deque[set[int]] = deque(maxlen=3)

    @property
    def trainable(self) -> bool:
        """Whether there is anything to train besides the GP (a projection or ψ)."""
        return any(True for _ in self.projection.parameters()) or self.psi is not None

    def _normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Centre and scale each embedding dimension with pool statistics: texts of one template are
        nearly collinear, and a few dozen points cannot teach the projection that fixed affine map."""
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

    def keep_states(self, shortlist: np.ndarray, observed: Sequence[int], pending: Sequence[int]) -> None:
        """Keep the suffix states of the observed, pending and recently shortlisted configs; drop the rest
        (bounded memory: each shortlist re-embeds a few configs with ψ)."""
        self._recent.append(set(shortlist.tolist()))
        self.pool.forget(set(observed).union(pending, *self._recent))
