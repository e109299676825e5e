"""Each way of making a step cheaper trains the same loss curve with it on and off (on the CPU), and a step on the
GPU's path reads nothing back from the device between the points where losses are read."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from lmtune.errors import InputError
from lmtune.finetune.batches import bucket_width, micro_batches
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import attach_adapter, prepare_base
from lmtune.finetune.speed import adamw, repeated_layers
from lmtune.finetune.train import TrainingRun, TrainSettings, train_and_evaluate
from tests.finetune.syncs import count_syncs

MODULES = ["q_proj", "v_proj", "down_proj"]
SETTINGS = TrainSettings(max_length=32, epochs=3, eval_points=2, exact_match=False)


def rows(count: int) -> list[dict]:
    return [{"prompt": "question " * (1 + i % 4) + str(i), "response": " yes" * (1 + i % 3)} for i in range(count)]


def curve(tiny_llama, tokenizer, batch_size: int = 8, **changes):
    """Per-step training losses and the last eval loss of a short causal run."""
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=1e-2, batch_size=batch_size), rows(24),
                                rows(8), task="causal", model=tiny_llama, tokenizer=tokenizer, target_modules=MODULES,
                                settings=dataclasses.replace(SETTINGS, **changes))
    return result.step_losses + [result.eval_loss]


@pytest.mark.parametrize("changes", [
    {"fused_optimizer": False},  # torch's default AdamW on the CPU: one update per matrix
    {"scored_logits": False},  # the output head at every position
    {"cross_entropy": "chunked"},
    {"max_micro_batch": 3},  # batches of 8 as micro-batches of 3, 3 and 2
    {"packing": True},
], ids=lambda changes: next(iter(changes)))
def test_each_optimization_trains_the_same_curve_on_and_off(tiny_llama, tokenizer, changes, monkeypatch):
    monkeypatch.setattr("lmtune.finetune.loss.CHUNK_TOKENS", 16)  # several chunks per batch
    default = curve(tiny_llama, tokenizer)
    assert curve(tiny_llama, tokenizer, **changes) == pytest.approx(default, rel=1e-4)


def test_the_default_optimizer_is_fused_where_torch_has_a_fused_kernel():
    parameter = torch.nn.Parameter(torch.zeros(3))
    assert adamw([parameter], 1e-3, torch.device("cpu")).defaults["fused"] is True
    assert not adamw([parameter], 1e-3, torch.device("cpu"), fused=False).defaults["fused"]


def test_micro_batches_are_near_equal_and_cover_the_batch():
    assert micro_batches(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert micro_batches(list(range(8)), None) == [list(range(8))]
    assert micro_batches(list(range(7)), 7) == [list(range(7))]
    assert bucket_width(17, 128) == 32 and bucket_width(100, 128) == 128 and bucket_width(3, 128) == 16
    assert bucket_width(100, 96) == 100 and bucket_width(17, 0) == 17


@pytest.mark.parametrize("padded", [True, False])
def test_a_step_on_the_gpu_path_reads_nothing_back_between_loss_reads(tiny_llama, tokenizer, padded):
    """On an accelerator losses are read every ``check_every`` steps, padded batches get a ready mask, unpadded ones
    none, and the output head runs at scored positions; forced here on the CPU, steps 2-7 of 8 (no read, no
    evaluation) make no operation that would wait for the device."""
    hp = LoraHyperparams(rank=4, learning_rate=1e-2, batch_size=4)
    base = prepare_base(tiny_llama, task="causal", tokenizer=tokenizer)[0]
    run = TrainingRun(attach_adapter(base, hp, task="causal", target_modules=MODULES), tokenizer, "causal",
                      "eval_loss", dataclasses.replace(SETTINGS, eval_points=1, steps=8))
    run.read_every = 32
    run.options = dataclasses.replace(run.options, mask_unpadded=False, keep_logits=True, block_mask="bool")
    counter = count_syncs()
    syncs = []

    def on_step(step: int, total: int) -> None:
        if step == 1:
            syncs.append(counter.__enter__())
        if step == 7:
            counter.__exit__(None, None, None)

    data = run.encode(rows(16) if padded else [{"prompt": f"question {i}", "response": " yes"} for i in range(16)])
    assert (len({len(x.ids) for x in data}) > 1) == padded
    run.fit(data, data, hp, None, on_step)
    assert syncs[0].count == 0, syncs[0].found


def test_compiled_layers_train_the_same_curve_and_are_given_back_plain(tiny_llama, tokenizer):
    """``torch.compile`` of each decoder layer (batch widths bucketed): the same curve; the model given to the run
    keeps plain layers (the run compiles and un-compiles its own copy's)."""
    default = curve(tiny_llama, tokenizer)
    assert curve(tiny_llama, tokenizer, compile=True) == pytest.approx(default, rel=1e-4)
    layers = repeated_layers(tiny_llama)
    assert len(layers) == 2 and all(getattr(layer, "_compiled_call_impl", None) is None for layer in layers)


@pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("liger_kernel")),
                    reason="needs a CUDA device and the liger-kernel package")
def test_liger_cross_entropy_trains_the_same_curve(tiny_llama, tokenizer):
    default = curve(tiny_llama, tokenizer, device="cuda")
    assert curve(tiny_llama, tokenizer, device="cuda", cross_entropy="liger") == pytest.approx(default, rel=1e-3)


def test_liger_where_it_cannot_run_is_refused(tiny_llama, tokenizer):
    if torch.cuda.is_available() and importlib.util.find_spec("liger_kernel"):
        pytest.skip("Liger-Kernel runs here")
    with pytest.raises(InputError) as error:
        curve(tiny_llama, tokenizer, cross_entropy="liger")
    assert error.value.field == "cross_entropy" and "liger-kernel" in error.value.message
