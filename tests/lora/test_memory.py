"""Which earlier studies and tables a LoRA search remembers (``memory``): found, checked, never the study itself."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import optuna
import pytest

from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.lora.config import LoraRunConfig
from lmtune.lora.memory import MIN_FINISHED, resolve_memory
from lmtune.lora.search import job_config, resolve_space
from lmtune.runtime.study import open_study, publish_job
from lmtune.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[2]
ARITH_SFT = ROOT / "benchmarks" / "data" / "arith-sft.json.gz"


def past_study(storage: str, name: str, space: dict, finished: int, command: str = "lora") -> None:
    """A study as ``lmtune lora`` leaves one: its space and job stored, ``finished`` complete trials."""
    searched = SearchSpace.from_stored(space)
    study = open_study(name, storage=storage, direction="minimize", attrs={"space": space},
                       info={"dataset": "reviews.csv", "task": "classification"})
    publish_job(study, command, f"lmtune.{command}.tune:worker_parts", {}, 10)
    for i, config in enumerate(islice(searched.iter_pool(), finished)):
        params = {p.name: config[p.name] for p in searched.params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=searched.distributions(),
                                                  value=1.0 / (i + 1)))


def old_spelling(space: SearchSpace) -> dict:
    """A space as lmtune stored it before ordered parameters: every number categorical, no format."""
    return {"name": space.name, "fixed": dict(space.fixed),
            "params": {p.name: {"type": "categorical", "choices": list(p.values())} for p in space.params}}


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """One storage for every test of the module: finding memory only reads it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('memory') / 'studies.db'}"
    small = load_space("lora-small")
    past_study(url, "earlier", small.to_dict(), MIN_FINISHED)
    past_study(url, "before-ordered", old_spelling(small), MIN_FINISHED + 2)  # an older lmtune's study
    past_study(url, "no-dropout", small.with_fixed(dropout=0.0).to_dict(), 8)  # searches other parameters
    past_study(url, "young", small.to_dict(), MIN_FINISHED - 1)  # too few finished trials for auto
    past_study(url, "not-lora", small.to_dict(), 8, command="infer")
    past_study(url, "this", small.to_dict(), 8)  # the study being resumed
    return url


def memory_of(storage: str, **fields):
    cfg = build_config(LoraRunConfig, **{"sampler": "language-bo+", "storage": storage, "study_name": "this",
                                         **fields})
    return cfg, resolve_memory(cfg, resolve_space(cfg))


def test_auto_remembers_every_compatible_earlier_lora_study_never_the_study_itself(storage):
    cfg, memory = memory_of(storage)
    assert [s.name for s in memory.sources] == ["earlier", "before-ordered"]
    assert [len(s.values) for s in memory.sources] == [MIN_FINISHED, MIN_FINISHED + 2]
    assert job_config(cfg, memory)["memory"] == ["earlier", "before-ordered"]  # workers find the same
    summary = memory.summary({"kept": True})
    assert summary["requested"] == ["auto"] and summary["gate"] == {"kept": True}
    assert summary["used"] == [{"name": "earlier", "from": "earlier", "results": MIN_FINISHED},
                               {"name": "before-ordered", "from": "before-ordered", "results": MIN_FINISHED + 2}]


def test_a_worker_rebuilds_the_memory_its_job_names(storage):
    cfg, memory = memory_of(storage)
    job = job_config(cfg, memory)
    _, again = memory_of(storage, memory=job["memory"])
    assert [s.fingerprint() for s in again.sources] == [s.fingerprint() for s in memory.sources]


def test_memory_none_opts_out_and_other_samplers_remember_nothing(storage, tmp_path):
    _, memory = memory_of(storage, memory=["none"])
    assert memory.sources == () and memory.job_value == ["none"]
    _, memory = memory_of(storage, sampler="tpe")
    assert memory.sources == ()
    _, memory = memory_of(f"sqlite:///{tmp_path / 'fresh.db'}")  # a storage not created yet: nothing to remember
    assert memory.sources == () and not (tmp_path / "fresh.db").exists()


def test_listed_studies_and_table_files_are_remembered_as_given(storage):
    _, memory = memory_of(storage, memory=["young", str(ARITH_SFT)])
    assert [s.name for s in memory.sources] == ["young", "arith-sft"]
    assert memory.specs == ("young", str(ARITH_SFT.resolve()))
    assert len(memory.sources[1].values) == 800
    _, memory = memory_of(storage, memory=["auto", str(ARITH_SFT)])
    assert [s.name for s in memory.sources] == ["arith-sft", "earlier", "before-ordered"]


@pytest.mark.parametrize(("memory", "words"), [
    (["this"], "is this study; a study never remembers itself"),
    (["no-dropout"], "only in this study: dropout"),
    (["missing"], "neither a table file nor a study"),
])
def test_a_listed_memory_that_cannot_be_used_is_refused_naming_the_field(storage, memory, words):
    with pytest.raises(InputError) as err:
        memory_of(storage, memory=memory)
    assert err.value.field == "memory" and words in err.value.message, err.value.message
