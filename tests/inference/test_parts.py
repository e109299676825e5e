"""lmtune infer's parts: metrics against known values, HumanEval's checks, prices, templates, generators, the cache,
budget reservation under concurrency, and the OpenAI-compatible path against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from math import comb

import pytest

from lmtune.errors import InputError
from lmtune.inference.metrics import expected_success, make_instance_metric, pass_at_k, success, vote
from lmtune.inference.prices import PriceTable
from lmtune.inference.spend import BudgetExhausted, MeteredGenerator, SpendLedger
from lmtune.inference.tasks import humaneval_check, load_infer_task
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, GenerationError, GenerationRequest
from lmtune.llm.local import LocalGenerator
from lmtune.llm.openai_compat import OpenAIGenerator
from tests.servers import Server, free_port


@pytest.fixture(scope="module")
def arith():
    return LocalGenerator("arith-lm")


@pytest.fixture(scope="module")
def endpoint(arith):
    from lmtune.llm.server import make_app

    with Server(make_app(arith)) as url:
        yield url


# -- metrics -------------------------------------------------------------------------------------


def reference_pass_at_k(n, c, k):  # the numerically stable form of Chen et al. (2021)
    import numpy as np

    return 1.0 if n - c < k else 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(4, 2, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one
    for n, c, k in [(20, 1, 1), (20, 1, 10), (100, 7, 10), (200, 50, 100)]:
        assert pass_at_k(n, c, k) == pytest.approx(reference_pass_at_k(n, c, k), rel=1e-9)
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_success_expected_success_and_vote():
    assert success([False, True]) == 1.0 and success([False, False]) == 0.0
    assert expected_success([True, False, False, False]) == pytest.approx(1 - 0.75**4)
    assert expected_success([True] * 3) == 1.0 and expected_success([False] * 3) == 0.0
    assert vote(["12", "13", "12"], [True, False, True]) == 1.0
    assert vote(["13", "12", "13"], [False, True, False]) == 0.0
    assert vote(["13", "12"], [False, True]) == 0.0  # a tie goes to the first answer seen
    metric, needs_check = make_instance_metric("pass@2")
    assert needs_check and metric({}, ["a"] * 4, [True, False, False, False], []) == pytest.approx(0.5)
    with pytest.raises(InputError, match="metric"):
        make_instance_metric("accuracy")
    user, needs_check = make_instance_metric("json:dumps")  # any importable function of (instance, responses)
    assert not needs_check
    with pytest.raises(InputError, match="cannot import"):
        make_instance_metric("no_such_module_xyz:f")


# -- HumanEval (the sandbox itself: test_sandbox_escape.py) -------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    task = load_infer_task("humaneval")
    assert len(task.instances) == 164
    metric, _ = make_instance_metric("pass@1")
    for problem in task.instances[:4]:
        good = [humaneval_check(problem, problem["canonical_solution"])] * 2
        bad = [humaneval_check(problem, "    return None\n")] * 2
        assert metric(problem, [], good, []) == 1.0
        assert metric(problem, [], bad, []) == 0.0


# -- prices, tasks, templates ------------------------------------------------------------------------


def test_unknown_model_without_a_price_is_a_clear_error(tmp_path):
    prices = PriceTable.load()
    assert prices["arith-lm"].cost(1000, 1000) == pytest.approx(1.5)
    with pytest.raises(InputError, match="no price for model 'my-model'") as error:
        prices["my-model"]
    assert error.value.field == "prices"
    extra = tmp_path / "p.yaml"
    extra.write_text("my-model: {input: 2, output: 4}\n")
    assert PriceTable.load(extra)["my-model"].cost(500, 250) == pytest.approx(2.0)
    extra.write_text("my-model: 3\n")
    with pytest.raises(InputError, match="expected"):
        PriceTable.load(extra)


def test_malformed_template_is_a_clear_error(tmp_path):
    cases = [("{prompt", "malformed template"), ("Q: {question}", "instances lack"), ("{}", "positional")]
    for template, message in cases:
        with pytest.raises(InputError, match=message) as error:
            load_infer_task("arith-add3", templates=[template], size=10)
        assert error.value.field == "template"
    task_file = tmp_path / "t.jsonl"
    task_file.write_text("\n".join(json.dumps({"q": f"{i}+1=", "answer": str(i + 1)}) for i in range(5)))
    task = load_infer_task(str(task_file), templates=["Q: {q}"])
    assert task.check(task.instances[0], " 1\nmore") and not task.check(task.instances[0], "2")
    with pytest.raises(InputError, match="task"):
        load_infer_task("no-such-task")


# -- generators, cache, budget ----------------------------------------------------------------------


def test_local_generator_bills_prompt_and_completion_tokens(arith):
    greedy = arith.generate_blocking(GenerationRequest(model="arith-lm", prompt="123+456=", n=3, temperature=0))
    assert greedy.texts == ["579"] * 3
    assert greedy.prompt_tokens == 8 and greedy.completion_tokens == 3 * 4  # 3 digits + end token, 3 times
    cut = arith.generate_blocking(GenerationRequest(model="arith-lm", prompt="123+456=", temperature=0, stop=("7",)))
    assert cut.texts == ["5"] and cut.completion_tokens == 2
    short = arith.generate_blocking(GenerationRequest(model="arith-lm", prompt="123+456=", temperature=0,
                                                      max_tokens=2))
    assert short.texts == ["57"] and short.finish_reasons == ["length"]
    a = arith.generate_blocking(GenerationRequest(model="arith-lm", prompt="987+654=", n=8, temperature=2.0, seed=3))
    b = arith.generate_blocking(GenerationRequest(model="arith-lm", prompt="987+654=", n=8, temperature=2.0, seed=3))
    assert a.texts == b.texts and len(set(a.texts)) > 1  # seeded, and temperature really samples


def test_cache_counts_cached_spend_apart(arith, tmp_path):
    ledger = SpendLedger(10.0)
    metered = MeteredGenerator(CachedGenerator(arith, ResponseStore(tmp_path / "c.sqlite")), PriceTable.load(), ledger)
    request = GenerationRequest(model="arith-lm", prompt="111+222=", n=2, temperature=0)
    first = asyncio.run(metered.generate(request))
    assert not first.cached and ledger.spent == pytest.approx((8 * 0.5 + 8 * 1.0) / 1000)
    again = asyncio.run(metered.generate(request))
    assert again.cached and again.texts == first.texts
    assert ledger.spent == pytest.approx(0.012) and ledger.cached == pytest.approx(0.012)
    assert ledger.calls == 1 and ledger.cached_calls == 1


def test_budget_reservation_under_concurrency_never_overshoots(arith):
    budget = 0.5
    ledger = SpendLedger(budget)
    metered = MeteredGenerator(CachedGenerator(arith, None), PriceTable.load(), ledger)

    async def one(i):
        request = GenerationRequest(model="arith-lm", prompt=f"{100 + i}+{200 + i}=", n=4, temperature=1.0,
                                    max_tokens=8, seed=i)
        try:
            await metered.generate(request)
            return "ok"
        except BudgetExhausted:
            return "refused"

    async def many():
        return await asyncio.gather(*(one(i) for i in range(120)))

    outcomes = asyncio.run(many())
    # worst case per call: (8 * 0.5 + 4 * 8 * 1.0) / 1000 = 0.036, so at most 13 calls fit at once
    assert ledger.spent <= budget and ledger.reserved == pytest.approx(0.0, abs=1e-12)
    assert outcomes.count("ok") >= 13 and outcomes.count("refused") > 50
    assert ledger.calls == outcomes.count("ok")
    # the same from many threads at once
    threaded = SpendLedger(1.0)
    done = []

    def grab():
        for _ in range(200):
            try:
                r = threaded.reserve(0.03)
            except BudgetExhausted:
                continue
            time.sleep(0.0005)
            threaded.settle(r, 0.02)
            done.append(1)

    workers = [threading.Thread(target=grab) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert threaded.spent <= 1.0 and len(done) == 49  # 49 * 0.02 + 0.03 > 1.0 stops the 50th


# -- the OpenAI-compatible path, against real HTTP servers on loopback --------------------------------


def test_openai_client_against_lmtune_serve(endpoint):
    loop = BackgroundLoop()
    generator = OpenAIGenerator(endpoint, concurrency=4)
    try:
        loop.run(generator.check())
        request = GenerationRequest(model="arith-lm", prompt="123+456=", n=3, temperature=0, max_tokens=8)
        result = loop.run(generator.generate(request))
        assert result.texts == ["579"] * 3 and result.prompt_tokens == 8 and result.completion_tokens == 12
        chat = GenerationRequest(model="arith-lm", messages=(("user", "200+300="),), n=2, temperature=0.7,
                                 max_tokens=6, stop=("0",), seed=1)
        answer = loop.run(generator.generate(chat))
        assert len(answer.texts) == 2 and all("0" not in t for t in answer.texts)
        with pytest.raises(GenerationError, match="404"):
            loop.run(generator.generate(GenerationRequest(model="gpt-x", prompt="1+1=")))
    finally:
        loop.run(generator.aclose())
        loop.close()


def test_unreachable_endpoint_is_a_clear_error():
    loop = BackgroundLoop()
    generator = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(InputError, match="cannot reach") as error:
            loop.run(generator.check())
        assert error.value.field == "endpoint"
    finally:
        loop.close()
    with pytest.raises(InputError, match="endpoint"):
        OpenAIGenerator("127.0.0.1:8000")


def test_retries_rate_limits_and_fills_n_from_a_server_that_ignores_it():
    """A server that answers 429 twice, then one choice per call whatever n is (like Ollama)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen = []

    async def completions(request):
        body = await request.json()
        seen.append(body)
        if len(seen) <= 2:
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429)
        return JSONResponse({"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "text": f"t{len(seen)}", "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    with Server(app) as url:
        loop = BackgroundLoop()
        generator = OpenAIGenerator(url, backoff=0.01)
        ledger = SpendLedger(1.0)
        prices = PriceTable({"m": PriceTable.load()["arith-lm"]})
        metered = MeteredGenerator(CachedGenerator(generator, None), prices, ledger)
        try:
            result = loop.run(metered.generate(GenerationRequest(model="m", prompt="hello", n=3, max_tokens=4)))
        finally:
            loop.run(generator.aclose())
            loop.close()
    assert result.texts == ["t3", "t4", "t5"] and generator.retries == 2
    assert result.prompt_tokens == 15 and result.completion_tokens == 6  # the prompt is billed on every call
    assert ledger.spent == pytest.approx((15 * 0.5 + 6 * 1.0) / 1000) and ledger.reserved == pytest.approx(0)
