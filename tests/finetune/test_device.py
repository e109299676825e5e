"""Device, precision and QLoRA choices: what ``auto`` picks, the clear errors, and runs in 16 bits on the CPU.

The CUDA branches are decided from the device type and its bfloat16 support, which the tests pass in
(``bf16_supported``, ``bitsandbytes``): this machine has neither a GPU nor bitsandbytes.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lmtune._compat import is_activation_checkpointing
from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.batches import grouped_batches, scored_positions
from lmtune.finetune.device import Precision, check_quantize, choose_precision, has_bitsandbytes, resolve_device
from lmtune.finetune.encode import IGNORE_INDEX, causal_example
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import attach_adapter, prepare_base
from lmtune.finetune.train import TrainingRun, TrainSettings, train_and_evaluate

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
FAST = TrainSettings(max_length=16, epochs=2, eval_points=2)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def test_auto_picks_bf16_on_cuda_fp16_with_scaling_on_older_cuda_and_fp32_elsewhere():
    assert choose_precision("auto", CPU) == Precision("fp32")
    assert choose_precision("auto", MPS) == Precision("fp32")
    assert choose_precision("auto", CUDA, bf16_supported=True) == Precision("bf16", torch.bfloat16, scaled=False)
    assert choose_precision("auto", CUDA, bf16_supported=False) == Precision("fp16", torch.float16, scaled=True)
    assert choose_precision("fp32", CUDA, bf16_supported=True).autocast is None
    assert choose_precision("bf16", CPU) == Precision("bf16", torch.bfloat16)  # CPU autocast, opt-in
    assert choose_precision("bf16", CPU).base_dtype == torch.bfloat16 and Precision("fp32").base_dtype == torch.float32


@pytest.mark.parametrize(("requested", "device", "bf16", "words"), [
    ("fp16", CPU, None, "fp16 needs a CUDA device"),
    ("bf16", CUDA, False, "does not support bfloat16"),
    ("bf16", MPS, None, "not supported on mps"),
    ("half", CPU, None, "allowed: auto, fp32, bf16, fp16"),
])
def test_precisions_a_device_cannot_run_are_refused(requested, device, bf16, words):
    with pytest.raises(InputError, match=words) as err:
        choose_precision(requested, device, bf16_supported=bf16)
    assert err.value.field == "precision"


def test_4bit_needs_bitsandbytes_then_cuda_and_refuses_pissa_with_the_reason():
    check_quantize("none", CPU)
    with pytest.raises(InputError, match="needs the bitsandbytes package") as err:
        check_quantize("4bit", CUDA, bitsandbytes=False)
    assert err.value.field == "quantize"
    with pytest.raises(InputError, match="needs a CUDA device; this run's device is cpu"):
        check_quantize("4bit", CPU, bitsandbytes=True)
    with pytest.raises(InputError, match="variant pissa cannot train on a 4-bit base: PiSSA initializes"):
        check_quantize("4bit", CUDA, ["lora", "pissa"], bitsandbytes=True)
    check_quantize("4bit", CUDA, ["lora", "rslora", "dora"], bitsandbytes=True)  # DoRA works on bnb layers
    with pytest.raises(InputError, match="allowed: none, 4bit"):
        check_quantize("8bit", CUDA, bitsandbytes=True)


@NO_CUDA
def test_runs_check_device_precision_and_4bit_before_building_anything(tiny_bert, tokenizer, sentiment_rows):
    assert resolve_device(None) == CPU
    cases = [({"device": "cuda"}, "device", "no cuda device"), ({"device": "tpu:0"}, "device", "not a torch"),
             ({"precision": "fp16"}, "precision", "fp16 needs a CUDA device"),
             ({"quantize": "4bit"}, "quantize", "bitsandbytes" if not has_bitsandbytes() else "CUDA device")]
    for change, field, words in cases:
        with pytest.raises(InputError, match=words) as err:
            train_and_evaluate(LoraHyperparams(rank=4), sentiment_rows, sentiment_rows, task="classification",
                               model=tiny_bert, tokenizer=tokenizer, settings=dataclasses.replace(FAST, **change))
        assert err.value.field == field
    with pytest.raises(InputError) as err:
        TrainSettings(precision="half")
    assert err.value.field == "precision"


def test_a_bf16_base_keeps_float32_master_weights_and_rotary_frequencies(tiny_llama, tokenizer):
    bf16 = choose_precision("bf16", CPU)
    base, _ = prepare_base(tiny_llama, task="causal", tokenizer=tokenizer, device=CPU, precision=bf16)
    model = attach_adapter(base, LoraHyperparams(rank=4, variant="dora"), task="causal",
                           target_modules=["q_proj", "v_proj"])
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert {b.dtype for name, b in model.named_buffers() if "inv_freq" in name} == {torch.float32}
    assert next(tiny_llama.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_a_classifier_head_trains_as_a_float32_copy_on_a_bf16_base(tiny_bert, tokenizer):
    base, _ = prepare_base(tiny_bert, task="classification", tokenizer=tokenizer, num_labels=2,
                           precision=choose_precision("bf16", CPU))
    model = attach_adapter(base, LoraHyperparams(rank=4), task="classification")
    heads = {name: p.dtype for name, p in model.named_parameters() if "classifier" in name and p.requires_grad}
    assert heads and set(heads.values()) == {torch.float32}


def test_bf16_autocast_trains_on_the_cpu(tiny_bert, tokenizer, sentiment_rows):
    settings = dataclasses.replace(FAST, precision="bf16")
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=4), sentiment_rows,
                                sentiment_rows, task="classification", model=tiny_bert, tokenizer=tokenizer,
                                settings=settings)
    fp32 = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=4), sentiment_rows,
                              sentiment_rows, task="classification", model=tiny_bert, tokenizer=tokenizer,
                              settings=FAST)
    assert math.isfinite(result.eval_loss) and result.steps == fp32.steps
    assert result.step_losses != fp32.step_losses  # it really computed in bfloat16
    assert result.step_losses == pytest.approx(fp32.step_losses, rel=0.05)


def test_gradient_checkpointing_recomputes_the_same_run(tiny_llama, tokenizer, qa_rows):
    base, _ = prepare_base(tiny_llama, task="causal", tokenizer=tokenizer, gradient_checkpointing=True)
    assert is_activation_checkpointing(base)
    hp = LoraHyperparams(rank=4, learning_rate=2e-2, batch_size=4, dropout=0.1)
    runs = [train_and_evaluate(hp, qa_rows, qa_rows, task="causal", model=tiny_llama, tokenizer=tokenizer,
                               settings=dataclasses.replace(FAST, exact_match=False, gradient_checkpointing=on),
                               target_modules=["q_proj", "v_proj"]) for on in (False, True)]
    assert runs[0].step_losses == pytest.approx(runs[1].step_losses, rel=1e-5)
    assert runs[0].eval_loss == pytest.approx(runs[1].eval_loss, rel=1e-5)


def _run(model, tokenizer, task, rows, settings, hp, modules=None):
    peft_model = attach_adapter(prepare_base(model, task=task, tokenizer=tokenizer, num_labels=2)[0], hp, task=task,
                                target_modules=modules)
    run = TrainingRun(peft_model, tokenizer, task, "eval_loss", settings)
    return run, run.encode(rows)


def test_losses_read_back_in_blocks_give_the_same_run_and_the_same_divergence(tiny_bert, tokenizer,
                                                                            sentiment_rows):
    """On an accelerator losses are read every ``check_every`` steps; the trajectory, the per-step losses and the
    step a divergence is reported at are those of reading every step (forced here on the CPU)."""
    settings = dataclasses.replace(FAST, epochs=3)
    for hp in (LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=4),
               LoraHyperparams(rank=4, learning_rate=1e3, batch_size=4)):
        outcomes = []
        for every in (1, 4):
            run, data = _run(tiny_bert, tokenizer, "classification", sentiment_rows, settings, hp)
            run.read_every = every
            try:
                outcomes.append(run.fit(data, data, hp, None, None))
            except TrialFailed as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1]
    assert outcomes[0].startswith("diverged: loss")


def test_the_output_head_on_scored_positions_only_gives_the_same_loss(tiny_llama, tokenizer):
    rows = [{"prompt": "question " * (1 + i % 4), "response": "yes " * (1 + i % 3)} for i in range(6)]
    run, data = _run(tiny_llama, tokenizer, "causal", rows, FAST, LoraHyperparams(rank=4), ["q_proj"])
    run.model.eval()
    with torch.no_grad():
        run.options = dataclasses.replace(run.options, keep_logits=False)  # on by default: the head everywhere
        full, count, logits = run.loss_of(data)
        run.options = dataclasses.replace(run.options, keep_logits=True)
        kept, kept_count, kept_logits = run.loss_of(data)
    assert kept_count == count == sum(len(x.reply) for x in data)
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    assert kept_logits.shape[1] < logits.shape[1]


def test_scored_positions_mark_the_positions_before_each_response_token():
    examples = [causal_example(p + r, [False] * len(p) + [True] * len(r), len(p), 16)
                for p, r in (([1, 2, 3], [7, 8]), ([4], [9]), ([], [5, 6]))]
    width = max(len(x.labels) for x in examples)
    positions, targets = scored_positions(torch.tensor([x.labels + [IGNORE_INDEX] * (width - len(x.labels))
                                                        for x in examples]))
    assert positions.tolist() == [0, 2, 3]
    assert targets.tolist() == [[IGNORE_INDEX, 7, 8], [9, IGNORE_INDEX, IGNORE_INDEX], [6, IGNORE_INDEX, IGNORE_INDEX]]


def test_grouped_batches_are_seeded_cover_each_epoch_and_start_with_the_longest():
    lengths = [(i * 37) % 101 for i in range(300)]
    first, again = grouped_batches(lengths, 8, 3), grouped_batches(lengths, 8, 3)
    epochs = [[next(first) for _ in range(38)] for _ in range(2)]  # ceil(300 / 8) batches an epoch
    assert epochs[0] == [next(again) for _ in range(38)]
    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(300))
        assert max(lengths[i] for i in epoch[0]) == max(lengths)
    assert epochs[0] != epochs[1]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epochs[0]) / 38
    assert spread < 10  # random batches of 8 would spread over most of 0..100


def test_group_by_length_runs_are_reproducible(tiny_bert, tokenizer, sentiment_rows):
    settings = dataclasses.replace(FAST, group_by_length=True)
    hp = LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=4, dropout=0.1)
    runs = [train_and_evaluate(hp, sentiment_rows, sentiment_rows, task="classification", model=tiny_bert,
                               tokenizer=tokenizer, settings=settings) for _ in range(2)]
    assert runs[0].trajectory == runs[1].trajectory and runs[0].steps == 12


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA_ONLY
@pytest.mark.parametrize("precision", ["auto", "fp32", "fp16"])
def test_cuda_runs_learn_in_each_precision(tiny_llama, tiny_bert, tokenizer, qa_rows, sentiment_rows, precision):
    """A causal run learns in each precision; a huge rate diverges (fp16's loss scaler may skip those steps).
    The divergence half trains the classifier: the tiny Llama starts at chance over 30,522 tokens and its
    normalized layers hold the loss near that, so no rate can send it past 4 x the first loss (on the CPU too)."""
    settings = TrainSettings(max_length=16, epochs=10, max_new_tokens=4, device="cuda", precision=precision,
                             check_every=8, group_by_length=True)
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=2e-2, batch_size=4), qa_rows, qa_rows,
                                task="causal", model=tiny_llama, tokenizer=tokenizer, settings=settings,
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])
    assert result.metric == 1.0 and len(result.step_losses) == result.steps == 20
    if precision == "fp16":  # the loss scaler skips overflowing steps: a huge rate need not diverge
        return
    classify = dataclasses.replace(FAST, epochs=3, device="cuda", precision=precision)
    with pytest.raises(TrialFailed, match=r"^diverged: loss .* at step \d+"):
        train_and_evaluate(LoraHyperparams(rank=4, learning_rate=1e3, batch_size=4), sentiment_rows, sentiment_rows,
                           task="classification", model=tiny_bert, tokenizer=tokenizer, settings=classify)


def test_a_batch_without_padding_gives_the_same_loss_without_a_mask(tiny_bert, tiny_llama, tokenizer):
    """Off the CPU an unpadded batch goes without an attention mask (transformers would inspect the mask on the
    device, a wait per forward pass); the model computes the same thing either way."""
    rows = {"classification": [{"text": f"good film {i}", "label": i % 2} for i in range(4)],
            "causal": [{"prompt": f"question {i}", "response": "yes"} for i in range(4)]}
    for task, model, modules in (("classification", tiny_bert, None), ("causal", tiny_llama, ["q_proj"])):
        run, data = _run(model, tokenizer, task, rows[task], FAST, LoraHyperparams(rank=4), modules)
        assert len({len(first) for first, *_ in data}) == 1  # equal lengths: no padding
        run.model.eval()
        with torch.no_grad():
            masked = run.loss_of(data)[0].item()
            run.options = dataclasses.replace(run.options, mask_unpadded=False)
            bare = run.loss_of(data)[0].item()
        assert bare == pytest.approx(masked, rel=1e-6)
