import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from lmtune._compat import storage_of, trial_id
from lmtune.errors import InputError, TrialFailed
from lmtune.runtime.loop import Interrupted, fail_stale_trials, run_trials
from lmtune.runtime.storage import make_storage, mask_url
from lmtune.runtime.study import open_study
from lmtune.runtime.trials import counted_trials, describe_failure, is_budget_stub, is_retry, requeue_interrupted
from lmtune.samplers.registry import SAMPLERS, make_sampler
from lmtune.space import load_space

SPACE = load_space("lora-small")


def quadratic(trial: optuna.Trial) -> float:
    config = SPACE.suggest(trial)
    return -((config["rank"] - 16) ** 2) - 1e3 * abs(config["learning_rate"] - 1e-3)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


# Pool samplers run in test_cli.py; the agent (space and endpoint) in tests/samplers/test_agent.py; auto (a space
# and maybe memory) in tests/samplers/test_auto.py.
@pytest.mark.parametrize("name", [s for s in SAMPLERS if s in ("random", "tpe", "gp", "botorch")])
def test_every_named_optuna_sampler_runs_on_the_space(storage, name):
    study = open_study(f"s-{name}", storage=storage, sampler=make_sampler(name, seed=1, n_startup_trials=3))
    run_trials(study, quadratic, 6)
    assert len(counted_trials(study)) == 6
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(SPACE.validate({**t.params, "variant": "lora"}) for t in study.trials)


def test_an_unknown_sampler_name_is_refused():
    """The library call refuses it plainly; a config names the field and what is allowed (tests/cli)."""
    with pytest.raises(ValueError, match="unknown sampler 'cmaes-ish'") as err:
        make_sampler("cmaes-ish")
    assert not isinstance(err.value, InputError)


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


def test_sigterm_while_a_trial_is_being_created_records_that_trial_as_interrupted(storage, monkeypatch):
    """The signal lands inside ``study.ask``, after the trial was written: it is held, then the trial is failed
    as interrupted (not left RUNNING) and the run stops."""
    import os
    import signal

    study = open_study("ask", storage=storage, sampler=make_sampler("random", seed=0))
    ask = study.ask

    def ask_then_sigterm(*args, **kwargs):
        trial = ask(*args, **kwargs)
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return trial

    monkeypatch.setattr(study, "ask", ask_then_sigterm)
    with pytest.raises(Interrupted, match="1 of 3"):
        run_trials(study, quadratic, 3)
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL] and TrialState.RUNNING not in states
    assert study.trials[1].user_attrs["fail_reason"].startswith("interrupted")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) is not None


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


def test_trial_failing_for_its_own_reason_is_not_retried(storage):
    def always_nan(trial):
        SPACE.suggest(trial)
        trial.set_user_attr("fail_reason", "loss is NaN")
        raise TrialFailed("loss is NaN")

    study = open_study("nan", storage=storage, sampler=make_sampler("random", seed=0))
    assert run_trials(study, always_nan, 3) == 3
    assert len(study.trials) == 3 and all(t.state == TrialState.FAIL for t in study.trials)
    assert not any(is_retry(t) for t in study.trials)


def ask_and_die(study):
    """A trial whose worker records one heartbeat, then dies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    SPACE.suggest(trial)
    storage_of(study).record_heartbeat(trial_id(trial))
    return trial


def test_stale_trial_is_retried_once_and_counts_once(tmp_path):
    store = make_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=2)
    study = open_study("stale", storage=store, sampler=make_sampler("random", seed=0))
    dead = ask_and_die(study)
    time.sleep(3.2)  # SQLite timestamps have whole seconds
    fail_stale_trials(study)
    retry = study.trials[-1]
    assert study.trials[dead.number].state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == dead.number
    assert describe_failure(study.trials[dead.number]).startswith("stale:")

    dead_again = ask_and_die(study)  # pops the retry, whose worker dies too
    assert dead_again.number == retry.number
    time.sleep(3.2)  # SQLite timestamps have whole seconds
    fail_stale_trials(study)
    assert study.trials[retry.number].state == TrialState.FAIL
    assert not [t for t in study.trials if t.state == TrialState.WAITING]  # not retried a second time
    assert [t.number for t in counted_trials(study)] == [retry.number]  # the pair counts once

    assert run_trials(study, quadratic, 3) == 2
    assert [t.state for t in counted_trials(study)] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


def test_a_trial_created_after_the_budget_was_taken_does_not_run(storage):
    """Two workers see a free slot of a budget of one; the other one asks first. This one's trial is a stub."""
    study = open_study("race", storage=storage, sampler=make_sampler("random", seed=0))
    other = []

    def other_worker_asks_between_check_and_ask(_: optuna.Study) -> bool:
        if not other:
            other.append(study.ask())  # the other worker's trial takes the slot
            return False
        study.tell(other[0], 1.0)  # ... and finishes; this worker has nothing left to do
        return True

    assert run_trials(study, quadratic, 1, stop_when=other_worker_asks_between_check_and_ask) == 0
    stub = study.trials[other[0].number + 1]
    assert is_budget_stub(stub) and not stub.params and stub.state == TrialState.FAIL
    assert [t.number for t in counted_trials(study)] == [other[0].number]


