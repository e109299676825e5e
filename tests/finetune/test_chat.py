"""Chat and completion data: ``messages`` rows rendered with the tokenizer's chat template, the loss on the assistant's
tokens (multi-turn), TRL's prompt/completion, the same data from a file, a folder or a dataset id, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lmtune.errors import InputError
from lmtune.finetune.chat import chat_template, describe_template, render_chat
from lmtune.finetune.data import load_dataset
from lmtune.finetune.encode import IGNORE_INDEX, check_encoding, encode_rows
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.train import TrainSettings, train_and_evaluate
from lmtune.llm import AGENT_LM_DIR, ARITH_LM_DIR

CHAT = Path(__file__).resolve().parents[1] / "data" / "chat.jsonl"
#: agent-lm's ChatML template with the assistant's text (its content and end-of-turn token) marked.
MARKED = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
          "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}"
          "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MULTI_TURN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello! How are you?"}, {"role": "user", "content": "What is 2+2?"},
              {"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def chat_tokenizer():
    return AutoTokenizer.from_pretrained(AGENT_LM_DIR)


def assistant_texts(tokenizer, rendered) -> list[str]:
    """The decoded runs of assistant tokens."""
    runs, current = [], []
    for token, flag in zip(rendered.ids, rendered.assistant, strict=True):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


def test_assistant_tokens_of_a_multi_turn_chat_are_each_reply_and_its_end_of_turn(chat_tokenizer):
    template = chat_template(chat_tokenizer, "agent-lm")
    rendered = render_chat(chat_tokenizer, MULTI_TURN, template)
    assert rendered.ids == chat_tokenizer.apply_chat_template(MULTI_TURN, tokenize=True)["input_ids"]
    assert assistant_texts(chat_tokenizer, rendered) == ["Hello! How are you?<|im_end|>", "4<|im_end|>"]
    prompt = chat_tokenizer.apply_chat_template(MULTI_TURN[:-1], tokenize=False, add_generation_prompt=True)
    assert chat_tokenizer.decode(rendered.ids[:rendered.reply_start]) == prompt
    assert describe_template(template)["method"] == "prefixes"


def test_generation_markers_and_rendered_prefixes_give_the_same_mask(chat_tokenizer):
    rows = [json.loads(line)["messages"] for line in CHAT.read_text().splitlines()[:12]] + [MULTI_TURN]
    template = chat_template(chat_tokenizer, "agent-lm")
    assert describe_template(MARKED)["method"] == "markers"
    for messages in rows:
        by_prefixes = render_chat(chat_tokenizer, messages, template)
        by_markers = render_chat(chat_tokenizer, messages, MARKED)
        assert by_markers.ids == by_prefixes.ids
        assert by_markers.assistant == by_prefixes.assistant
        assert by_markers.reply_start == by_prefixes.reply_start


def test_loss_on_assistant_scores_only_assistant_tokens_and_all_scores_every_token(chat_tokenizer):
    template = chat_template(chat_tokenizer, "agent-lm")
    rows = [{"messages": MULTI_TURN}]
    [assistant] = encode_rows(rows, chat_tokenizer, "causal", 256, "assistant", template)
    [everything] = encode_rows(rows, chat_tokenizer, "causal", 256, "all", template)
    scored = [t for t, label in zip(assistant.ids, assistant.labels, strict=True) if label != IGNORE_INDEX]
    assert chat_tokenizer.decode(scored) == "Hello! How are you?<|im_end|>4<|im_end|>"
    assert assistant.targets == len(scored)
    assert everything.labels == everything.ids and everything.targets == len(everything.ids) - 1
    # too long: the start of the chat goes, the last reply stays whole
    [short] = encode_rows(rows, chat_tokenizer, "causal", 20, "assistant", template)
    assert len(short.ids) == 20 and short.reply == assistant.reply


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_fixes(chat_tokenizer):
    last_only = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(InputError) as error:
        render_chat(chat_tokenizer, MULTI_TURN, last_only)
    assert error.value.field == "dataset" and "{% generation %}" in error.value.message
    assert "`loss_on` all" in error.value.message


def test_chat_rows_for_a_model_without_a_chat_template_name_the_fix():
    splits = load_dataset(str(CHAT))
    with pytest.raises(InputError) as error:
        check_encoding(splits.train, "causal", "arith-lm", str(ARITH_LM_DIR), max_length=64, loss_on="assistant",
                       packing=False)
    assert error.value.field == "dataset"
    assert error.value.message.startswith("arith-lm has no chat template")
    assert "`model`" in error.value.message and "prompt/completion" in error.value.message


def test_messages_rows_load_from_a_file_a_folder_and_a_dataset_id(tmp_path, monkeypatch):
    import datasets

    rows = [json.loads(line) for line in CHAT.read_text().splitlines()]
    from_file = load_dataset(str(CHAT))
    assert from_file.task == "causal" and from_file.format == "chat"
    assert sorted(map(json.dumps, from_file.train + from_file.validation + from_file.test)) == sorted(
        map(json.dumps, rows))
    folder = tmp_path / "chats"
    folder.mkdir()
    for name, part in (("train", rows[:40]), ("validation", rows[40:50]), ("test", rows[50:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    from_folder = load_dataset(str(folder))
    assert from_folder.train == rows[:40] and from_folder.validation == rows[40:50] and from_folder.test == rows[50:]
    hub = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                                "test": datasets.Dataset.from_list(rows[50:])})
    monkeypatch.setattr(datasets, "load_dataset", lambda source: hub)  # the hub's answer, without the network
    from_hub = load_dataset("someone/chats")
    assert from_hub.format == "chat" and from_hub.test == rows[50:]
    assert len(from_hub.train) + len(from_hub.validation) == 40


def test_trl_prompt_completion_rows_plain_and_conversational(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(20)))
    splits = load_dataset(str(plain))
    assert splits.format == "prompt/response"
    assert all(set(row) == {"prompt", "response"} for row in splits.train)
    conversational = tmp_path / "conversational.jsonl"
    conversational.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}+1?"}],
                                                  "completion": [{"role": "assistant", "content": str(i + 1)}]})
                                      + "\n" for i in range(20)))
    splits = load_dataset(str(conversational))
    assert splits.format == "chat"
    assert all(row["messages"][-1]["role"] == "assistant" for row in splits.train)


@pytest.mark.parametrize(("turns", "words"), [
    ([{"role": "user", "content": "hi"}], "the last turn must be the assistant's"),
    ([{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "x"}], "each turn needs a role"),
    ([], "non-empty list"),
])
def test_malformed_chat_rows_are_named(turns, words, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"}]}) + "\n"
                            for _ in range(5)) + json.dumps({"messages": turns}) + "\n")
    with pytest.raises(InputError) as error:
        load_dataset(str(path))
    assert error.value.field == "dataset" and "row 6 of" in error.value.message and words in error.value.message


def test_a_chat_model_learns_the_last_reply_and_exact_match_generates_it():
    """Exact match on chat data generates the last assistant turn from the chat before it (the template's
    generation prompt included) and stops at the end of turn. agent-lm's small initial weights keep its logits
    flat (its loss stays near 6.7), but the greedy choice learns the reply."""
    rows = [{"messages": [{"role": "user", "content": f"Say yes ({i})."}, {"role": "assistant", "content": "yes"}]}
            for i in range(16)]
    settings = TrainSettings(max_length=64, epochs=12, eval_points=1, max_new_tokens=6)

    def run(learning_rate: float):
        return train_and_evaluate(LoraHyperparams(rank=8, learning_rate=learning_rate, batch_size=8), rows, rows[:6],
                                  task="causal", model=str(AGENT_LM_DIR), settings=settings,
                                  target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])

    untrained, trained = run(1e-9), run(3e-2)
    assert trained.metric_name == "exact_match" and untrained.metric == 0.0 and trained.metric == 1.0
    assert trained.eval_loss < untrained.eval_loss
    assert torch.isfinite(torch.tensor(trained.step_losses)).all()
