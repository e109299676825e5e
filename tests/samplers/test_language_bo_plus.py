"""language-bo+: the numbers-and-text kernel, memory of past studies, the space-filling start.

Tiny encoders built from a config (tests/samplers/conftest.py) keep the file fast; the numeric parts are real
BoTorch/GPyTorch fits.
"""

import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
import scipy.stats
import torch

from lmtune.errors import InputError
from lmtune.runtime.loop import run_trials
from lmtune.runtime.study import open_study
from lmtune.samplers.language_bo.numeric import NumericFeatures, space_filling
from lmtune.samplers.language_bo.plus import LanguageBOPlusSampler
from lmtune.samplers.language_bo.surrogate import Surrogate
from lmtune.samplers.language_bo.transfer import (
    check_compatible,
    load_source,
    normal_scores,
    source_from_rows,
)
from lmtune.samplers.registry import make_sampler
from lmtune.space import Categorical, Ordered, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: 180 configs over four numbers and a name.
SPACE = SearchSpace(
    (
        Ordered("rank", (2, 4, 8, 16, 32), log=True),
        Ordered("learning_rate", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), log=True),
        Ordered("dropout", (0.0, 0.1, 0.2)),
        Categorical("variant", ("lora", "dora")),
    ),
    {"alpha_ratio": 2.0},
    "plus-test",
)


def numeric_score(config) -> float:
    """Depends on the numbers only: best at learning rate 3e-4, rank 8, no dropout."""
    return (-(math.log10(config["learning_rate"]) + 3.5) ** 2 - 0.1 * (math.log2(config["rank"]) - 3) ** 2
            - config["dropout"])


def objective(trial: optuna.Trial) -> float:
    return numeric_score(SPACE.suggest(trial))


def make(encoders, tmp_path, **options) -> LanguageBOPlusSampler:
    settings = dict(encoder=encoders["bert"], n_startup_trials=3, mll_steps=20, warm_mll_steps=5, seed=0,
                    cache_dir=tmp_path / "cache")
    return LanguageBOPlusSampler(options.pop("space", SPACE), **{**settings, **options})


def source(space: SearchSpace = SPACE, name: str = "past", score=numeric_score, count: int | None = None):
    configs = [space.pool_config(i) for i in range(space.pool_size)][:count]
    return source_from_rows(name, space, "maximize", [(c, score({**space.fixed, **c})) for c in configs],
                            f"LoRA fine-tuning of a past model on {name}.")


# -- numbers ----------------------------------------------------------------------------------------------


def test_numbers_enter_log_scaled_in_the_unit_cube_and_names_one_hot():
    features = NumericFeatures(SPACE)
    x = features.encode([{"rank": 2, "learning_rate": 1e-5, "dropout": 0.1, "variant": "dora"},
                         {"rank": 32, "learning_rate": 3e-3, "dropout": 0.2, "variant": "lora"},
                         {"rank": 64, "learning_rate": 3e-3, "dropout": 0.0, "variant": "pissa"}])
    assert x.shape == (3, 5)
    assert x[0, :3].tolist() == pytest.approx([0.0, 0.0, 0.5]) and x[0, 3:].tolist() == [0.0, 1.0]
    assert x[1, :3].tolist() == pytest.approx([1.0, 1.0, 1.0]) and x[1, 3:].tolist() == [1.0, 0.0]
    assert x[2, 0] == pytest.approx(1.25)  # rank 64 lies beyond this space's 32, on the log scale
    assert x[2, 3:].tolist() == [0.0, 0.0]  # a name this space does not have
    assert features.kinds() == {"rank": "number", "learning_rate": "number", "dropout": "number",
                                "variant": "name"}


def test_the_space_filling_start_covers_every_parameter_and_follows_the_seed():
    features = NumericFeatures(SPACE)
    pool = features.pool()
    free = np.ones(SPACE.pool_size, dtype=bool)
    design = space_filling(pool, free, 4, seed=3, dims=features.numeric_dims)
    assert design == space_filling(pool, free, 4, seed=3, dims=features.numeric_dims)
    assert len(set(design)) == 4
    configs = [SPACE.pool_config(i) for i in design]
    for name in ("rank", "learning_rate"):  # Sobol points fall in different quarters of every axis
        assert len({c[name] for c in configs}) >= 3
    random = [SPACE.pool_config(i) for i in np.random.default_rng(3).choice(SPACE.pool_size, 4, replace=False)]
    spread = lambda cs: np.ptp(features.encode(cs)[:, :2].numpy(), axis=0).min()  # noqa: E731
    assert spread(configs) >= spread(random) - 1e-9


def held_out_rho(model: Surrogate, rest: list[int], truth: np.ndarray) -> float:
    return scipy.stats.spearmanr(model.mean(rest).numpy(), truth[rest]).statistic


