"""Spending that never passes the optimization budget: every call reserves its worst-case cost first.

The worst case of a call is its prompt (counted exactly by local models, else as one token per UTF-8 byte plus
chat overhead until the server has told us the count for that model and prompt) plus ``n * max_tokens``
completion tokens. A call is made only when what was spent plus what other calls have reserved plus this
reservation fits in the budget; afterwards the reservation is replaced by the billed cost. So any number of
concurrent calls stop short of the budget instead of overshooting it (FLAML overshot by ~8%).

Answers from the response cache cost nothing now: their cost is counted as cached spend, apart.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from lmtune.inference.prices import PriceTable
from lmtune.llm.cache import CachedGenerator
from lmtune.llm.generation import Generation, GenerationRequest

#: Tokens a chat template may add per message and per request, on top of one token per byte of content.
CHAT_OVERHEAD = 16


class BudgetExhausted(RuntimeError):
    """The next call's worst-case cost does not fit in what is left of the optimization budget."""


@dataclass(frozen=True)
class Reservation:
    amount: float


class SpendLedger:
    """Real spend, outstanding reservations and cached spend against an optional total budget (thread-safe)."""

    def __init__(self, budget: float | None = None, *, spent: float = 0.0, cached: float = 0.0):
        self.budget = budget
        self.spent = spent
        self.cached = cached
        self.reserved = 0.0
        self.calls = 0
        self.cached_calls = 0
        self.refused = 0
        self._lock = threading.Lock()

    @property
    def left(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.spent - self.reserved

    def reserve(self, amount: float) -> Reservation:
        with self._lock:
            if self.budget is not None and self.spent + self.reserved + amount > self.budget:
                self.refused += 1
                raise BudgetExhausted(f"a call that may cost {amount:.6g} does not fit: {self.spent:.6g} spent and "
                                      f"{self.reserved:.6g} reserved of {self.budget:.6g}")
            self.reserved += amount
            return Reservation(amount)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace a reservation by the billed cost (never more than reserved: the bound is a worst case)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - reservation.amount)  # no float drift below zero
            self.spent += cost
            self.calls += 1

    def release(self, reservation: Reservation) -> None:
        """A call that failed: nothing was billed (rate limits and dropped connections are not)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - reservation.amount)

    def add_cached(self, cost: float) -> None:
        with self._lock:
            self.cached += cost
            self.cached_calls += 1


class MeteredGenerator:
    """A cached generator whose every fresh call is priced and reserved in a ledger first."""

    def __init__(self, generator: CachedGenerator, prices: PriceTable, ledger: SpendLedger):
        self.generator = generator
        self.prices = prices
        self.ledger = ledger
        self._prompt_tokens: dict[tuple[str, str, bool], int] = {}  # per model and prompt, as billed
        self._lock = threading.Lock()

    def cost(self, model: str, generation: Generation) -> float:
        return self.prices[model].cost(generation.prompt_tokens, generation.completion_tokens)

    def prompt_bound(self, request: GenerationRequest) -> int:
        """An upper bound on the prompt tokens one call of ``request`` is billed."""
        exact = self.generator.count_prompt_tokens(request)
        if exact is not None:
            return exact
        with self._lock:
            seen = self._prompt_tokens.get(self._prompt_key(request))
        if seen is not None:
            return seen
        text = request.text().encode()
        messages = len(request.messages) if request.messages is not None else 0
        return len(text) + CHAT_OVERHEAD * (messages + 1)

    def worst_case(self, request: GenerationRequest) -> float:
        return self.prices[request.model].cost(self.prompt_bound(request), request.n * request.max_tokens)

    async def generate(self, request: GenerationRequest) -> Generation:
        hit = self.generator.lookup(request)
        if hit is not None:
            self.ledger.add_cached(self.cost(request.model, hit))
            return hit
        reservations = [await self._reserve_when_possible(self.worst_case(request))]

        def extra_call(req: GenerationRequest) -> None:  # a server that ignores n: the prompt is billed again
            reservations.append(self.ledger.reserve(self.prices[req.model].cost(self.prompt_bound(req), 0)))

        try:
            generation = await self.generator.fresh(request, before_extra_call=extra_call)
        except BaseException:
            for reservation in reservations:
                self.ledger.release(reservation)
            raise
        calls = len(reservations)
        with self._lock:
            self._prompt_tokens[self._prompt_key(request)] = max(1, generation.prompt_tokens // calls)
        total = Reservation(sum(r.amount for r in reservations))
        self.ledger.settle(total, self.cost(request.model, generation))
        return generation

    async def _reserve_when_possible(self, amount: float) -> Reservation:
        """Reserve, waiting while other calls hold reservations (they usually cost less than reserved);
        give up only when nothing else is pending and it still does not fit."""
        while True:
            try:
                return self.ledger.reserve(amount)
            except BudgetExhausted:
                if self.ledger.reserved <= 1e-12:
                    raise
            await asyncio.sleep(0.005)

    @staticmethod
    def _prompt_key(request: GenerationRequest) -> tuple[str, str, bool]:
        return request.model, request.text(), request.messages is not None
