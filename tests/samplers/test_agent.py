"""AgentSampler in lead mode against real HTTP servers on 127.0.0.1: ``lmtune serve`` with the tiny agent-lm
(constrained decoding on), and a small server that misbehaves on purpose (invalid JSON, values outside the space,
HTTP 500, an unreadable body, a hang). The centaur mode: ``test_agent_centaur.py``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import optuna
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.runtime.loop import run_trials
from lmtune.runtime.status import format_status, study_status
from lmtune.runtime.synthetic import sleepy_quadratic
from lmtune.samplers.agent import Prompts
from lmtune.samplers.registry import make_sampler
from lmtune.space import load_space
from tests.conftest import AGENT_TEST_OPTIONS
from tests.servers import Server, free_port

SPACE = load_space("lora-small")


@pytest.fixture(autouse=True)
def instant_objective(monkeypatch):
    monkeypatch.setenv("LMTUNE_SYNTHETIC_SECONDS", "0")


def configs(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def test_thirty_trials_on_lora_small_from_lmtune_serve_parse_lie_in_the_space_and_never_repeat(agent_endpoint):
    sampler = make_sampler("agent", mode="lead", seed=0, n_startup_trials=5, space=SPACE, endpoint=agent_endpoint,
                           **AGENT_TEST_OPTIONS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    run_trials(study, sleepy_quadratic(SPACE), 30)
    assert len(study.trials) == 30 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(SPACE.validate({**t.params, **SPACE.fixed}) for t in study.trials)
    assert len(set(configs(study))) == 30
    asked = [t for t in study.trials if t.user_attrs[attrs.AGENT_SOURCE] in ("agent", "fallback")]
    assert len(asked) == 25
    errors = [e for t in asked for e in t.user_attrs[attrs.AGENT_ERRORS]]
    # constrained decoding: no reply was unparseable or outside the space; only repeats of held configs are refused
    assert all("no trial holds" in e for e in errors), errors
    assert sum(t.user_attrs[attrs.AGENT_SOURCE] == "agent" for t in asked) >= 20
    assert all(t.user_attrs[attrs.AGENT_PROMPT_TOKENS] > 500 and t.user_attrs[attrs.AGENT_REPLY_TOKENS] > 0
               for t in asked)


# -- a server that misbehaves ---------------------------------------------------------------------------------

class Misbehaving:
    """An OpenAI-compatible app whose Optimizer replies (requests with a response_format) fail as told."""

    def __init__(self):
        self.mode = "invalid"
        self.requests: list[dict] = []

    def app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                             "owned_by": "test"}]})

        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            optimizer = body.get("response_format") is not None
            if self.mode == "http500":
                return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
            if self.mode == "hang":
                await asyncio.sleep(3)
            if self.mode == "unreadable" and optimizer:
                return PlainTextResponse("<html>not json</html>")
            text = "The learning rate matters most."
            if optimizer:
                text = {"invalid": '{"reason": "x", "config": {"rank": 8,',
                        "outside": json.dumps({"reason": "x", "config": {"rank": 7, "alpha_ratio": 1.0,
                                                                         "batch_size": 8, "learning_rate": 1e-3,
                                                                         "dropout": 0.0}}),
                        "repeat": json.dumps({"reason": "x", "config": {"rank": 8, "alpha_ratio": 1.0,
                                                                        "batch_size": 8, "learning_rate": 1e-3,
                                                                        "dropout": 0.0}})}[self.mode]
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

        return Starlette(routes=[Route("/v1/models", models),
                                 Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def misbehaving():
    server = Misbehaving()
    with Server(server.app()) as url:
        yield server, url


@pytest.mark.parametrize("mode, reason", [("invalid", "not JSON"), ("outside", "rank=7 is not in the space"),
                                          ("repeat", "was already tried"), ("http500", "analyzer call failed"),
                                          ("unreadable", "optimizer call failed"), ("hang", "analyzer call failed")])
def test_bad_replies_end_in_bounded_retries_and_a_logged_tpe_fallback(misbehaving, mode, reason, tmp_path, caplog):
    server, url = misbehaving
    server.mode, server.requests = mode, []
    storage = f"sqlite:///{tmp_path / 'agent.db'}"
    sampler = make_sampler("agent", mode="lead", seed=0, n_startup_trials=2, space=SPACE, endpoint=url, model="m",
                           timeout=0.5)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", sampler=sampler)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        run_trials(study, sleepy_quadratic(SPACE), 8)
    assert time.monotonic() - started < 60
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8 and len(set(configs(study))) == 8
    asked = study.trials[2:]
    if mode == "repeat":  # the first asked trial takes the repeated config; every later reply is refused
        assert asked[0].user_attrs[attrs.AGENT_SOURCE] == "agent"
        asked = asked[1:]
    assert all(t.user_attrs[attrs.AGENT_FELL_BACK] for t in asked)
    assert reason in asked[0].user_attrs[attrs.AGENT_FALLBACK_REASON], asked[0].user_attrs
    assert "fell back to TPE" in caplog.text
    assert sum("fell back to TPE" in r.getMessage() for r in caplog.records) == 1  # the first; then one per 10
    if mode in ("invalid", "outside", "repeat"):  # 1 + 2 retries, each with the error fed back
        assert all(t.user_attrs[attrs.AGENT_RETRIES] == 3 for t in asked)
        optimizer = [r for r in server.requests if r.get("response_format")]
        assert len(optimizer) == 3 * len(asked) + (mode == "repeat")
        assert "That reply was rejected" in optimizer[1 + (mode == "repeat")]["messages"][-1]["content"]
        assert optimizer[0]["response_format"]["json_schema"]["schema"]["properties"]["config"]["required"] == [
            p.name for p in SPACE.params]
    if mode in ("http500", "hang"):  # after 3 trials in a row, the endpoint is left alone for 5 trials
        assert sum("endpoint skipped" in t.user_attrs[attrs.AGENT_FALLBACK_REASON] for t in asked) == 3
        assert len(server.requests) <= 3 * 2  # each failed trial: one call, retried once by the client
    status = study_status(study="s", storage=storage)
    assert status.agent["suggestions"] == 6 and status.agent["fell_back"] == len(asked)
    assert f"{len(asked)} of 6 suggestions fell back to TPE" in format_status(status)


def test_fallbacks_are_logged_once_then_one_line_per_ten_and_proposals_are_unchanged(misbehaving, caplog):
    server, url = misbehaving
    server.mode = "invalid"
    sampler = make_sampler("agent", mode="lead", seed=0, n_startup_trials=2, space=SPACE, endpoint=url, model="m",
                           retries=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        run_trials(study, sleepy_quadratic(SPACE), 27)
    assert all(t.user_attrs[attrs.AGENT_FELL_BACK] for t in study.trials[2:])
    lines = [r.getMessage() for r in caplog.records if "fell back to TPE" in r.getMessage()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("trial 2: the agent fell back to TPE: no usable config after 1 replies")
    assert lines[1].startswith("the agent fell back to TPE on 10 more trials (3 to 12; 11 in all)")
    assert lines[2].startswith("the agent fell back to TPE on 10 more trials (13 to 22; 21 in all)")
    # what TPE proposes after a fallback is what the registry's TPE alone proposes with the same seed
    alone = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed=0, n_startup_trials=2,
                                                                           space=SPACE))
    run_trials(alone, sleepy_quadratic(SPACE), 27)
    assert configs(study) == configs(alone)


def test_an_unreachable_endpoint_or_unknown_model_is_an_input_error_at_once(misbehaving):
    with pytest.raises(InputError) as error:
        make_sampler("agent", space=SPACE, endpoint=f"http://127.0.0.1:{free_port()}/v1", model="m")
    assert error.value.field == "endpoint"
    with pytest.raises(InputError) as error:
        make_sampler("agent", space=SPACE, endpoint=misbehaving[1], model="qwen")
    assert error.value.field == "agent_model" and "it serves: m" in error.value.message
    with pytest.raises(InputError) as error:
        make_sampler("agent", space=SPACE, model="m")
    assert error.value.field == "endpoint"


def test_cli_lora_with_an_unreachable_endpoint_exits_2_before_any_trial(tmp_path):
    db = tmp_path / "s.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "lmtune.cli", "lora", "--sampler", "agent", "--endpoint",
                          f"http://127.0.0.1:{free_port()}/v1", "--agent-model", "m", "--storage", f"sqlite:///{db}",
                          "--output-dir", str(tmp_path / "out"), "--trials", "2"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: endpoint: cannot reach")
    assert not db.exists() and not (tmp_path / "out").exists()


def test_prompt_folders_replace_built_in_templates_and_typos_are_refused(tmp_path, misbehaving):
    (tmp_path / "analyzer.txt").write_text("Custom analyst. $goal\n$report")
    server, url = misbehaving
    server.mode, server.requests = "invalid", []
    sampler = make_sampler("agent", mode="lead", seed=0, n_startup_trials=1, space=SPACE, endpoint=url, model="m",
                           prompts=str(tmp_path), retries=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    run_trials(study, sleepy_quadratic(SPACE), 2)
    analyzer = next(r for r in server.requests if not r.get("response_format"))
    assert analyzer["messages"][1]["content"].startswith("Custom analyst. maximize value\nGoal: maximize value.")
    (tmp_path / "optimizer.txt").write_text("Propose $config_now")
    with pytest.raises(InputError, match=r"optimizer.txt uses \$config_now"):
        Prompts.load(tmp_path)
    (tmp_path / "optimizer.txt").unlink()
    (tmp_path / "analyser.txt").write_text("typo")
    with pytest.raises(InputError, match="analyser.txt is not a prompt"):
        Prompts.load(tmp_path)


def test_a_worker_rebuilds_the_agent_sampler_from_the_study_job(misbehaving, tmp_path):
    from lmtune.lora.config import LoraRunConfig
    from lmtune.lora.search import job_config
    from lmtune.lora.tune import worker_parts
    from lmtune.samplers.agent import AgentSampler, CentaurSampler

    (tmp_path / "retry.txt").write_text("Rejected: $error")
    job = job_config(LoraRunConfig(sampler="agent", endpoint=misbehaving[1], agent_model="m", agent_temperature=0.5,
                                   agent_prompts=str(tmp_path), agent_override_share=0.2))
    assert json.loads(json.dumps(job))["agent_model"] == "m"  # the job is stored as JSON in the study
    parts = worker_parts(job, space=SPACE, objective=False)
    assert isinstance(parts.sampler, AgentSampler)
    assert (parts.sampler.endpoint, parts.sampler.model, parts.sampler.temperature) == (misbehaving[1], "m", 0.5)
    assert parts.sampler.prompts.render("retry", error="x") == "Rejected: x"
    assert isinstance(parts.sampler, CentaurSampler) and parts.sampler.override_share == 0.2
    lead = worker_parts(job_config(LoraRunConfig(sampler="agent", endpoint=misbehaving[1], agent_model="m",
                                                 agent_mode="lead")), space=SPACE, objective=False)
    assert type(lead.sampler) is AgentSampler
