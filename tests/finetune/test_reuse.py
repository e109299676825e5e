"""A base model kept between trials gives exactly the results of a fresh build for the same seed and config."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from lmtune.finetune.data import DatasetSplits, load_dataset, proxy_subset
from lmtune.finetune.device import Precision
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import TrainSettings, train_and_evaluate

SETTINGS = TrainSettings(max_length=16, epochs=2, eval_points=2, max_new_tokens=4)
#: Configs in an order that exercises every path: adapters removed, a PiSSA base used up, the first config again.
CONFIGS = [{"rank": 4, "learning_rate": 3e-2, "batch_size": 4, "dropout": 0.1, "variant": "lora"},
           {"rank": 2, "learning_rate": 1e-2, "batch_size": 8, "dropout": 0.0, "variant": "dora"},
           {"rank": 4, "learning_rate": 2e-2, "batch_size": 4, "dropout": 0.1, "variant": "pissa"},
           {"rank": 8, "learning_rate": 3e-2, "batch_size": 4, "dropout": 0.1, "variant": "rslora"},
           {"rank": 4, "learning_rate": 3e-2, "batch_size": 4, "dropout": 0.1, "variant": "lora"}]


class Queue:
    """A space that hands out the configs above in turn (through the trial, as a sampler would)."""

    def suggest(self, trial):
        return dict(CONFIGS[trial.number])


def _trials(objective: LoraObjective) -> list[tuple]:
    study = optuna.create_study(direction=objective.direction)
    study.optimize(objective, n_trials=len(CONFIGS))
    return [(t.value, t.user_attrs["trajectory"], t.user_attrs["step_losses"]) for t in study.trials]


@pytest.mark.parametrize("task", ["classification", "causal"])
def test_trials_on_a_kept_base_match_fresh_builds(task, tiny_bert, tiny_llama, tokenizer, sentiment_rows, qa_rows):
    rows = sentiment_rows if task == "classification" else qa_rows
    splits = DatasetSplits(task=task, train=rows, validation=rows, test=[],
                           label_names=["bad", "good"] if task == "classification" else None, name="toy")
    model = tiny_bert if task == "classification" else tiny_llama
    modules = None if task == "classification" else ["q_proj", "v_proj", "down_proj"]
    made = {reuse: LoraObjective(Queue(), splits, model=model, tokenizer=tokenizer, proxy_fraction=1.0,
                                 settings=SETTINGS, target_modules=modules, reuse_model=reuse)
            for reuse in (True, False)}
    kept, fresh = _trials(made[True]), _trials(made[False])
    assert kept == fresh
    assert made[True].reuse.loads == 2  # the first trial, and the trial after PiSSA used its base up
    assert kept[0] == kept[4] and len({tuple(losses) for _, _, losses in kept}) == 4


def test_the_base_is_as_it_was_after_each_adapter_and_a_classifier_head_is_restored(tiny_bert, tokenizer,
                                                                                   sentiment_rows):
    reuse = ReusableBase()
    options = dict(task="classification", tokenizer=tokenizer, num_labels=2, target_modules=None, seed=0,
                   device=torch.device("cpu"), precision=Precision("fp32"))
    model, _ = reuse.acquire(tiny_bert, LoraHyperparams(rank=4), **options)
    base = model.get_base_model()
    reuse.release(model)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    for variant in ("lora", "dora", "rslora"):
        train_and_evaluate(LoraHyperparams(rank=4, learning_rate=5e-2, batch_size=4, variant=variant),
                           sentiment_rows, sentiment_rows, task="classification", model=tiny_bert,
                           tokenizer=tokenizer, settings=SETTINGS, reuse=reuse)
        after = base.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert not any("lora" in name for name, _ in base.named_modules())
    assert reuse.loads == 1
    held, _ = reuse.acquire(tiny_bert, LoraHyperparams(rank=4), **options)  # a concurrent trial builds its own
    other, _ = reuse.acquire(tiny_bert, LoraHyperparams(rank=2), **options)
    assert held.get_base_model() is base and other.get_base_model() is not base
    reuse.release(other)
    reuse.release(held)
    assert reuse.loads == 1 and not any("lora" in name for name, _ in base.named_modules())


def test_a_new_seed_draws_a_new_head_when_loading_draws_one():
    """MiniLM from its folder gets a freshly drawn classification head: another seed must reload it, and the
    run then matches a fresh build with that seed."""
    splits = load_dataset()
    rows, evaluation = proxy_subset(splits.train, 0.01, 0), splits.validation[:16]
    settings = TrainSettings(max_length=32, eval_points=1, min_steps=2)
    hp = LoraHyperparams(rank=4, learning_rate=3e-3, batch_size=8)
    reuse = ReusableBase()

    def run(seed, keep):
        return train_and_evaluate(hp, rows, evaluation, task="classification", label_names=splits.label_names,
                                  settings=dataclasses.replace(settings, seed=seed),
                                  reuse=reuse if keep else None).trajectory

    assert run(0, True) == run(0, False)
    assert run(1, True) == run(1, False)
    assert reuse.loads == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trials_on_a_kept_base_match_fresh_builds_on_cuda(tiny_llama, tokenizer, qa_rows):
    splits = DatasetSplits(task="causal", train=qa_rows, validation=qa_rows, test=[], label_names=None, name="toy")
    settings = dataclasses.replace(SETTINGS, device="cuda", precision="bf16")
    made = [LoraObjective(Queue(), splits, model=tiny_llama, tokenizer=tokenizer, proxy_fraction=1.0,
                          settings=settings, target_modules=["q_proj", "v_proj"], reuse_model=reuse)
            for reuse in (True, False)]
    kept, fresh = _trials(made[0]), _trials(made[1])
    for (value, _, losses), (value_, _, losses_) in zip(kept, fresh, strict=True):
        assert losses == pytest.approx(losses_, rel=1e-4) and value == pytest.approx(value_, rel=1e-4)
