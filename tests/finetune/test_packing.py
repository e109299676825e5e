"""Packing: several examples per row, attention kept inside each, give the loss (and the gradients) of one example per
row; the ready 4D masks that spare the device's waits give what transformers' own masks give."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmtune.finetune.batches import best_fit, causal_batch
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import attach_adapter, prepare_base
from lmtune.finetune.train import TrainingRun, TrainSettings, train_and_evaluate
from tests.finetune.syncs import count_syncs

SETTINGS = TrainSettings(max_length=48, eval_points=2, exact_match=False)


def rows(count: int = 12) -> list[dict]:
    """Prompts and responses of many lengths, so rows pad and pack differently."""
    return [{"prompt": "question " * (1 + i % 5) + str(i), "response": " answer" * (1 + (i * 7) % 4)}
            for i in range(count)]


def make_run(tiny_llama, tokenizer, implementation: str, settings: TrainSettings = SETTINGS):
    base = prepare_base(tiny_llama, task="causal", tokenizer=tokenizer)[0]
    base.set_attn_implementation(implementation)
    torch.manual_seed(0)
    model = attach_adapter(base, LoraHyperparams(rank=4), task="causal", target_modules=["q_proj", "v_proj"])
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give it values, so gradients differ
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    run = TrainingRun(model, tokenizer, "causal", "eval_loss", settings)
    return run, run.encode(rows())


def assert_same_gradients(grads: dict, expected: dict, tolerance: float) -> None:
    """Every gradient within ``tolerance`` of the expected one, relative to its norm (float32 sums in another
    order differ in their last bits)."""
    for name, grad in expected.items():
        assert float((grads[name] - grad).norm()) <= tolerance * float(grad.norm()), name


def loss_and_grads(run, data, **options):
    run.options = dataclasses.replace(run.options, **options)
    run.model.zero_grad(set_to_none=True)
    loss, count, _ = run.loss_of(data)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}
    return loss.detach(), count, grads


def test_best_fit_fills_rows_within_capacity():
    lengths = [9, 3, 7, 2, 5, 5, 1, 8]
    groups = best_fit(lengths, 10)
    assert sorted(i for group in groups for i in group) == list(range(8))
    assert all(sum(lengths[i] for i in group) <= 10 for group in groups)
    assert len(groups) == 4  # 40 tokens in rows of 10: no room left over
    assert best_fit([12, 4], 10) == [[0], [1]]  # too long for a row: a row of its own


def test_packed_rows_restart_positions_and_never_score_across_examples(tiny_llama, tokenizer):
    run, data = make_run(tiny_llama, tokenizer, "sdpa")
    batch = causal_batch(data, tokenizer.pad_token_id, "rows", 48)
    assert batch.input_ids.size(0) < len(data) and batch.input_ids.size(1) <= 48
    for row_positions, row_labels in zip(batch.position_ids.tolist(), batch.labels.tolist(), strict=True):
        starts = [j for j, position in enumerate(row_positions) if position == 0]
        assert all(row_labels[j] == -100 for j in starts)  # the first token of each example is never a target
    assert int((batch.labels[:, 1:] != -100).sum()) == sum(x.targets for x in data)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_one_example_per_row(tiny_llama, tokenizer, implementation):
    run, data = make_run(tiny_llama, tokenizer, implementation)
    loss, count, grads = loss_and_grads(run, data)
    for packing in ("rows", "flat"):  # flat: transformers' DataCollatorWithFlattening, one row for the whole batch
        packed, packed_count, packed_grads = loss_and_grads(run, data, packing=packing)
        assert packed_count == count
        assert packed.item() == pytest.approx(loss.item(), rel=1e-5)
        assert_same_gradients(packed_grads, grads, 1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_ready_4d_masks_give_transformers_loss_without_a_wait(tiny_llama, tokenizer, implementation):
    """Off the CPU lmtune hands padded and packed batches a 4D mask (forced here on the CPU): the same loss as the
    mask transformers builds, and no operation that would wait for the device."""
    run, data = make_run(tiny_llama, tokenizer, implementation)
    kind = {"sdpa": "bool", "eager": "additive"}[implementation]
    for packing in (None, "rows"):
        loss, _, grads = loss_and_grads(run, data, packing=packing, mask_unpadded=False, block_mask=None)
        with count_syncs() as syncs:
            ready, _, ready_grads = loss_and_grads(run, data, packing=packing, mask_unpadded=False, block_mask=kind)
        assert ready.item() == pytest.approx(loss.item(), rel=1e-6)
        assert_same_gradients(ready_grads, grads, 1e-6)
        assert syncs.count == 0, syncs.found


def test_a_packed_run_trains_the_same_curve(tiny_llama, tokenizer):
    hp = LoraHyperparams(rank=4, learning_rate=1e-2, batch_size=4)
    runs = [train_and_evaluate(hp, rows(16), rows(6), task="causal", model=tiny_llama, tokenizer=tokenizer,
                               target_modules=["q_proj", "v_proj"],
                               settings=dataclasses.replace(SETTINGS, packing=packing, epochs=2))
            for packing in (False, True)]
    assert runs[1].step_losses == pytest.approx(runs[0].step_losses, rel=1e-4)
    assert runs[1].eval_loss == pytest.approx(runs[0].eval_loss, rel=1e-4)