def test_the_combined_kernel_recovers_a_numeric_objective_at_least_as_well_as_the_numeric_gp(encoders, tmp_path):
    """The text kernel is added with its own weight and kept only while it predicts left-out observations better,
    so the numbers are never lost: held-out rank correlation of the posterior mean with the truth, over three
    draws of 20 observations, is the numeric GP's or better (a tiny random encoder's text carries nothing here)."""
    truth = np.array([numeric_score({**SPACE.fixed, **SPACE.pool_config(i)}) for i in range(SPACE.pool_size)])
    combined_rho, numeric_rho = [], []
    for draw in range(3):
        order = np.random.default_rng(draw).permutation(SPACE.pool_size)
        seen, rest = order[:20].tolist(), order[20:].tolist()
        y = torch.tensor((truth[seen] - truth[seen].mean()) / truth[seen].std())
        combined = make(encoders, tmp_path).prepare().surrogate
        numbers = Surrogate(numeric=combined.numeric)
        for model, rho in ((numbers, numeric_rho), (combined, combined_rho)):
            torch.manual_seed(draw)
            model.fit(seen, y, 20, lr_gp=0.2, lr_features=0.002, decay=0.95)
            rho.append(held_out_rho(model, rest, truth))
    assert min(numeric_rho) > 0.8
    assert np.mean(combined_rho) >= np.mean(numeric_rho) - 0.02


def test_the_text_kernel_alone_is_the_faithful_surrogate_and_both_can_not_be_off(encoders, tmp_path):
    with pytest.raises(InputError) as err:
        make(encoders, tmp_path, numeric=False, text=False)
    assert err.value.field == "text"
    with pytest.raises(InputError) as err:
        make(encoders, tmp_path, start="latin")
    assert err.value.field == "start" and "space-filling" in err.value.message


# -- memory of past studies -------------------------------------------------------------------------------


def test_transferred_observations_never_enter_the_pool_or_the_budget(encoders, tmp_path):
    """A source holding every config of the pool: the new study still spends its own budget on its own trials,
    may propose configs the source tried, and its first trial is the config the source rates best."""
    memory = source()
    sampler = make(encoders, tmp_path, transfer=[memory], description="LoRA fine-tuning of a new model.")
    study = open_study("new", storage=f"sqlite:///{tmp_path / 'new.db'}", sampler=sampler)
    run_trials(study, objective, 6)
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(memory.values) == SPACE.pool_size  # untouched
    chosen = {SPACE.pool_index(t.params) for t in study.trials}
    assert len(chosen) == 6  # every config was open to the study although the source tried it
    best_of_source = max(range(SPACE.pool_size), key=lambda i: memory.values[i])
    first = SPACE.pool_index(study.trials[0].params)
    assert numeric_score({**SPACE.fixed, **SPACE.pool_config(first)}) == pytest.approx(
        memory.values[best_of_source])
    assert sampler.similarity is not None and 0 <= float(sampler.similarity[0]) <= 1
    # the source's prior sits in the GP's mean; its weight was fitted with the kernel
    assert sampler.surrogate.gp.mean_module.weights.shape == (1,)


def test_a_memory_that_predicts_is_kept_and_helps_and_one_that_misleads_is_dropped(encoders, tmp_path):
    """Eight observations of the numeric objective, with the memory of a study that agrees with it or of one whose
    values are unrelated (the truth shuffled over the pool). The agreeing memory predicts the unobserved configs
    better than a GP without memory, in every draw; the unrelated one is dropped in some draw, and then the
    surrogate predicts and proposes exactly as a GP that never had it; with the gate off it always pulls."""
    truth = np.array([numeric_score({**SPACE.fixed, **SPACE.pool_config(i)}) for i in range(SPACE.pool_size)])
    unrelated = truth[np.random.default_rng(5).permutation(SPACE.pool_size)]
    agreeing, shuffled = (torch.tensor((v - v.mean()) / v.std())[:, None] for v in (truth, unrelated))
    pool = NumericFeatures(SPACE).pool()
    dropped = 0
    for draw in range(3):
        order = np.random.default_rng(draw).permutation(SPACE.pool_size)
        seen, rest = order[:8].tolist(), order[8:].tolist()
        y = torch.tensor((truth[seen] - truth[seen].mean()) / truth[seen].std())
        models = {"none": Surrogate(numeric=pool)}
        for name, prior, gate in (("agrees", agreeing, True), ("unrelated", shuffled, True),
                                  ("unrelated, no gate", shuffled, False)):
            models[name] = Surrogate(numeric=pool, prior=prior, weight_mean=torch.tensor([0.8]), memory_gate=gate)
        proposals = {}
        for name, model in models.items():
            model.fit(seen, y, 0, lr_gp=0.2, lr_features=0.002, decay=0.95)
            proposals[name] = model.propose(seen, y, float(y.max()), [], np.array(rest), 16, 1)[0]
        assert held_out_rho(models["agrees"], rest, truth) > held_out_rho(models["none"], rest, truth)
        assert not torch.allclose(models["unrelated, no gate"].mean(rest), models["none"].mean(rest), atol=1e-3)
        if not models["unrelated"].uses_memory:
            dropped += 1
            assert torch.allclose(models["unrelated"].mean(rest), models["none"].mean(rest), rtol=0, atol=1e-9)
            assert proposals["unrelated"] == proposals["none"]
    assert dropped >= 1


