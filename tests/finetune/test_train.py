import copy
import dataclasses
import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState
from peft import PeftModel

from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.data import DatasetSplits, load_dataset, proxy_subset
from lmtune.finetune.hparams import VARIANTS, LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import build_peft_model, check_model
from lmtune.finetune.train import TrainSettings, train_and_evaluate

FAST = TrainSettings(max_length=16, epochs=2, eval_points=3)
ALL_LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class FixedChoices:
    """A stand-in search space: a categorical choice per parameter."""

    def __init__(self, **choices):
        self.choices = choices

    def suggest(self, trial):
        return {name: trial.suggest_categorical(name, values) for name, values in self.choices.items()}


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_an_adapter_on_the_classifier(tiny_bert, tokenizer, variant):
    model, _ = build_peft_model(tiny_bert, LoraHyperparams(rank=4, variant=variant), task="classification",
                                tokenizer=tokenizer, num_labels=2)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in names) and any("classifier" in name for name in names)
    assert any("lora_magnitude" in name for name in names) == (variant == "dora")
    assert 0 < _trainable(model) < _trainable(tiny_bert)
    assert not any("lora" in name for name, _ in tiny_bert.named_parameters())  # the shared base is untouched


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_a_classifier(tiny_bert, tokenizer, sentiment_rows, variant):
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=1e-2, batch_size=4, variant=variant),
                                sentiment_rows, sentiment_rows, task="classification", model=tiny_bert,
                                tokenizer=tokenizer, settings=FAST)
    assert result.metric_name == "accuracy" and 0 <= result.metric <= 1
    assert math.isfinite(result.eval_loss)
    assert [r["step"] for r in result.trajectory] == [4, 8, 12]  # 24 rows / batch 4 = 6 steps a epoch
    assert all(math.isfinite(r["train_loss"]) for r in result.trajectory)
    assert result.steps == 12 and result.train_examples == 24


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_a_causal_lm_to_answer(tiny_llama, tokenizer, qa_rows, variant):
    """Every prompt has the answer "yes": a tiny LM learns it, and greedy generation must then match."""
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=2e-2, batch_size=4, variant=variant),
                                qa_rows, qa_rows, task="causal", model=tiny_llama, tokenizer=tokenizer,
                                settings=TrainSettings(max_length=16, epochs=10, max_new_tokens=4),
                                target_modules=ALL_LLAMA_LINEARS)
    assert result.metric_name == "exact_match"
    assert result.metric == 1.0
    losses = [r["eval_loss"] for r in result.trajectory]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_exact_match_is_zero_before_learning_and_optional(tiny_llama, tokenizer, qa_rows):
    hp = LoraHyperparams(rank=4, learning_rate=1e-6, batch_size=8)
    untrained = train_and_evaluate(hp, qa_rows, qa_rows, task="causal", model=tiny_llama, tokenizer=tokenizer,
                                   settings=TrainSettings(max_length=16, eval_points=1, max_new_tokens=4))
    assert untrained.metric == 0.0
    by_loss = train_and_evaluate(hp, qa_rows, qa_rows, task="causal", model=tiny_llama, tokenizer=tokenizer,
                                 settings=TrainSettings(max_length=16, eval_points=1, exact_match=False))
    assert by_loss.metric_name == "eval_loss" and by_loss.metric == by_loss.eval_loss
    assert by_loss.eval_loss == pytest.approx(untrained.eval_loss)


def test_classifier_learns_a_separable_task(tiny_bert, tokenizer, sentiment_rows):
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=1e-1, batch_size=4), sentiment_rows,
                                sentiment_rows, task="classification", model=tiny_bert, tokenizer=tokenizer,
                                settings=TrainSettings(max_length=16, epochs=5))
    assert result.metric == 1.0
    assert result.trajectory[-1]["eval_loss"] < result.trajectory[0]["eval_loss"]