def test_journal_file_storage_runs_and_resumes(tmp_path):
    url = f"journal:///{tmp_path / 'studies.log'}"
    study = open_study("j", storage=url, sampler=make_sampler("tpe", seed=0))
    assert run_trials(study, quadratic, 3) == 3
    again = open_study("j", storage=url, sampler=make_sampler("tpe", seed=0))
    assert run_trials(again, quadratic, 5) == 2 and len(counted_trials(again)) == 5


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://me:s3cr%40t@db:5432/x", "postgresql+psycopg://me:***@db:5432/x"),
    ("postgresql://me:pa%2Fss@db/x?sslpassword=zz&a=1", "postgresql://me:***@db/x?sslpassword=***&a=1"),
    ("postgresql://me:pa/ss@db/x?sslpassword=zz&a=1", "postgresql://***@db/x?***"),  # ambiguous: shown least
    ("postgresql://me@db/x", "postgresql://me@db/x"),
    ("postgresql://lmtune:Ab@Secret99@127.0.0.1:25432/qa", "postgresql://***@127.0.0.1:25432/qa"),
    ("postgresql://qa:p@127.0.0.1:1/x", "postgresql://qa:***@127.0.0.1:1/x"),
    ("postgresql://qa:P@ss:w/rd%41#x@127.0.0.1:18432/qadb", "postgresql://***@127.0.0.1:18432/qadb"),
    ("sqlite:///lmtune.db", "sqlite:///lmtune.db"),
])
def test_passwords_are_masked_in_urls(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"heartbeat_interval": 0}, "heartbeat_interval"),
    ({"heartbeat_interval": 10, "grace_period": 10}, "grace_period"),
])
def test_heartbeat_settings_are_checked(tmp_path, kwargs, field):
    with pytest.raises(InputError) as err:
        make_storage(f"sqlite:///{tmp_path / 'x.db'}", **kwargs)
    assert err.value.field == field


def test_a_worker_that_wakes_to_find_its_trial_failed_as_stale_goes_on(storage):
    """A frozen worker's trial is failed as stale by another worker; the frozen one must not crash on waking."""
    study = open_study("frozen", storage=storage, sampler=make_sampler("random", seed=0))
    taken_over = []

    def objective(trial: optuna.Trial) -> float:
        value = quadratic(trial)
        if not taken_over:  # what another worker does while this one is frozen past the grace period
            storage_of(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)
            taken_over.append(trial.number)
        return value

    run_trials(study, objective, 3)
    states = {t.number: t.state for t in study.trials}
    assert states[taken_over[0]] == TrialState.FAIL
    assert [t.state for t in counted_trials(study)].count(TrialState.COMPLETE) == 2


def test_workers_interrupted_together_each_queue_their_own_trial_once():
    """Ctrl-C reaches every worker of ``lmtune worker --devices`` at once: each queues again only the trial it was
    running, so no interrupted trial is queued twice."""
    study = optuna.create_study()
    for worker in ("host:1", "host:2"):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
    assert requeue_interrupted(study, "host:1") == 1
    assert requeue_interrupted(study, "host:1") == 0
    assert requeue_interrupted(study, "host:2") == 1
    assert requeue_interrupted(study) == 0  # a later run's start finds both queued already
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == [0, 1]
