"""Per-instance quality of n responses: success, expected success, unbiased pass@k, majority vote, or a user
function. A config's metric is the mean over instances.

Expected success (EcoOptiGen, "Cost-Effective Hyperparameter Optimization for Large Language Model
Generation Inference", arXiv:2303.04673) is the chance that n independent draws with the observed per-response accuracy
k/n contain a correct one; it separates configs that plain success ties.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from math import comb

from lmtune.config import import_function
from lmtune.errors import InputError

BUILTIN = ("success", "expected_success", "vote", "pass@K (e.g. pass@1)", "module:function")


def success(correct: Sequence[bool]) -> float:
    """1 when any response is correct."""
    return float(any(correct))


def expected_success(correct: Sequence[bool]) -> float:
    """1 - (1 - k/n)^n for k correct of n responses."""
    n = len(correct)
    return 0.0 if n == 0 else 1.0 - (1.0 - sum(correct) / n) ** n


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for c correct of n samples, k <= n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def vote(answers: Sequence[str], correct: Sequence[bool]) -> float:
    """Whether the most common answer (first seen wins a tie) is correct."""
    if not answers:
        return 0.0
    counts = Counter(answers)
    top = max(counts.values())
    for answer, ok in zip(answers, correct, strict=True):
        if counts[answer] == top:
            return float(ok)
    return 0.0


#: ``metric(instance, responses, correct, answers) -> float``
InstanceMetric = Callable[[dict, list[str], list[bool], list[str]], float]


def make_instance_metric(name: str) -> tuple[InstanceMetric, bool]:
    """The per-instance metric for ``name``, and whether it needs the task's correctness check.

    It sees each response's correctness as the task's ``check`` judged it (``lmtune hag``'s ``make_set_metric``
    scores the raw responses of one input instead, with no check).

    A user metric ``module:function`` is called as ``function(instance, responses)`` and returns a float.
    """
    if name == "success":
        return (lambda inst, resp, ok, ans: success(ok)), True
    if name == "expected_success":
        return (lambda inst, resp, ok, ans: expected_success(ok)), True
    if name == "vote":
        return (lambda inst, resp, ok, ans: vote(ans, ok)), True
    match = re.fullmatch(r"pass@(\d+)", name)
    if match:
        k = int(match.group(1))
        if k < 1:
            raise InputError("metric", "pass@k needs k >= 1")

        def at_k(inst, resp, ok, ans):
            if len(ok) < k:
                raise ValueError(f"pass@{k} needs n >= {k} responses, got {len(ok)}")
            return pass_at_k(len(ok), sum(ok), k)
        return at_k, True
    if ":" in name:
        return _user_metric(name), False
    raise InputError("metric", f"unknown metric {name!r}; allowed: {', '.join(BUILTIN)}")


def check_responses(name: str, n: tuple[int, int]) -> None:
    """``InputError`` on ``metric`` when ``pass@K`` could meet a config of fewer than K responses (``n`` is the
    searched range): such a config could not be scored after its responses were paid for."""
    match = re.fullmatch(r"pass@(\d+)", name)
    if match and n[0] < int(match.group(1)):
        k = int(match.group(1))
        raise InputError("metric", f"{name} needs {k} or more responses per instance, but `n` goes from {n[0]} "
                         f"to {n[1]}; set `n` to {k},{max(k, n[1])} or use a K of at most {n[0]}")


def _user_metric(spec: str) -> InstanceMetric:
    function = import_function(spec, "metric")
    return lambda inst, resp, ok, ans: float(function(inst, resp))
