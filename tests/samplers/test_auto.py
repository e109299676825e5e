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


def test_the_rule_runs_the_gp_without_memory_and_the_memory_plan_with_it():
    assert choose_plan(memory=False) == "gp"
    assert PLANS[choose_plan(memory=True)].lead == "language-bo+"
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


def test_with_memory_language_bo_plus_leads_then_the_gp_takes_over(encoders, tmp_path):
    memory = (source(count=60),)
    auto = make_sampler("auto", space=SPACE, seed=1, n_startup_trials=3, transfer=memory,
                        **lbo_options(encoders, tmp_path))
    assert isinstance(auto, AutoSampler) and auto.plan_name == choose_plan(memory=True)
    handoff = auto.plan.handoff
    assert "language-bo+ for the first" in auto.describe() and "memory of 1 study" in auto.describe()
    study = optuna.create_study(direction="maximize", sampler=auto)
    run_trials(study, objective, handoff + 3)
    alone = optuna.create_study(direction="maximize", sampler=make_sampler(
        "language-bo+", space=SPACE, seed=1, n_startup_trials=3, transfer=memory, **lbo_options(encoders, tmp_path)))
    run_trials(alone, objective, handoff)
    assert configs(study)[:handoff] == configs(alone)  # the lead trials are language-bo+'s, memory and all
    assert auto.memory_report()["sources"] == ["past"]
    trial = study.trials[handoff]
    assert auto._for(trial) is auto.main and auto._for(study.trials[0]) is auto.lead
    assert len(set(configs(study))) == handoff + 3  # the gp never repeats a config the lead tried


def test_an_unknown_plan_is_refused():
    with pytest.raises(ValueError, match="unknown plan 'oracle'; allowed: gp, "):
        AutoSampler(SPACE, make_sampler, plan="oracle")
