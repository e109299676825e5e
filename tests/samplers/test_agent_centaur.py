"""The agent as a bounded advisor (centaur mode) against a real HTTP server on 127.0.0.1 that follows a script:
override every proposal with a valid config no trial holds, keep every proposal, or answer with a reason without
words or with no JSON at all. The bound, the stored overrides, ``lmtune status``, the report, and a server that
stops in the middle of a study."""

from __future__ import annotations

import json
import logging
import math
import re

import optuna
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.report.page import build_page
from lmtune.runtime.loop import run_trials
from lmtune.runtime.status import format_status, study_status
from lmtune.runtime.synthetic import sleepy_quadratic
from lmtune.samplers.agent import CentaurSampler
from lmtune.samplers.registry import DEFAULT_SAMPLER, make_sampler
from lmtune.space import config_key, load_space
from tests.servers import Server

SPACE = load_space("lora-small")
NAMES = [p.name for p in SPACE.params]


@pytest.fixture(autouse=True)
def instant_objective(monkeypatch):
    monkeypatch.setenv("LMTUNE_SYNTHETIC_SECONDS", "0")


class Advisor:
    """An OpenAI-compatible app whose Advisor replies (requests with a response_format) follow ``mode``:
    ``override`` (the first config of the pool that no trial holds, with a reason), ``keep`` (the proposal),
    ``comma`` (an override whose reason is ","), ``garbage`` (no JSON)."""

    def __init__(self, mode: str = "override"):
        self.mode = mode
        self.tried: set[str] = set()  # configs of finished trials, recorded by the objective
        self.proposals: list[dict] = []
        self.replies: list[dict] = []
        self.requests: list[dict] = []

    def objective(self):
        score = sleepy_quadratic(SPACE)

        def objective(trial: optuna.Trial) -> float:
            value = score(trial)
            self.tried.add(config_key({n: trial.params[n] for n in NAMES}))
            return value

        return objective

    def reply(self, prompt: str) -> str:
        proposal = json.loads(re.search(r"proposes to evaluate next: (\{.*\})", prompt).group(1))
        self.proposals.append(proposal)
        if self.mode == "garbage":
            return "<html>I would rather not</html>"
        if self.mode == "keep":
            return json.dumps({"reason": "The optimizer's proposal is sound.", "config": proposal})
        held = self.tried | {config_key(proposal)}
        config = next({n: c[n] for n in NAMES} for c in SPACE.iter_pool()
                      if config_key({n: c[n] for n in NAMES}) not in held)
        reason = "," if self.mode == "comma" else f"Reply {len(self.replies)}: rank {config['rank']} is untried."
        self.replies.append({"reason": reason, "config": config})
        return json.dumps({"reason": reason, "config": config})

    def app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                             "owned_by": "test"}]})

        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            text = "The learning rate matters most."
            if body.get("response_format") is not None:
                text = self.reply(body["messages"][-1]["content"])
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def advisor():
    server = Advisor()
    with Server(server.app()) as url:
        yield server, url


def sources(study: optuna.Study) -> list[str]:
    return [t.user_attrs[attrs.AGENT_SOURCE] for t in study.trials]


def test_centaur_overrides_at_most_its_share_at_every_point_and_stores_each_override_with_its_reason(
        advisor, tmp_path):
    server, url = advisor
    storage = f"sqlite:///{tmp_path / 'centaur.db'}"
    sampler = make_sampler("agent", seed=0, n_startup_trials=5, space=SPACE, endpoint=url, model="m")
    assert isinstance(sampler, CentaurSampler)  # the default mode
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize", sampler=sampler)
    run_trials(study, server.objective(), 30)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 30
    assert len({config_key(t.params) for t in study.trials}) == 30
    overridden = [source == "override" for source in sources(study)]
    assert all(sum(overridden[:n]) <= math.floor(0.3 * n) for n in range(1, 31))
    # the server overrides whenever it is asked, and it is asked only while the bound leaves room
    assert sum(overridden) == 9 and len(server.replies) == 9
    overrides = [t for t in study.trials if t.user_attrs[attrs.AGENT_SOURCE] == "override"]
    assert [t.params for t in overrides] == [r["config"] for r in server.replies]
    assert [t.user_attrs[attrs.AGENT_REASON] for t in overrides] == [r["reason"] for r in server.replies]
    assert [t.user_attrs[attrs.AGENT_PROPOSAL] for t in overrides] == server.proposals
    assert all(t.user_attrs[attrs.AGENT_PROPOSAL] != t.params for t in overrides)
    rest = [t for t in study.trials[5:] if t.user_attrs[attrs.AGENT_SOURCE] == "base"]
    assert len(rest) == 16 and {t.user_attrs[attrs.AGENT_ADVICE] for t in rest} == {"share used"}

    status = study_status(study="c", storage=storage)
    assert status.advisor["overrides"] == 9 and status.advisor["asked"] == 9 and status.agent is None
    text = format_status(status)
    assert "agent (centaur): 9 of 30 trials overridden (30%); asked on 9" in text
    assert f"override trial {overrides[-1].number}: {server.replies[-1]['reason']}" in text
    page, _ = build_page(study)
    assert "Agent overrides" in page and all(r["reason"] in page for r in server.replies)


