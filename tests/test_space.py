import optuna
import pytest

from lmtune.errors import InputError
from lmtune.space import PAPER_LEARNING_RATES, Categorical, Float, Int, SearchSpace, load_space


def test_lora_paper_is_the_seed_table_1_pool():
    space = load_space("lora-paper")
    assert space.pool_size == 45_360
    assert space.param("rank").values() == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert space.param("alpha_ratio").values() == (0.5, 1, 2, 4, 8, 16, 32, 64, 128)
    assert space.param("batch_size").values() == (2, 4, 8, 16, 32, 64, 128, 256)
    assert len(PAPER_LEARNING_RATES) == 10 and min(PAPER_LEARNING_RATES) == 1e-6 and max(PAPER_LEARNING_RATES) == 5e-3
    assert space.param("dropout").values() == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    assert space.fixed == {"variant": "lora"}
    configs = list(space.iter_pool())
    assert len(configs) == 45_360
    assert len({tuple(c.values()) for c in configs}) == 45_360


def test_lora_small_is_a_few_hundred_configs():
    assert 100 <= load_space("lora-small").pool_size <= 500


def test_validate_rejects_unknown_names_and_values_outside():
    space = load_space("lora-paper")
    good = {"rank": 8, "alpha_ratio": 2, "batch_size": 16, "learning_rate": 2e-5, "dropout": 0.05}
    assert space.validate(good)["alpha_ratio"] == 2.0
    with pytest.raises(InputError) as err:
        space.validate({**good, "momentum": 0.9})
    assert err.value.field == "momentum"
    with pytest.raises(InputError) as err:
        space.validate({**good, "rank": 3})
    assert err.value.field == "rank" and "outside" in err.value.message and "256" in err.value.message
    with pytest.raises(InputError) as err:
        space.validate({**good, "variant": "dora"})
    assert err.value.field == "variant"


def test_int_and_float_params_validate_and_enumerate():
    assert Int("n", 1, 9, step=4).values() == (1, 5, 9)
    assert Int("n", 1, 9, step=4).contains(5) and not Int("n", 1, 9, step=4).contains(6)
    assert Float("d", 0.0, 0.3, step=0.1).values() == (0.0, 0.1, 0.2, 0.3)
    assert Float("lr", 1e-5, 1e-2, log=True).contains(3e-4)
    assert not Float("lr", 1e-5, 1e-2, log=True).contains(1.0)
    with pytest.raises(InputError):
        Float("lr", 0.0, 1.0, log=True)
    assert not SearchSpace((Float("lr", 1e-5, 1e-2, log=True),)).is_discrete


def test_optuna_distributions_and_suggest_round_trip():
    space = SearchSpace((Categorical("rank", (4, 8)), Int("batch_size", 8, 32, step=8),
                         Float("learning_rate", 1e-5, 1e-2, log=True)), {"variant": "dora"})
    dists = space.distributions()
    assert isinstance(dists["rank"], optuna.distributions.CategoricalDistribution)
    assert isinstance(dists["batch_size"], optuna.distributions.IntDistribution) and dists["batch_size"].step == 8
    assert dists["learning_rate"].log
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    study.optimize(lambda t: seen.append(space.suggest(t)) or 0.0, n_trials=5)
    for config in seen:
        assert space.validate(config) == config
        assert config["variant"] == "dora"


def test_yaml_space_with_short_forms(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "name: mine\n"
        "params:\n"
        "  rank: [4, 8, 16]\n"
        "  learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true}\n"
        "  batch_size: {type: int, low: 8, high: 32, step: 8}\n"
        "  variant: dora\n"
    )
    space = load_space(path)
    assert space.name == "mine"
    assert space.param("rank").values() == (4, 8, 16)
    assert space.param("learning_rate").low == 1e-5
    assert space.fixed == {"variant": "dora"}
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("params: {rank: [4, 8]\n", "space"),  # malformed YAML
        ("params: {rank: {type: normal, low: 1, high: 2}}\n", "rank"),
        ("params: {rank: {type: int, low: 9, high: 2}}\n", "rank"),
        ("params: {rank: {type: int, low: 1}}\n", "rank"),
        ("params: {}\n", "space"),
        ("params: {rank: [4]}\nextra: 1\n", "extra"),
    ],
)
def test_bad_yaml_spaces_name_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_space(path)
    assert err.value.field == field


def test_unknown_preset_and_missing_file():
    with pytest.raises(InputError, match="lora-paper"):
        load_space("lora-huge")
    with pytest.raises(InputError, match="does not exist"):
        load_space("nowhere.yaml")


def test_with_fixed_and_with_param():
    space = load_space("lora-small")
    searched = space.with_param(Categorical("variant", ("lora", "dora")))
    assert "variant" not in searched.fixed and searched.pool_size == 2 * space.pool_size
    fixed = searched.with_fixed(variant="pissa")
    assert fixed.fixed["variant"] == "pissa" and fixed.pool_size == space.pool_size
