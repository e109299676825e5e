"""Spending that never passes the optimization budget, whatever kills the process: every call's worst case is
written down before the call, and replaced by the billed cost when the reply is stored.

The worst case of a call is its prompt (counted exactly by local models, else as one token per UTF-8 byte plus
chat overhead until the server has told us the count for that model and prompt) plus ``n * max_tokens``
completion tokens. A call is made only when everything the study's account holds (billed calls, calls in
flight here or in another process, calls a dead process left open) plus this reservation fits in the budget.
The account lives in the spend journal of the response store's SQLite file (``lmtune.llm.cache``): the
reservation is committed before the call, and the bill and the reply are committed together after it. So a
process killed at any moment leaves every call that may have been billed counted, at its billed cost or at its
worst case; the next run starts from that total (docs/benchmarks.md measures what FLAML and earlier lmtune overshot).

A server that reports usage a request cannot bill (completion tokens above ``n * max_tokens``, prompt tokens
above the prompt bound, or a negative count) is misbehaving: whatever it billed, it may bill again, so no
further call is made (``EndpointMisbehaved``) and the call counts what the server claimed, or its worst case
when the claim is negative, never less: a budget kept by lowering a server's bill would not be kept.

A call that fails may still have been billed when the server answered something unusable or too late
(``GenerationError.maybe_billed``), or when the process gave up on it (an interrupt): it keeps its worst case.
A call the server refused with an error status is released.

Answers from the response cache cost nothing now: they were paid when first asked (that bill is in the
account that asked), and are counted here as cached spend, apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass

from lmtune.inference.prices import PriceTable
from lmtune.llm.cache import CachedGenerator, ResponseStore, SpendJournal
from lmtune.llm.generation import Generation, GenerationError, GenerationRequest, Stopped
from lmtune.runtime.loop import worker_id

#: Tokens a chat template may add per message and per request, on top of one token per byte of content.
CHAT_OVERHEAD = 16

log = logging.getLogger(__name__)


class BudgetExhausted(RuntimeError):
    """The next call's worst-case cost does not fit in what is left of the optimization budget."""


class EndpointMisbehaved(GenerationError):
    """The endpoint reported usage that a request cannot bill: the search stops rather than trust its bills."""


@dataclass(frozen=True)
class Reservation:
    call: int  # the call's row in the journal
    amount: float


