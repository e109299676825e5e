"""``--sampler auto``: its rule, and that each plan runs exactly the samplers it names (the sampler contract for
``auto`` and its memory plan is in test_contract.py)."""

from __future__ import annotations

import optuna
import pytest

from lmtune.lora.config import LoraRunConfig
from lmtune.runtime.loop import run_trials
from lmtune.samplers.auto import PLANS, AutoSampler, choose_plan
from lmtune.samplers.registry import DEFAULT_SAMPLER, REGISTRY, SAMPLERS, make_sampler
from tests.samplers.test_language_bo_plus import SPACE, objective, source

optuna.logging.set_verbosity(optuna.logging.WARNING)


def configs(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def lbo_options(encoders, tmp_path) -> dict:
    return {"encoder": encoders["bert"], "cache_dir": tmp_path / "cache", "mll_steps": 20, "warm_mll_steps": 5}


def test_the_rule_runs_the_gp_without_memory_and_language_bo_plus_with_it():
    assert choose_plan(memory=False) == "gp"
    assert choose_plan(memory=True) == "language-bo+" and PLANS["language-bo+"].lead is None
    assert REGISTRY["language-bo+"].options["memory_gate"] == "parameter"  # the gate the design chose
    assert DEFAULT_SAMPLER == "auto" and "auto" in SAMPLERS and LoraRunConfig().sampler == "auto"
    assert all(f"auto-{plan}" in REGISTRY for plan in PLANS)  # each plan is a method bench samplers can replay


def test_without_memory_auto_proposes_what_the_gp_proposes(encoders, tmp_path):
    runs = []
    for name in ("auto", "gp"):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(
            name, space=SPACE, seed=3, n_startup_trials=3, **(lbo_options(encoders, tmp_path) if name == "auto"
                                                                else {})))
        run_trials(study, objective, 9)
        runs.append(configs(study))
    assert runs[0] == runs[1]


def test_with_memory_auto_proposes_what_language_bo_plus_with_that_memory_proposes(encoders, tmp_path):
    memory = (source(count=60),)
    runs = []
    for name in ("auto", "language-bo+"):
        sampler = make_sampler(name, space=SPACE, seed=1, n_startup_trials=3, transfer=memory,
                               **lbo_options(encoders, tmp_path))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        run_trials(study, objective, 6)
        runs.append(configs(study))
    assert runs[0] == runs[1]
    assert sampler.memory_report()["sources"] == ["past"]
    auto = make_sampler("auto", space=SPACE, seed=1, transfer=memory, **lbo_options(encoders, tmp_path))
    assert auto.describe() == "auto (plan language-bo+: language-bo+; memory of 1 study)"
    assert auto.memory_report()["sources"] == ["past"]


def test_a_plan_with_a_lead_hands_over_by_trial_number(encoders, tmp_path):
    """The plans that start with language-bo+ and hand over to the GP (candidates of the design) keep both
    samplers' rules: the lead's trials are language-bo+'s, memory and all, and the GP never repeats them."""
    memory = (source(count=60),)
    auto = make_sampler("auto-memory-then-gp-5", space=SPACE, seed=1, n_startup_trials=3, transfer=memory,
                        **lbo_options(encoders, tmp_path))
    assert "language-bo+ for the first 5 trials, then gp" in auto.describe()
    study = optuna.create_study(direction="maximize", sampler=auto)
    run_trials(study, objective, 8)
    alone = optuna.create_study(direction="maximize", sampler=make_sampler(
        "language-bo+", space=SPACE, seed=1, n_startup_trials=3, transfer=memory, **lbo_options(encoders, tmp_path)))
    run_trials(alone, objective, 5)
    assert configs(study)[:5] == configs(alone)
    assert auto._for(study.trials[5]) is auto.main and auto._for(study.trials[0]) is auto.lead
    assert len(set(configs(study))) == 8


def test_an_unknown_plan_is_refused():
    with pytest.raises(ValueError, match="unknown plan 'oracle'; allowed: gp, "):
        AutoSampler(SPACE, make_sampler, plan="oracle")
