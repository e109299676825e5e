"""A proxy sized by optimizer steps: exact steps for every batch size, its default (a share of each config's own
full run), and its cost next to a full run."""

import optuna
import pytest

from lmtune import attrs
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.proxy import (
    DEFAULT_SHARE,
    MAX_PROXY_STEPS,
    EpochsProxy,
    ShareProxy,
    StepsProxy,
    default_share,
    full_run_steps,
    plan_proxy,
)
from lmtune.finetune.train import TrainSettings, train_and_evaluate
from lmtune.space import Categorical, SearchSpace


def space(*batch_sizes: int) -> SearchSpace:
    return SearchSpace((Categorical("batch_size", batch_sizes), Categorical("learning_rate", (1e-3, 1e-2))),
                       {"rank": 4})


@pytest.mark.parametrize("batch_size", [1, 4, 8, 32])
def test_a_step_sized_run_takes_the_requested_steps_at_every_batch_size(tiny_bert, tokenizer, sentiment_rows,
                                                                         batch_size):
    """24 rows: batch 1 takes 9 of them, batch 32 passes over them more than 3 times; both take 9 steps."""
    seen = []
    result = train_and_evaluate(LoraHyperparams(rank=4, learning_rate=1e-2, batch_size=batch_size),
                                sentiment_rows, sentiment_rows[:6], task="classification", model=tiny_bert,
                                tokenizer=tokenizer, on_step=lambda step, total: seen.append((step, total)),
                                settings=TrainSettings(max_length=16, epochs=5, steps=9, eval_points=3))
    assert result.steps == 9 and len(result.step_losses) == 9
    assert seen == [(step, 9) for step in range(1, 10)]
    assert [r["step"] for r in result.trajectory] == [3, 6, 9]  # reports at regular steps
    assert all("eval_loss" in r and "accuracy" in r for r in result.trajectory)


def test_the_objective_records_steps_and_ranks_by_the_chosen_metric(tiny_bert, tokenizer, sentiment_rows):
    from lmtune.finetune.data import DatasetSplits

    splits = DatasetSplits("classification", sentiment_rows, sentiment_rows[:8], sentiment_rows[:8], None, "toy")
    grid = space(4, 16)
    objective = LoraObjective(grid, splits, model=tiny_bert, tokenizer=tokenizer, proxy_fraction=1.0,
                              settings=TrainSettings(max_length=16, steps=6, eval_points=2), metric="eval_loss")
    assert objective.direction == "minimize"
    study = optuna.create_study(direction=objective.direction)
    study.optimize(objective, n_trials=2)
    for trial in study.trials:
        assert trial.user_attrs[attrs.TRAIN_STEPS] == 6
        last = trial.user_attrs[attrs.TRAJECTORY][-1]
        assert trial.value == last["eval_loss"] and "accuracy" in last
        assert sorted(trial.intermediate_values) == [3, 6]
    with pytest.raises(ValueError, match="neither accuracy nor eval_loss"):  # a config's is checked where read
        LoraObjective(grid, splits, model=tiny_bert, tokenizer=tokenizer, metric="exact_match")