class SpendLedger:
    """One account of the spend journal against an optional budget (thread-safe; processes sharing the journal
    file share the account's budget).

    ``spent`` is everything the account counts except this process's calls in flight (``reserved``);
    ``unsettled`` is the part of ``spent`` whose bill is unknown (calls a dead or interrupted process left,
    counted at their worst case). ``session`` is what this process has spent; ``cached``, ``calls`` and
    ``cached_calls`` count this process's calls (``cached`` starts from ``cached``).
    """

    def __init__(self, budget: float | None = None, *, journal: SpendJournal | None = None,
                 account: str = "default", cached: float = 0.0):
        self.budget = budget
        self.journal = journal if journal is not None else ResponseStore(":memory:").journal
        self.account = account
        self.cached = cached
        self.session = 0.0
        self.reserved = 0.0
        self.calls = 0
        self.cached_calls = 0
        self.refused = 0
        self._estimate = 0.0  # the account's total as last seen, with this process's changes since
        self._lock = threading.Lock()
        self._worker = worker_id()

    @property
    def total(self) -> float:
        return self.journal.total(self.account)[0]

    @property
    def spent(self) -> float:
        return self.total - self.reserved

    @property
    def unsettled(self) -> float:
        return max(0.0, self.journal.total(self.account)[1] - self.reserved)

    def _unreserve(self, amount: float) -> None:
        self.reserved -= amount
        if self.reserved < 1e-12:  # no float drift around zero
            self.reserved = 0.0

    @property
    def left(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.total

    def reserve(self, amount: float) -> Reservation:
        with self._lock:
            busy = self.reserved > 0
            if self.budget is not None and busy and self._estimate + amount > self.budget:
                self.refused += 1  # surely does not fit now: no need to ask the journal
                raise BudgetExhausted(self._refusal(amount, self._estimate))
            call, before = self.journal.reserve(self.account, amount, self.budget, self._worker)
            if call is None:
                self._estimate = before
                self.refused += 1
                raise BudgetExhausted(self._refusal(amount, before))
            self._estimate = before + amount
            self.reserved += amount
            return Reservation(call, amount)

    def _refusal(self, amount: float, total: float) -> str:
        return (f"a call that may cost {amount:.6g} does not fit: {total - self.reserved:.6g} spent and "
                f"{self.reserved:.6g} reserved of {self.budget:.6g}")

    def settle(self, reservation: Reservation | list[Reservation], cost: float,
               reply: tuple[str, Generation] | None = None, *, claimed: bool = False) -> None:
        """Replace reservations by the billed cost and store ``reply`` (key, generation) in the journal's response
        store in the same transaction. The cost is at most what was reserved (the bound is a worst case) unless
        ``claimed``: what a misbehaving server says it billed, counted as it says."""
        reservations = reservation if isinstance(reservation, list) else [reservation]
        amount = sum(r.amount for r in reservations)
        cost = max(cost, 0.0) if claimed else min(max(cost, 0.0), amount)
        self.journal.settle([r.call for r in reservations], cost, reply)
        with self._lock:
            self._unreserve(amount)
            self._estimate += cost - amount
            self.session += cost
            self.calls += 1

    def give_up(self, reservations: list[Reservation]) -> None:
        """Calls that may have been billed, bill unknown: they stay counted at their worst case."""
        if not reservations:
            return
        self.journal.give_up([r.call for r in reservations])
        with self._lock:
            amount = sum(r.amount for r in reservations)
            self._unreserve(amount)
            self.session += amount
            self.calls += 1

    def release(self, reservations: Reservation | list[Reservation]) -> None:
        """Calls the server refused: nothing was billed (rate limits and error statuses are not)."""
        reservations = reservations if isinstance(reservations, list) else [reservations]
        if not reservations:
            return
        self.journal.release([r.call for r in reservations])
        with self._lock:
            amount = sum(r.amount for r in reservations)
            self._unreserve(amount)
            self._estimate -= amount

    def add_cached(self, cost: float) -> None:
        with self._lock:
            self.cached += cost
            self.cached_calls += 1


class MeteredGenerator:
    """A cached generator whose every fresh call is priced and reserved in a ledger first.

    ``concurrency`` limits the calls this generator has in flight; a call waiting for its turn holds no
    reservation, so an interrupt leaves only calls that were really made counted at their worst case. Once
    ``stop`` is set (``BackgroundLoop.stopping``: an interrupt), no new call is made (``Stopped``); once the
    endpoint has reported usage its request cannot bill (``misbehaved`` says how), none either
    (``EndpointMisbehaved``).
    """

    def __init__(self, generator: CachedGenerator, prices: PriceTable, ledger: SpendLedger, *,
                 concurrency: int | None = None, stop: threading.Event | None = None):
        self.generator = generator
        self.prices = prices
        self.ledger = ledger
        self.concurrency = concurrency
        self.stop = stop
        self._slots: asyncio.Semaphore | None = None
        self._prompt_tokens: dict[tuple[str, str, bool], int] = {}  # per model and prompt, as billed
        self._lock = threading.Lock()
        self.misbehaved: str | None = None  # the first usage report outside what its request could bill

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
        if self.concurrency is not None and self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)  # made in the loop that uses it
        async with self._slots or contextlib.nullcontext():
            return await self._fresh(request)

    async def _fresh(self, request: GenerationRequest) -> Generation:
        self._check_stop()
        price = self.prices[request.model]
        bound = self.prompt_bound(request)
        caps = [bound, request.n * request.max_tokens]  # tokens the calls may bill, as reserved
        reservations = [await self._reserve_when_possible(price.cost(*caps))]

        def extra_call(req: GenerationRequest, completions: int) -> None:  # another call: reserve it too
            extra = [self.prompt_bound(req), completions * req.max_tokens]
            reservations.append(self.ledger.reserve(price.cost(*extra)))
            caps[0] += extra[0]
            caps[1] += extra[1]

        try:
            generation = await self.generator.fresh(request, before_extra_call=extra_call, keep=False)
        except GenerationError as exc:
            if exc.maybe_billed or len(reservations) > 1:
                self.ledger.give_up(reservations)
            else:
                self.ledger.release(reservations)
            raise
        except BaseException:  # interrupted, or no budget for an extra call: what was sent may be billed
            self.ledger.give_up(reservations)
            raise
        misreport = self._misreport(request, generation, caps)
        if misreport is not None:
            self._distrust(request, generation, reservations, misreport)
        if generation.prompt_tokens > 0:  # learn the server's own count
            with self._lock:
                self._prompt_tokens[self._prompt_key(request)] = -(-generation.prompt_tokens // len(reservations))
        store = self.generator.store
        reply = (self.generator.key(request), generation) if store is not None else None
        same_file = store is not None and store is self.ledger.journal.store
        self.ledger.settle(reservations, self.cost(request.model, generation), reply if same_file else None)
        if reply is not None and not same_file:
            store.put(*reply)  # after the bill: a kill between them asks again and pays again, counted
        return generation

    @staticmethod
    def _misreport(request: GenerationRequest, generation: Generation, caps: list[int]) -> str | None:
        """How the reported usage lies outside what the calls could bill (``caps``: prompt and completion
        tokens), or None when it does not."""
        prompt, completion = generation.prompt_tokens, generation.completion_tokens
        if prompt < 0 or completion < 0:
            return f"reported negative usage ({prompt} prompt tokens, {completion} completion tokens)"
        if prompt > caps[0] or completion > caps[1]:
            return (f"reported usage above what the request allows ({prompt} prompt tokens of at most {caps[0]}, "
                    f"{completion} completion tokens of at most {caps[1]}, n {request.n} x max_tokens "
                    f"{request.max_tokens})")
        return None

    def _distrust(self, request: GenerationRequest, generation: Generation, reservations: list[Reservation],
                  misreport: str) -> None:
        """Count a misreported call at what the server claimed (its worst case if the claim is negative or
        lower), make no further call, and raise ``EndpointMisbehaved``."""
        claimed = self.prices[request.model].cost(max(generation.prompt_tokens, 0),
                                                  max(generation.completion_tokens, 0))
        counted = max(claimed, sum(r.amount for r in reservations))
        self.ledger.settle(reservations, counted, claimed=True)
        message = (f"{request.model} {misreport}; lmtune counted {counted:.6g} for that call (what the server claimed, "
                   "or the call's worst case if more) and made no further call: an endpoint that misreports usage "
                   "cannot be trusted with the budget")
        with self._lock:
            if self.misbehaved is None:
                self.misbehaved = message
                log.warning(message)
        raise EndpointMisbehaved(message, maybe_billed=True)

    async def _reserve_when_possible(self, amount: float) -> Reservation:
        """Reserve, waiting while this process's other calls hold reservations (they usually cost less than
        reserved); give up only when none is pending and it still does not fit."""
        while True:
            try:
                return self.ledger.reserve(amount)
            except BudgetExhausted:
                if self.ledger.reserved <= 1e-12:
                    raise
            await asyncio.sleep(0.005)
            self._check_stop()

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped("interrupted: no new calls")
        if self.misbehaved is not None:
            raise EndpointMisbehaved(self.misbehaved)

    @staticmethod
    def _prompt_key(request: GenerationRequest) -> tuple[str, str, bool]:
        return request.model, request.text(), request.messages is not None
