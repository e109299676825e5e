"""Two-stage generation: a HAG model folder (head or adapter) chooses each input's decoding and answers with it,
in Python and through a real ``lmtune serve`` on 127.0.0.1; unreadable stage-1 replies fall back, counted.

The labels are written by hand: greedy decoding scored 1 on every reverse input and 0.1 on every letters input,
hot decoding the other way round; the global config (very hot, with a strong repetition penalty) is measured for
real, and is worse than greedy decoding on reverse inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from lmtune.hag.generation import HagModel, TwoStageGenerator
from lmtune.hag.learners import train_hag
from lmtune.hag.space import Decoding, DecodingSpace
from lmtune.llm import HAG_LM_DIR
from lmtune.llm.generation import BackgroundLoop, GenerationRequest
from lmtune.llm.openai_compat import OpenAIGenerator
from lmtune.llm.server import make_app
from tests.servers import Server, free_port

GREEDY = Decoding(0.0, 1.0, 0, 1.0)
CREATIVE = Decoding(1.5, 0.9, 0, 1.35)
FALLBACK = Decoding(2.0, 1.0, 0, 2.0)
REVERSE = ["r:abcd>", "r:kqzfa>", "r:mmoxy>", "r:plkj>", "r:uvwxyz>", "r:qqrs>"]
LETTERS = ["d:4-ab>", "d:3-qx>", "d:5-e>", "d:6-tz>", "d:3-mno>", "d:4-k>"]


def instance(prompt: str) -> dict:
    if prompt.startswith("r:"):
        return {"type": "reverse", "prompt": prompt, "answer": prompt[2:-1][::-1]}
    count, forbidden = prompt[2:-1].split("-")
    return {"type": "letters", "prompt": prompt, "answer": None, "count": int(count), "forbidden": forbidden}


def post(url: str, body: dict | None = None) -> dict:
    """A raw JSON request, so the fields beyond OpenAI's are seen as the server sent them."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def write_labels(path, pairs: list[tuple[str, Decoding]]) -> None:
    header = {"lmtune_hag_labels": {"task": "hag-mix", "metric": "lmtune.hag.task:mix_metric", "template": "{prompt}",
                                    "n": 4, "max_tokens": 8, "stop": None, "split": "train", "model": "hag-lm",
                                    "seed": 0, "search": {"repeats": 2}, "space": DecodingSpace().to_dict()}}
    rows = [{"index": i, "prompt": p, "instance": instance(p), "label": c.as_dict(), "text": c.text(), "score": 1.0,
             "scores": [[d.as_dict(), [1.0 if d == c else 0.1]] for d in (GREEDY, CREATIVE)]}
            for i, (p, c) in enumerate(pairs)]
    path.write_text("\n".join(json.dumps(x) for x in [header, *rows]) + "\n")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hag")
    write_labels(root / "labels.jsonl", [(p, GREEDY) for p in REVERSE] + [(p, CREATIVE) for p in LETTERS])
    (root / "global.json").write_text(json.dumps({  # as lmtune infer writes it, on the labels' task and metric
        "task": "hag-mix", "metric": "lmtune.hag.task:mix_metric", "best": {"config": {
            "model": "hag-lm", "template": "{prompt}", "stop": None, "max_tokens": 8, "n": 4, **FALLBACK.as_dict()}}}))
    head = train_hag(labels=root / "labels.jsonl", output=root / "head", learner="head",
                     global_config=root / "global.json", validation_labels=root / "labels.jsonl",
                     cache=str(root / "responses.sqlite"))
    adapter = train_hag(labels=root / "labels.jsonl", output=root / "adapter", learner="adapter", epochs=0.1,
                        min_steps=4, global_config=root / "global.json")
    return root, head, adapter