def test_with_a_share_plan_each_trial_takes_its_batch_sizes_steps_and_reports_on_examples(tiny_bert, tokenizer,
                                                                                          sentiment_rows):
    from lmtune.finetune.data import DatasetSplits

    splits = DatasetSplits("classification", sentiment_rows, sentiment_rows[:8], sentiment_rows[:8], None, "toy")
    grid = space(2, 8)
    # 24 rows: 6 steps at batch 2, 2 at batch 8
    plan = plan_proxy(len(sentiment_rows), grid, ShareProxy(share=0.5), metric="eval_loss")
    objective = LoraObjective(grid, splits, model=tiny_bert, tokenizer=tokenizer, proxy_fraction=plan.fraction,
                              settings=TrainSettings(max_length=16, eval_points=2), metric="eval_loss", plan=plan)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(objective, n_trials=4)
    for trial in study.trials:
        batch = trial.params["batch_size"]
        assert trial.user_attrs[attrs.TRAIN_STEPS] == plan.steps_at(batch) == {2: 6, 8: 2}[batch]
        assert sorted(trial.intermediate_values) == [batch * plan.steps_at(batch) // 2, batch * plan.steps_at(batch)]


def test_the_default_gives_every_batch_size_the_same_share_of_its_own_full_run():
    """BBC News: 1,489 training rows, lora-small's batch sizes 4-32: 30% of each config's full run, so a batch-4
    config takes 8 times the steps of a batch-32 one and every config sees about 447 examples."""
    plan = plan_proxy(1489, space(4, 8, 16, 32))
    assert plan.share == DEFAULT_SHARE == 0.3 and plan.steps is None and plan.fraction == 1.0
    assert {b: plan.steps_at(b) for b in (4, 8, 16, 32)} == {4: 112, 8: 57, 16: 29, 32: 15}
    assert all(plan.trial_steps(b) == plan.steps_at(b) for b in (4, 8, 16, 32))
    assert all(0.3 <= plan.cost_share(b) <= 0.32 for b in (4, 8, 16, 32))
    assert all(440 <= plan.steps_at(b) * b <= 480 for b in (4, 8, 16, 32))


def test_the_default_share_is_capped_on_large_data():
    assert default_share(1489, space(8, 16)) == DEFAULT_SHARE
    huge = plan_proxy(10_000_000, space(8, 16))  # 30% would be 250,000 steps at batch 12
    assert huge.share == pytest.approx(MAX_PROXY_STEPS * 12 / 10_000_000)
    assert huge.steps_at(8) == pytest.approx(MAX_PROXY_STEPS * 12 / 8, abs=1)
    tiny = plan_proxy(10, space(4), min_steps=4)  # a share of 3 steps is raised to the minimum
    assert tiny.steps_at(4) == 4 == full_run_steps(10, 4, 1.0) + 1


def test_pruner_rungs_meet_across_batch_sizes():
    """Reports lie on the axis of training examples when trials take different steps, on steps otherwise."""
    plan = plan_proxy(1489, space(4, 32))
    assert plan.resource(28, 4) == 112 and plan.resource(4, 32) == 128
    first, last = plan.rungs(4)
    assert first == min(28 * 4, 4 * 32) and last == max(112 * 4, 15 * 32)
    fixed = plan_proxy(1489, space(4, 32), StepsProxy(steps=40))
    assert fixed.resource(10, 32) == 10 and fixed.rungs(4) == (10, 40)


def test_a_plan_says_what_a_trial_costs_next_to_a_full_run():
    plan = plan_proxy(1000, space(4, 32), StepsProxy(steps=10), epochs=1.0)
    assert plan.steps_at(4) == plan.steps_at(32) == 10 == plan.longest
    assert plan.cost_share(4) == pytest.approx(10 / 250) and plan.cost_share(32) == pytest.approx(10 / 32)
    assert plan.rows == 320 and plan.fraction == pytest.approx(0.32)  # batch 32 sees no row twice
    assert plan.to_dict()["mean_cost_share"] == pytest.approx((10 / 250 + 10 / 32) / 2, abs=1e-4)

    tiny = plan_proxy(50, space(4, 32), StepsProxy(steps=10), fraction=0.5)
    assert tiny.rows == 25 and any("longer than a full run" in n for n in tiny.notes)
    assert any("passes" in n for n in tiny.notes)

    epochs = plan_proxy(1000, space(4, 32), EpochsProxy(), epochs=2.0)  # the proxy of the benchmark tables
    assert epochs.steps is None and epochs.fraction == 0.1 and epochs.rows == 100
    assert epochs.steps_at(4) == 50 and epochs.steps_at(32) == 8 and epochs.cost_share(4) == pytest.approx(0.1)


def test_a_share_given_is_the_rule_and_the_default_says_so():
    assert plan_proxy(1489, space(4, 32)).rule == "30% of each config's full run (default)"
    assert plan_proxy(1489, space(4, 32), ShareProxy(share=0.5)).rule == "50% of each config's full run"
    assert plan_proxy(1489, space(4, 32), StepsProxy(steps=40)).rule == "40 steps"
