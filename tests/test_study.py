import optuna
import pytest
from optuna.trial import TrialState

from lmtune.errors import InputError, TrialFailed
from lmtune.space import load_space
from lmtune.study import (
    SAMPLERS,
    Interrupted,
    counted_trials,
    make_sampler,
    open_study,
    run_trials,
)

SPACE = load_space("lora-small")


def quadratic(trial: optuna.Trial) -> float:
    config = SPACE.suggest(trial)
    return -((config["rank"] - 16) ** 2) - 1e3 * abs(config["learning_rate"] - 1e-3)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.mark.parametrize("name", [s for s in SAMPLERS if s != "language-bo"])  # language-bo: test_cli.py
def test_every_named_optuna_sampler_runs_on_the_space(storage, name):
    study = open_study(f"s-{name}", storage=storage, sampler=make_sampler(name, seed=1, n_startup_trials=3))
    run_trials(study, quadratic, 6)
    assert len(counted_trials(study)) == 6
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(SPACE.validate({**t.params, "variant": "lora"}) for t in study.trials)


def test_unknown_sampler_names_the_field():
    with pytest.raises(InputError) as err:
        make_sampler("cmaes-ish")
    assert err.value.field == "sampler" and "tpe" in err.value.message


def test_same_name_resumes_and_total_is_the_requested_count(storage):
    study = open_study("resume", storage=storage, sampler=make_sampler("tpe", seed=0))
    assert run_trials(study, quadratic, 4) == 4
    again = open_study("resume", storage=storage, sampler=make_sampler("tpe", seed=0))
    assert run_trials(again, quadratic, 7) == 3
    assert run_trials(again, quadratic, 7) == 0
    assert len(again.trials) == 7


def test_interrupt_records_the_trial_and_the_next_run_retries_it(storage):
    calls = {"n": 0}

    def interrupted_at_third(trial):
        calls["n"] += 1
        value = quadratic(trial)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return value

    study = open_study("interrupt", storage=storage, sampler=make_sampler("random", seed=0))
    with pytest.raises(Interrupted, match="2 of 5"):
        run_trials(study, interrupted_at_third, 5)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("interrupted")
    interrupted_params = failed[0].params

    resumed = open_study("interrupt", storage=storage, sampler=make_sampler("random", seed=0))
    run_trials(resumed, quadratic, 5)
    counted = counted_trials(resumed)
    assert len(counted) == 5 and all(t.state == TrialState.COMPLETE for t in counted)
    retry = next(t for t in resumed.trials if t.user_attrs.get("retry_of") == failed[0].number)
    assert retry.params == interrupted_params and retry.state == TrialState.COMPLETE


def test_failed_trials_are_recorded_with_reason_and_count(storage):
    def fails_on_big_rank(trial):
        config = SPACE.suggest(trial)
        if config["rank"] >= 16:
            trial.set_user_attr("fail_reason", "diverged")
            raise TrialFailed("diverged")
        return float(config["rank"])

    study = open_study("fails", storage=storage, sampler=make_sampler("random", seed=3))
    run_trials(study, fails_on_big_rank, 12)
    states = [t.state for t in study.trials]
    assert len(study.trials) == 12 and TrialState.FAIL in states and TrialState.COMPLETE in states
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert t.value is None and t.user_attrs["fail_reason"] == "diverged"


def test_resume_with_other_direction_or_setup_is_refused(storage):
    open_study("fixed", storage=storage, direction="maximize", attrs={"model": "a"})
    with pytest.raises(InputError) as err:
        open_study("fixed", storage=storage, direction="minimize")
    assert err.value.field == "study_name"
    with pytest.raises(InputError) as err:
        open_study("fixed", storage=storage, direction="maximize", attrs={"model": "b"})
    assert err.value.field == "model"


def test_bad_storage_url_names_the_field():
    with pytest.raises(InputError) as err:
        open_study("x", storage="lmtune.db")
    assert err.value.field == "storage"
