"""The Python API does what the command does, and takes any Optuna sampler object."""

import json

import optuna

import lmtune


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