@pytest.mark.parametrize("mode, advice", [("keep", "kept"), ("comma", "refused"), ("garbage", "refused"),
                                          (None, "share used")])
def test_a_model_that_gives_no_usable_override_leaves_the_default_samplers_study_as_it_is(advisor, mode, advice):
    """Keeping every proposal, a reason without words, replies that are not JSON, a share of 0: no trial is
    overridden, and the study is the one the registry's default sampler makes alone, draw for draw."""
    server, url = advisor
    server.mode = mode or "override"
    share = 0.0 if mode is None else 0.3
    centaur = optuna.create_study(direction="maximize", sampler=make_sampler(
        "agent", seed=3, n_startup_trials=5, space=SPACE, endpoint=url, model="m", override_share=share))
    run_trials(centaur, server.objective(), 20)
    alone = optuna.create_study(direction="maximize",
                                sampler=make_sampler(DEFAULT_SAMPLER, seed=3, n_startup_trials=5, space=SPACE))
    run_trials(alone, server.objective(), 20)
    assert [t.params for t in centaur.trials] == [t.params for t in alone.trials]
    assert sources(centaur) == ["startup"] * 5 + ["base"] * 15
    assert {t.user_attrs[attrs.AGENT_ADVICE] for t in centaur.trials[5:]} == {advice}
    assert len(server.proposals) == (0 if mode is None else 15)
    if mode == "comma":
        assert "has no words" in centaur.trials[5].user_attrs[attrs.AGENT_ERRORS][0]
        assert attrs.AGENT_REASON not in centaur.trials[5].user_attrs


def test_centaur_goes_on_with_the_classical_sampler_when_the_endpoint_stops_mid_study(tmp_path, caplog):
    server = Advisor("override")
    storage = f"sqlite:///{tmp_path / 'stops.db'}"
    serving = Server(server.app())
    url = serving.__enter__()
    sampler = make_sampler("agent", seed=0, n_startup_trials=5, space=SPACE, endpoint=url, model="m", timeout=2.0)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", sampler=sampler)
    run_trials(study, server.objective(), 12)
    serving.__exit__(None, None, None)
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        run_trials(study, server.objective(), 40)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 40
    assert len({config_key(t.params) for t in study.trials}) == 40
    assert sources(study)[12:] == ["base"] * 28
    advice = [t.user_attrs[attrs.AGENT_ADVICE] for t in study.trials[12:]]
    failing = advice[advice.index("endpoint failed"):]  # before it, the share may still be used up
    assert set(failing) == {"endpoint failed", "endpoint skipped"}  # nothing overridden any more: room stays
    assert failing[:8] == ["endpoint failed"] * 3 + ["endpoint skipped"] * 5  # 3 failures in a row, 5 left alone
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("lmtune") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "endpoint failed" in warnings[0], warnings
    text = format_status(study_status(study="s", storage=storage))
    assert f"{advice.count('endpoint failed')} endpoint failed" in text
    assert f"endpoint skipped on {advice.count('endpoint skipped')}" in text


def test_centaur_refuses_a_share_outside_0_1_and_no_room_for_a_reason(advisor):
    _, url = advisor
    for share in (-0.1, 1.5):
        with pytest.raises(InputError) as error:
            make_sampler("agent", space=SPACE, endpoint=url, model="m", override_share=share)
        assert error.value.field == "agent_override_share"
    with pytest.raises(InputError) as error:
        make_sampler("agent", space=SPACE, endpoint=url, model="m", reason_chars=0)
    assert error.value.field == "agent_reason_chars"
    with pytest.raises(InputError) as error:
        make_sampler("agent", space=SPACE, endpoint=url, model="m", mode="boss")
    assert error.value.field == "agent_mode"
    assert make_sampler("agent", space=SPACE, endpoint=url, model="m", mode="lead", reason_chars=0)
