"""The Python API does what the command does, and takes any Optuna sampler object."""

import json

import optuna
import pytest

import lmtune
from lmtune.errors import InputError


def test_tune_lora_accepts_any_optuna_sampler(tmp_path):
    rows = [f"{'good' if i % 2 else 'bad'} review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    results = lmtune.tune_lora(dataset=str(tmp_path / "reviews.csv"), trials=3, max_length=16, proxy_fraction=0.5,
                               storage=storage, study_name="api", output_dir=tmp_path / "out", final_train=False,
                               sampler=optuna.samplers.BruteForceSampler(seed=0))
    assert results.sampler == "BruteForceSampler"
    study = optuna.load_study(study_name="api", storage=storage)
    assert len(study.trials) == 3 and len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    assert json.loads((tmp_path / "out" / "results.json").read_text())["best"]["trial"] == study.best_trial.number
    summary = (tmp_path / "out" / "summary.md").read_text()
    learned = summary.split("## What the study learned\n\n")[1].split("\n\n")[0]
    assert learned.startswith("- ") and learned.count("\n- ") >= 2  # plain sentences from the TCS report
    assert "Too few completed trials with different values to say how rank matters." in learned


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_bert, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_step_sized_search_with_successive_halving_and_a_step_budget(tmp_path, tiny_model_dir):
    rows = [f"{'good' if i % 2 else 'bad'} review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    options = dict(dataset=str(tmp_path / "reviews.csv"), model=tiny_model_dir, max_length=16,
                   storage=f"sqlite:///{tmp_path / 'mf.db'}",
                   study_name="mf", output_dir=tmp_path / "out", startup_trials=2)
    result = lmtune.tune_lora(**options, trials=50, proxy="steps:8", pruner="successive-halving", budget_steps=40)
    study = optuna.load_study(study_name="mf", storage=options["storage"])
    steps = [t.user_attrs["train_steps"] for t in study.trials]
    assert all(s == 8 for t, s in zip(study.trials, steps, strict=True) if t.state.name == "COMPLETE")
    assert sum(steps) == result.spent["steps"] <= 40 < sum(steps) + 8  # stopped when a whole trial no longer fit
    assert result.spent["trials"] == len(study.trials) < 50
    assert result.proxy["steps"] == 8 and result.proxy["metric"] == "eval_loss"
    assert result.proxy["cost_share_by_batch"][16] == pytest.approx(8 / 3, abs=1e-3)  # 42 rows: 3 steps at batch 16
    assert set(result.best["proxy_metrics"]) == {"accuracy", "eval_loss"}
    assert result.best["proxy_metric"] == result.best["proxy_metrics"]["eval_loss"]
    assert result.final["metric_name"] == "accuracy" and 0 <= result.final["test_metric"] <= 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "pruned by successive-halving" in summary and "budget 40 steps" in summary
    assert "| accuracy | eval_loss |" in summary
    for changed, field in (({"pruner": "hyperband"}, "pruner"), ({"proxy": "steps:6"}, "proxy")):
        with pytest.raises(InputError) as error:  # a resumed study keeps its proxy and its schedule
            lmtune.tune_lora(**{**options, "proxy": "steps:8", "pruner": "successive-halving", **changed},
                             trials=60, final_train=False)
        assert error.value.field == field
