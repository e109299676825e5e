"""``lmtune serve`` honours OpenAI's ``response_format``: even the untrained agent-lm replies with JSON of the
schema, through the official ``openai`` client, on chat and completion endpoints; bad formats are HTTP 400."""

from __future__ import annotations

import json

import openai
import pytest

from lmtune.samplers.agent.schema import parse_reply, response_format
from lmtune.space import Categorical, Float, Int, SearchSpace, load_space

RANGES = SearchSpace((Int("rank", 1, 256, log=True), Float("learning_rate", 1e-6, 1e-2, log=True),
                      Float("dropout", 0.0, 0.3), Categorical("variant", ("lora", "dora"))), {}, "ranges")


@pytest.fixture(scope="module")
def client(agent_endpoint):
    return openai.OpenAI(base_url=agent_endpoint, api_key="none", max_retries=0, timeout=120)


@pytest.mark.parametrize("space", [load_space("lora-paper"), RANGES], ids=["enums", "ranges"])
def test_sampled_replies_all_follow_the_schema(client, space):
    messages = [{"role": "user", "content": "Propose the next configuration as JSON."}]
    for seed in range(8):
        reply = client.chat.completions.create(model="agent-lm", messages=messages, max_tokens=400, temperature=1.0,
                                               seed=seed, response_format=response_format(space, 24))
        assert reply.choices[0].finish_reason == "stop"
        config, reason = parse_reply(reply.choices[0].message.content, space)
        assert space.validate({**config, **space.fixed}) and len(reason) <= 24


def test_without_a_format_the_same_model_writes_no_json(client):
    reply = client.chat.completions.create(model="agent-lm", messages=[{"role": "user", "content": "JSON please"}],
                                           max_tokens=40, temperature=1.0, seed=0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.choices[0].message.content)


def test_json_object_and_the_completion_endpoint(client):
    reply = client.chat.completions.create(model="agent-lm", messages=[{"role": "user", "content": "{"}],
                                           max_tokens=60, temperature=1.0, seed=3,
                                           response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":  # any object may run past max_tokens; one that ended parses
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    done = client.completions.create(model="agent-lm", prompt="n =", max_tokens=20, temperature=1.0, seed=1,
                                     extra_body={"response_format": {"type": "json_schema",
                                                                     "json_schema": {"name": "n", "schema": schema}}})
    assert 1 <= json.loads(done.choices[0].text)["n"] <= 9


def test_a_format_the_server_cannot_honour_is_http_400(client):
    for bad in ({"type": "grammar"}, {"type": "json_schema", "json_schema": {"name": "x"}},
                {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {
                    "a": {"type": "string", "pattern": "("}}}}}):
        with pytest.raises(openai.BadRequestError, match="response_format"):
            client.chat.completions.create(model="agent-lm", messages=[{"role": "user", "content": "x"}],
                                           max_tokens=5, response_format=bad)
