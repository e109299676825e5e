"""The spend journal: reservations written before a call, bills and replies written together, what a later
process counts of calls an earlier one left and interrupted calls (trials whose process died:
tests/runtime/test_orphans.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import optuna
import pytest

from lmtune import attrs
from lmtune.inference.prices import PriceTable
from lmtune.inference.resume import open_journal, spend_account
from lmtune.inference.spend import BudgetExhausted, EndpointMisbehaved, MeteredGenerator, SpendLedger
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, Generation, GenerationError, GenerationRequest, Generator
from lmtune.runtime.loop import sigterm_as_interrupt

PRICES = PriceTable({"m": PriceTable.load()["arith-lm"]})  # $0.5 / $1 per 1K prompt / completion tokens


class Scripted(Generator):
    """A backend that answers with the usage it is given, fails as told, or waits until released."""

    backend_id = "scripted"

    def __init__(self, prompt_tokens=8, completion_tokens=4, error: GenerationError | None = None):
        self.usage = (prompt_tokens, completion_tokens)
        self.error = error
        self.started = threading.Event()
        self.gate: asyncio.Event | None = None

    async def generate(self, request, *, before_extra_call=None):
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return Generation(texts=["1"] * request.n, prompt_tokens=self.usage[0], completion_tokens=self.usage[1])


def request(prompt="12+30=", n=2, max_tokens=4) -> GenerationRequest:
    return GenerationRequest(model="m", prompt=prompt, n=n, max_tokens=max_tokens)


def test_a_later_process_counts_what_an_earlier_one_reserved_billed_or_gave_up(tmp_path):
    path = tmp_path / "responses.sqlite"
    first = SpendLedger(1.0, journal=ResponseStore(path).journal, account="a")
    open_call = first.reserve(0.3)  # the process dies with this call in flight
    billed = first.reserve(0.2)
    first.settle(billed, 0.05, reply=("k", Generation(texts=["x"], prompt_tokens=1, completion_tokens=1)))
    refused = first.reserve(0.1)
    first.release(refused)
    lost = first.reserve(0.1)
    first.give_up([lost])
    later = SpendLedger(1.0, journal=ResponseStore(path).journal, account="a")  # another process, same file
    assert later.spent == pytest.approx(0.3 + 0.05 + 0.1) and later.unsettled == pytest.approx(0.4)
    assert later.journal.store.get("k").texts == ["x"]  # the reply was stored with its bill
    assert SpendLedger(1.0, journal=ResponseStore(path).journal, account="b").spent == 0.0  # accounts are apart
    later.reserve(0.5)
    with pytest.raises(BudgetExhausted, match="does not fit"):
        later.reserve(0.1)  # 0.45 + 0.5 + 0.1 > 1
    assert open_call.amount == 0.3


def test_usage_within_the_request_is_billed_and_the_reply_stored_with_its_bill(tmp_path):
    cache = ResponseStore(tmp_path / "c.sqlite")
    ledger = SpendLedger(10.0, journal=cache.journal, account="a")
    metered = MeteredGenerator(CachedGenerator(Scripted(7, 5), cache), PRICES, ledger)
    asked = request(prompt="100+200=")
    got = asyncio.run(metered.generate(asked))
    stored = cache.get(metered.generator.key(asked))
    assert (got.prompt_tokens, got.completion_tokens) == (stored.prompt_tokens, stored.completion_tokens) == (7, 5)
    assert ledger.spent == pytest.approx(PRICES["m"].cost(7, 5)) and ledger.reserved == 0.0
    assert metered.misbehaved is None


@pytest.mark.parametrize(("usage", "why"), [((-50, -3), "reported negative usage"),
                                            ((8, 2 * 4 * 50), "reported usage above what the request allows"),
                                            ((10**6, 1), "reported usage above what the request allows")])
def test_usage_a_request_cannot_bill_is_counted_as_claimed_and_no_further_call_is_made(tmp_path, usage, why):
    cache = ResponseStore(tmp_path / "c.sqlite")
    ledger = SpendLedger(10.0, journal=cache.journal, account="a")
    backend = Scripted(*usage)
    metered = MeteredGenerator(CachedGenerator(backend, cache), PRICES, ledger)
    asked = request(prompt="100+200=")  # n 2 x max_tokens 4; prompt bound: one token per byte plus overhead
    worst = PRICES["m"].cost(len("100+200=") + 16, 2 * 4)
    with pytest.raises(EndpointMisbehaved, match=why):
        asyncio.run(metered.generate(asked))
    claimed = PRICES["m"].cost(max(usage[0], 0), max(usage[1], 0))
    assert ledger.spent == pytest.approx(max(claimed, worst)) and ledger.reserved == 0.0  # never less than claimed
    assert cache.get(metered.generator.key(asked)) is None  # a reply with a bill that cannot be trusted is not kept
    backend.started.clear()
    with pytest.raises(EndpointMisbehaved, match=why):
        asyncio.run(metered.generate(request(prompt="1+2=")))
    assert not backend.started.is_set() and ledger.spent == pytest.approx(max(claimed, worst))


@pytest.mark.parametrize(("error", "counted"), [(GenerationError("HTTP 400"), False),
                                                (GenerationError("HTML page", maybe_billed=True), True)])
def test_a_failed_call_is_released_unless_it_may_have_been_billed(error, counted):
    ledger = SpendLedger(1.0)
    metered = MeteredGenerator(CachedGenerator(Scripted(error=error), None), PRICES, ledger)
    with pytest.raises(GenerationError):
        asyncio.run(metered.generate(request()))
    worst = PRICES["m"].cost(6 + 16, 2 * 4)
    assert ledger.spent == pytest.approx(worst if counted else 0.0) and ledger.reserved == 0.0


@pytest.mark.parametrize("answers", [True, False], ids=["answers-while-draining", "never-answers"])
def test_an_interrupt_lets_calls_in_flight_finish_or_gives_them_up_and_starts_no_new_one(answers):
    loop, ledger = BackgroundLoop(drain=0.5), SpendLedger(1.0)
    backend = Scripted()
    backend.gate = asyncio.Event()  # the call hangs until the gate opens
    metered = MeteredGenerator(CachedGenerator(backend, None), PRICES, ledger, concurrency=1, stop=loop.stopping)

    def interrupt():
        if backend.started.wait(5):
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            if answers:
                time.sleep(0.1)
                loop.loop.call_soon_threadsafe(backend.gate.set)

    async def two_calls():
        return await asyncio.gather(metered.generate(request()), metered.generate(request(prompt="1+1=")))

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():  # as in run_trials and tune_inference
            loop.run(two_calls())
        interrupter.join()
        # the call in flight is billed (answered while draining) or kept at its worst case (given up); the one
        # waiting for its turn was never made
        billed = PRICES["m"].cost(8, 4) if answers else PRICES["m"].cost(6 + 16, 2 * 4)
        assert ledger.spent == pytest.approx(billed) and ledger.calls == 1 and ledger.reserved == 0.0
        assert ledger.unsettled == pytest.approx(0.0 if answers else billed)
    finally:
        loop.close()
    assert not loop.thread.is_alive()


def test_a_study_keeps_its_journal_and_opens_its_account_from_its_trials(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    trial = study.ask()  # a study from before journals: spend only in its trials
    trial.set_user_attr(attrs.SPEND, 0.25)
    study.tell(trial, 1.0)
    cache = ResponseStore(tmp_path / "out" / "responses.sqlite")
    journal = open_journal(study, cache, tmp_path / "out")
    account = spend_account(study, journal, study.trials)
    assert journal is cache.journal and SpendLedger(1.0, journal=journal, account=account).spent == pytest.approx(0.25)
    # a rerun with --cache none and another output folder still finds the same journal and account
    again = open_journal(study, None, tmp_path / "elsewhere")
    assert again.store.path == cache.path and spend_account(study, again, study.trials) == account
    assert SpendLedger(1.0, journal=again, account=account).spent == pytest.approx(0.25)
