"""Cost-based pruning knowledge: more responses or a larger max_tokens never cost less.

Assumption 3.1 of "Cost-Effective Hyperparameter Optimization for Large Language Model Generation Inference"
(EcoOptiGen, arXiv:2303.04673).

So once (n, max_tokens) is over the per-instance budget, every (n', m') with n' >= n and m' >= m is too, and
once it is within, every smaller pair is. Knowledge is kept per ``token_key`` (model, prompt template, stop):
configs that differ there bill differently and share nothing.
"""

from __future__ import annotations

from collections import defaultdict


class PruningKnowledge:
    def __init__(self):
        self.invalid: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.valid: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def status(self, key: str, n: int, max_tokens: int) -> str | None:
        """``"invalid"``, ``"valid"``, or None when nothing known decides it."""
        if any(n >= n0 and max_tokens >= m0 for n0, m0 in self.invalid[key]):
            return "invalid"
        if any(n <= n1 and max_tokens <= m1 for n1, m1 in self.valid[key]):
            return "valid"
        return None

    def record(self, key: str, n: int, max_tokens: int, valid: bool) -> None:
        (self.valid if valid else self.invalid)[key].append((n, max_tokens))

    def evidence(self, key: str, n: int, max_tokens: int) -> tuple[int, int] | None:
        """The known invalid pair that rules out (n, max_tokens), for the trial's reason."""
        return next(((n0, m0) for n0, m0 in self.invalid[key] if n >= n0 and max_tokens >= m0), None)