def test_same_seed_gives_the_same_metric(tiny_bert, tokenizer, sentiment_rows):
    def run(seed):
        hp = LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=4, dropout=0.1)
        return train_and_evaluate(hp, sentiment_rows, sentiment_rows, task="classification", model=tiny_bert,
                                  tokenizer=tokenizer, settings=TrainSettings(max_length=16, seed=seed))

    first, second, other = run(0), run(0), run(1)
    assert first.trajectory == second.trajectory
    assert other.eval_loss != first.eval_loss


def test_huge_learning_rate_fails_with_a_reason(tiny_bert, tokenizer, sentiment_rows):
    with pytest.raises(TrialFailed, match=r"^diverged: loss .* at step \d+"):
        train_and_evaluate(LoraHyperparams(learning_rate=1e3, batch_size=4), sentiment_rows, sentiment_rows,
                           task="classification", model=tiny_bert, tokenizer=tokenizer, settings=FAST)


def test_out_of_memory_becomes_a_failed_trial(tiny_bert, tokenizer, sentiment_rows):
    def exhausted(step, total):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrialFailed, match="^out of memory: CUDA out of memory"):
        train_and_evaluate(LoraHyperparams(), sentiment_rows, sentiment_rows, task="classification",
                           model=tiny_bert, tokenizer=tokenizer, settings=FAST, on_step=exhausted)


def test_callbacks_see_every_step_and_evaluation(tiny_bert, tokenizer, sentiment_rows):
    steps, evals = [], []
    train_and_evaluate(LoraHyperparams(batch_size=8), sentiment_rows, sentiment_rows, task="classification",
                       model=tiny_bert, tokenizer=tokenizer, settings=FAST,
                       on_step=lambda step, total: steps.append((step, total)),
                       on_eval=lambda step, record: evals.append((step, sorted(record))))
    assert steps == [(s, 6) for s in range(1, 7)]
    assert evals == [(s, ["accuracy", "epoch", "eval_loss", "step", "train_loss"]) for s in (2, 4, 6)]


