"""A pruned trial reaches every sampler family as an observation at its fidelity, not as a failure or as nothing."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from lmtune import _compat
from lmtune.samplers.fidelity import ObservingSampler, fidelity_values, observed_view
from lmtune.samplers.registry import make_sampler, optuna_sampler
from lmtune.space import Categorical, SearchSpace

SPACE = SearchSpace((Categorical("rank", (4, 16, 64)), Categorical("learning_rate", (1e-4, 1e-3, 1e-2))),
                    {"variant": "lora"}, "fidelity")


def curve(final: float, steps=(10, 20, 30, 40)) -> dict[int, float]:
    """A learning curve that rises to ``final`` at step 40."""
    return {s: final - 0.1 * (40 - s) / 10 for s in steps}


def add(study, params: dict, state: TrialState, final: float, last_step: int = 40) -> None:
    values = {s: v for s, v in curve(final).items() if s <= last_step}
    study.add_trial(create_trial(params=params, distributions=SPACE.distributions(), state=state,
                                 value=final if state == TrialState.COMPLETE else None, intermediate_values=values))


@pytest.fixture
def study():
    """Two complete trials (gain 0.3 from step 10 to the end) and two pruned at step 10."""
    study = optuna.create_study(direction="maximize")
    add(study, {"rank": 4, "learning_rate": 1e-3}, TrialState.COMPLETE, 0.9)
    add(study, {"rank": 16, "learning_rate": 1e-3}, TrialState.COMPLETE, 0.7)
    add(study, {"rank": 64, "learning_rate": 1e-2}, TrialState.PRUNED, 0.8, last_step=10)  # reported 0.5 at 10
    add(study, {"rank": 4, "learning_rate": 1e-4}, TrialState.PRUNED, 0.4, last_step=10)  # reported 0.1 at 10
    return study


def test_a_pruned_trial_is_its_last_report_moved_by_the_gain_complete_trials_made_after_it(study):
    values = fidelity_values(study.trials)
    assert values == {2: pytest.approx(0.5 + 0.3), 3: pytest.approx(0.1 + 0.3)}
    # before any trial completes, the last reported value itself
    assert fidelity_values([study.trials[2]]) == {2: pytest.approx(0.5)}


def test_the_view_shows_pruned_trials_as_complete_and_leaves_the_study_alone(study):
    view = observed_view(study)
    shown = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.number for t in shown] == [0, 1, 2, 3] and shown[2].value == pytest.approx(0.8)
    assert view._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=False) == []
    assert [t.state for t in study.trials][2:] == [TrialState.PRUNED, TrialState.PRUNED]
    assert view.direction == study.direction and view.study_name == study.study_name


class Spy:
    """Records every trial list the view hands a sampler."""

    def __init__(self, monkeypatch):
        self.seen: list[dict[int, float]] = []
        original = _compat.TrialsView._select

        def select(view, trials, states):
            shown = original(view, trials, states)
            self.seen.append({t.number: t.value for t in shown if t.state == TrialState.COMPLETE})
            return shown

        monkeypatch.setattr(_compat.TrialsView, "_select", select)


@pytest.mark.parametrize("name", ["tpe", "gp", "botorch"])
def test_optunas_samplers_are_fed_the_fidelity_value(study, monkeypatch, name):
    spy = Spy(monkeypatch)
    sampler = ObservingSampler(optuna_sampler(name, 0, n_startup_trials=2))
    study.sampler = sampler
    trial = study.ask()
    SPACE.suggest(trial)
    assert spy.seen, f"{name} read no trials through the view"
    assert any(seen.get(2) == pytest.approx(0.8) and seen.get(3) == pytest.approx(0.4) for seen in spy.seen)


@pytest.mark.parametrize("name", ["gp", "botorch"])
def test_gp_samplers_model_pruned_trials_instead_of_ignoring_them(name):
    """Only pruned trials so far: the bare sampler has nothing to model, the wrapped one models them."""
    study = optuna.create_study(direction="maximize")
    for i, (rank, lr) in enumerate([(4, 1e-4), (16, 1e-3), (64, 1e-2)]):
        add(study, {"rank": rank, "learning_rate": lr}, TrialState.PRUNED, 0.5 + 0.1 * i, last_step=20)
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    bare = optuna_sampler(name, 0, n_startup_trials=2)
    space = bare.infer_relative_search_space(study, frozen) or SPACE.distributions()
    assert bare.sample_relative(study, frozen, space) == {}  # too few complete trials: random start-up
    wrapped = ObservingSampler(optuna_sampler(name, 0, n_startup_trials=2))
    proposal = wrapped.sample_relative(study, frozen, space)
    assert set(proposal) == {"rank", "learning_rate"}


def test_every_lmtune_sampler_of_a_discrete_space_sees_through_the_view(study, monkeypatch):
    spy = Spy(monkeypatch)
    study.sampler = make_sampler("gp", seed=0, n_startup_trials=2, space=SPACE)
    trial = study.ask()
    SPACE.suggest(trial)
    assert any(seen.get(2) == pytest.approx(0.8) for seen in spy.seen)


@pytest.mark.parametrize("name", ["language-bo", "language-bo+no-transfer"])
def test_language_bo_observes_a_pruned_trial_at_its_fidelity(study, encoders, tmp_path, name):
    sampler = make_sampler(name, seed=0, n_startup_trials=2, space=SPACE, encoder=encoders["bert"],
                           cache_dir=tmp_path / "cache")
    add(study, {"rank": 64, "learning_rate": 1e-4}, TrialState.FAIL, 0.0, last_step=0)
    running = study.ask()
    observed, failed, _ = sampler._read_trials(study, study._storage.get_trial(running._trial_id))
    index = [SPACE.pool_index(t.params) for t in study.trials if t.params]
    assert observed == {index[0]: pytest.approx(0.9), index[1]: pytest.approx(0.7), index[2]: pytest.approx(0.8),
                        index[3]: pytest.approx(0.4)}
    assert failed == [index[4]]  # a failure is still imputed as the worst


def test_the_agents_fallback_sees_pruned_trials_at_their_fidelity(study, monkeypatch):
    """The AgentSampler reads pruned trials' curves in its summary; when it falls back, TPE sees them too."""
    spy = Spy(monkeypatch)
    sampler = make_sampler("agent", seed=0, n_startup_trials=2, space=SPACE, endpoint="http://127.0.0.1:9/v1",
                           model="none", check=False)
    study.sampler = sampler.fallback
    SPACE.suggest(study.ask())
    assert any(seen.get(2) == pytest.approx(0.8) and seen.get(3) == pytest.approx(0.4) for seen in spy.seen)


def test_minimizing_uses_the_same_gains(study):
    loss = optuna.create_study(direction="minimize")
    for t in study.trials:
        loss.add_trial(create_trial(params=t.params, distributions=t.distributions, state=t.state,
                                    value=None if t.value is None else 1 - t.value,
                                    intermediate_values={s: 1 - v for s, v in t.intermediate_values.items()}))
    assert fidelity_values(loss.trials) == {2: pytest.approx(0.2), 3: pytest.approx(0.6)}


def test_a_pruned_trial_that_reported_nothing_has_no_fidelity_value():
    study = optuna.create_study()
    study.add_trial(create_trial(params={"x": "a"}, distributions={"x": CategoricalDistribution(["a"])},
                                 state=TrialState.PRUNED))
    assert fidelity_values(study.trials) == {}