#: Fits a source larger than MAX_SOURCE_ROWS in a fresh process, after other studies did (argv: the seeds of
#: the studies run before, then the encoder) and prints the last study's proposals and prior.
_FRESH_PROCESS = """
import json, sys
import optuna
from lmtune.samplers.language_bo import transfer
from tests.samplers.test_language_bo_plus import SPACE, make_for_process, objective, source
transfer.MAX_SOURCE_ROWS = 40
optuna.logging.set_verbosity(optuna.logging.WARNING)
for seed in json.loads(sys.argv[1]):
    sampler = make_for_process(sys.argv[2], seed, [source()])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=5)
print(json.dumps([[t.params for t in study.trials], sampler.surrogate.prior.squeeze(1).tolist()]))
"""


def make_for_process(encoder: str, seed: int, transfer) -> LanguageBOPlusSampler:
    return LanguageBOPlusSampler(SPACE, encoder=encoder, n_startup_trials=3, seed=seed, text=False,
                                 transfer=transfer, description="LoRA fine-tuning of a new model.")


def test_a_large_sources_prior_is_the_same_whatever_study_fits_it_first(encoders):
    """A source above MAX_SOURCE_ROWS is subsampled for its fit; the rows kept follow from the source, not from
    the study, so a replay proposes the same configs in a fresh process as after another replay in its process."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    runs = []
    for seeds in ([3, 0], [0]):
        done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, json.dumps(seeds), encoders["bert"]], env=env,
                              cwd=root, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]


def test_a_source_with_another_space_is_an_error_naming_the_parameters_that_differ(encoders, tmp_path):
    other = SearchSpace((Ordered("rank", (2, 4)), Ordered("learning_rate", (1e-4, 1e-3)),
                         Ordered("batch_size", (8, 16)), Categorical("variant", ("lora",))), {}, "other")
    memory = source(other, "other-study", score=lambda c: float(c["rank"]))
    with pytest.raises(InputError) as err:
        check_compatible(memory, SPACE)
    assert err.value.field == "memory"
    assert "only in the source: batch_size" in err.value.message
    assert "only in this study: dropout" in err.value.message and "other-study" in err.value.message
    with pytest.raises(InputError) as err:  # the sampler checks before any trial
        make(encoders, tmp_path, transfer=[memory])
    assert "batch_size" in err.value.message
    names = SearchSpace((Ordered("rank", (2, 4)), Categorical("learning_rate", ("low", "high")),
                         Ordered("dropout", (0.0,)), Categorical("variant", ("lora",))), {}, "names")
    with pytest.raises(InputError) as err:
        check_compatible(source(names, "named", score=lambda c: 1.0), SPACE)
    assert "numbers in one, names in the other: learning_rate" in err.value.message


def test_only_transferring_samplers_take_sources():
    """A config refuses a sampler that does not transfer where it is read, naming the field (tests/lora)."""
    with pytest.raises(ValueError, match=r"language-bo\+start does not use transferred observations"):
        make_sampler("language-bo+start", space=SPACE, transfer=[source()])


def test_sources_load_from_a_table_file_and_from_a_study(tmp_path):
    rows = [{"params": SPACE.pool_config(i), "metric": None if i == 0 else float(i)} for i in range(10)]
    table = {"format": 1, "name": "old-table", "metric_name": "eval_loss", "direction": "minimize",
             "recipe": {"grid": SPACE.to_dict(), "dataset": "arith-sub3", "model": "arith-lm", "task": "causal"},
             "rows": rows}
    path = tmp_path / "old.json.gz"
    path.write_bytes(gzip.compress(json.dumps(table).encode()))
    loaded = load_source(path)
    assert loaded.name == "old-table" and loaded.direction == "minimize" and len(loaded.values) == 9  # a failure left
    assert "arith-lm (llama, " in loaded.description and "eval_loss, lower is better" in loaded.description
    check_compatible(loaded, SPACE)

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'past.db'}")
    past = open_study("past", storage=storage, attrs={"space": SPACE.to_dict(), "model": "minilm"},
                      info={"dataset": "bbc-news", "task": "classification"})
    run_trials(past, objective, 4)
    loaded = load_source("past", storage)
    assert loaded.values == tuple(t.value for t in past.trials) and loaded.direction == "maximize"
    assert "bbc-news" in loaded.description and "classification" in loaded.description
    with pytest.raises(InputError) as err:
        load_source("nowhere", storage)
    assert err.value.field == "memory" and "past" in err.value.message


def test_normal_scores_put_the_best_value_highest_in_either_direction():
    up = normal_scores([0.1, 0.5, 0.3], "maximize")
    down = normal_scores([2.0, 7.0, 7.0], "minimize")
    assert int(torch.argmax(up)) == 1 and int(torch.argmax(down)) == 0
    assert down[1] == down[2] and up.sum().abs() < 1e-12