@pytest.mark.parametrize("variant", ["lora", "pissa"])
def test_saved_adapter_reloads_onto_the_original_base(tmp_path, tiny_bert, tokenizer, sentiment_rows,
                                                      variant):
    """PiSSA rewrites base weights while training, so its adapter is saved converted to a plain LoRA of
    twice the rank; either way the adapter on the untouched base reproduces the trained model."""
    out = tmp_path / "adapter"
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=3e-2, batch_size=8, variant=variant),
                                sentiment_rows[:16], sentiment_rows, task="classification", model=tiny_bert,
                                tokenizer=tokenizer, label_names=["bad", "good"],
                                settings=TrainSettings(max_length=16, eval_points=1), save_adapter_to=out)
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert json.loads((out / "labels.json").read_text()) == ["bad", "good"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"]) == ((8 if variant == "pissa" else 4), True)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(tiny_bert), str(out)).eval()
    batch = tokenizer([row["text"] for row in sentiment_rows], return_tensors="pt", padding=True,
                      return_token_type_ids=False)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(reloaded(**batch).logits,
                                                 torch.tensor([row["label"] for row in sentiment_rows]))
    assert loss.item() == pytest.approx(result.eval_loss, rel=1e-4)


def test_minilm_smoke_run_on_bbc_news():
    splits = load_dataset()
    rows = proxy_subset(splits.train, 0.02)
    result = train_and_evaluate(LoraHyperparams(rank=8, learning_rate=3e-3, batch_size=8), rows,
                                splits.validation[:32], task="classification", label_names=splits.label_names,
                                settings=TrainSettings(max_length=64, eval_points=2))
    assert len(rows) == 30 and result.train_examples == 30
    assert result.steps == 4 and [r["step"] for r in result.trajectory] == [2, 4]
    assert math.isfinite(result.eval_loss) and 0 <= result.metric <= 1


def test_bad_model_inputs_name_the_field(tiny_llama, tokenizer):
    with pytest.raises(InputError) as err:
        check_model("/no/such/model")
    assert err.value.field == "model"
    with pytest.raises(InputError) as err:
        build_peft_model(tiny_llama, LoraHyperparams(), task="causal", tokenizer=tokenizer,
                         target_modules=["no_such_module"])
    assert err.value.field == "target_modules"


def _toy_splits(rows):
    return DatasetSplits(task="classification", train=rows, validation=rows, test=[],
                         label_names=["bad", "good"], name="toy")


def test_objective_runs_in_a_study_and_records_attributes(tiny_bert, tokenizer, sentiment_rows):
    space = FixedChoices(rank=[2, 4], alpha_ratio=[2.0], learning_rate=[1e-2], batch_size=[8])
    objective = LoraObjective(space, _toy_splits(sentiment_rows), model=tiny_bert, tokenizer=tokenizer,
                              proxy_fraction=0.5, settings=TrainSettings(max_length=16, eval_points=2))
    assert objective.direction == "maximize"
    study = optuna.create_study(direction=objective.direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE and 0 <= trial.value <= 1
        attrs = trial.user_attrs
        assert attrs["metric_name"] == "accuracy" and attrs["train_examples"] == 12
        assert attrs["hyperparams"]["alpha"] == 2.0 * trial.params["rank"]
        assert [r["step"] for r in attrs["trajectory"]] == [2, 4]  # 12 rows: at least MIN_STEPS steps
        assert trial.intermediate_values == {r["step"]: r["accuracy"] for r in attrs["trajectory"]}
        assert attrs["trajectory"][-1]["accuracy"] == trial.value and attrs["train_seconds"] > 0


def test_objective_records_failed_trials_without_a_value(tiny_bert, tokenizer, sentiment_rows):
    space = FixedChoices(learning_rate=[1e3], batch_size=[4])
    objective = LoraObjective(space, _toy_splits(sentiment_rows), model=tiny_bert, tokenizer=tokenizer,
                              proxy_fraction=1.0, settings=FAST)
    study = optuna.create_study(direction=objective.direction)
    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.value is None
    assert trial.user_attrs["fail_reason"].startswith("diverged: loss")


def test_objective_lets_the_pruner_stop_a_trial(tiny_bert, tokenizer, sentiment_rows):
    space = FixedChoices(batch_size=[4])
    objective = LoraObjective(space, _toy_splits(sentiment_rows), model=tiny_bert, tokenizer=tokenizer,
                              proxy_fraction=1.0, settings=FAST)
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never 2: prune at the first report
    study = optuna.create_study(direction=objective.direction, pruner=always)
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert [r["step"] for r in trial.user_attrs["trajectory"]] == [4]


def test_a_tiny_subset_still_trains_and_configs_differ(tiny_bert, tokenizer, sentiment_rows):
    """Six rows at batch 8 were one optimizer step, taken at a warmup learning rate of 0: every config scored the
    same. Now a run takes at least ``min_steps`` steps, and its last step never has a learning rate of 0."""
    rows = sentiment_rows[:3] + sentiment_rows[-3:]
    settings = TrainSettings(max_length=16, eval_points=1)

    def loss(lr: float, **kw) -> tuple[float, int]:
        result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=lr, batch_size=8), rows, sentiment_rows,
                                    task="classification", model=tiny_bert, tokenizer=tokenizer, label_names=["0", "1"],
                                    settings=dataclasses.replace(settings, **kw))
        return result.eval_loss, result.steps

    (slow, steps), (fast, _) = loss(1e-5), loss(5e-2)
    assert steps == settings.min_steps >= 4
    assert abs(slow - fast) > 1e-3
    untrained, one = loss(1e-9, min_steps=1), loss(5e-2, min_steps=1)
    assert one[1] == 1 and abs(one[0] - untrained[0]) > 1e-4  # the single step did change the model