def test_the_head_learns_its_labels_and_answers_in_python(folders):
    root, head, _ = folders
    assert head.candidates == 2 and head.train_agreement == 1.0 and head.validation["agreement"] == 1.0
    assert head.guard["margin"] is not None and head.guard["share"] == 1.0  # every input leaves the global config
    assert "margins over the global config" in head.loss["what"]
    generator = TwoStageGenerator(root / "head")
    answer = generator.answer("r:abcd>", n=3, max_tokens=8, seed=1)
    chosen = answer.hyperparameters
    assert {k: chosen[k] for k in GREEDY.as_dict()} == GREEDY.as_dict()
    assert chosen["learner"] == "head" and chosen["status"] == "chosen" and chosen["stage1"]["completion_tokens"] == 0
    assert len(answer.texts) == 3 and len(set(answer.texts)) == 1  # greedy: one answer three times
    assert generator.hag.choose(LETTERS)[0].config == CREATIVE


def test_an_unreadable_stage1_reply_falls_back_to_the_task_level_config_and_is_counted(folders):
    root, _, adapter = folders
    model = HagModel(root / "adapter")
    choices = model.choose(REVERSE + LETTERS)  # an adapter trained for 4 steps has not learnt the format
    assert adapter.train_agreement == 0.0
    assert all(c.status == "fallback" and c.config == FALLBACK for c in choices)
    assert model.counts["fallback"] == len(choices) and all(c.completion_tokens > 0 for c in choices)


def test_two_stage_generation_through_a_real_server(folders):
    root, _, _ = folders
    generator = TwoStageGenerator(root / "head", name="hag-head")
    with Server(make_app(generator)) as url:
        body = {"model": "hag-head", "prompt": "d:4-ab>", "n": 4, "max_tokens": 8, "seed": 3}
        reply = post(f"{url}/completions", body)
        chosen = reply["choices"][0]["hyperparameters"]
        assert {k: chosen[k] for k in CREATIVE.as_dict()} == CREATIVE.as_dict() and chosen["overridden"] == []
        assert len(reply["choices"]) == 4 and reply["usage"]["completion_tokens"] > 0
        # a field the request sets itself wins over stage 1's choice
        reply = post(f"{url}/completions", {**body, "temperature": 0.0})
        assert reply["choices"][0]["hyperparameters"]["temperature"] == 0.0
        assert reply["choices"][0]["hyperparameters"]["overridden"] == ["temperature"]
        chat = post(f"{url}/chat/completions", {"model": "hag-head", "max_tokens": 8, "messages": [
            {"role": "user", "content": "r:kqzfa>"}]})
        assert chat["choices"][0]["hyperparameters"]["temperature"] == 0.0
        assert chat["choices"][0]["message"]["content"]
        # and any OpenAI-compatible client (lmtune's own here) gets ordinary completions
        loop = BackgroundLoop()
        client = OpenAIGenerator(url)
        try:
            generation = loop.run(client.generate(GenerationRequest(model="hag-head", prompt="r:abcd>", n=2,
                                                                    max_tokens=8, seed=0)))
        finally:
            loop.run(client.aclose())
            loop.close()
        assert len(generation.texts) == 2 and generation.prompt_tokens > 0


def test_lmtune_serve_serves_a_hag_folder(folders):
    root, _, _ = folders
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lmtune.cli", "serve", "--model", str(root / "adapter"),
                                "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                models = post(f"http://127.0.0.1:{port}/v1/models")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "lmtune serve did not start"
                time.sleep(0.5)
        assert models["data"][0]["id"] == "adapter"
        reply = post(f"http://127.0.0.1:{port}/v1/completions", {"model": "adapter", "prompt": "r:abcd>",
                                                                 "max_tokens": 8})
        chosen = reply["choices"][0]["hyperparameters"]
        assert chosen["status"] == "fallback" and chosen["temperature"] == FALLBACK.temperature
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_committed_model_folder_is_small():
    assert sum(f.stat().st_size for f in HAG_LM_DIR.iterdir()) < 3_000_000
