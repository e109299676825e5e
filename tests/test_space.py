import optuna
import pytest

from lmtune.errors import InputError
from lmtune.space import PAPER_LEARNING_RATES, Categorical, Float, Int, Ordered, SearchSpace, load_space


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


def test_presets_declare_numbers_ordered_with_their_scales():
    for name in ("lora-paper", "lora-small"):
        space = load_space(name)
        scales = {p.name: (type(p).__name__, p.log) for p in space.params}
        assert scales == {"rank": ("Ordered", True), "alpha_ratio": ("Ordered", True), "batch_size": ("Ordered", True),
                          "learning_rate": ("Ordered", True), "dropout": ("Ordered", False)}, name
        # stored as the values themselves: a study's trials read back the learning rate, not an index
        assert space.distributions()["learning_rate"] == optuna.distributions.CategoricalDistribution(
            space.param("learning_rate").values())


def test_ordered_offers_the_index_encoding_and_its_maps():
    lr = Ordered("learning_rate", (1e-4, 3e-4, 1e-3), log=True)
    assert lr.index_distribution() == optuna.distributions.IntDistribution(0, 2)
    assert [lr.value_at(i) for i in range(3)] == [1e-4, 3e-4, 1e-3]
    assert lr.position(3e-4) == 1 and lr.position(0.00030000000000000003) == 1 and lr.position(2e-4) is None
    assert lr.describe() == "one of 0.0001, 0.0003, 0.001 (ordered, log scale)"


def test_yaml_lists_of_numbers_are_ordered_and_lists_with_names_or_declared_choices_are_categorical(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n"
        "  learning_rate: [1e-4, 3e-4, 1e-3]\n"  # YAML 1.1 reads 1e-4 as text; still numbers
        "  rank: {values: [4, 8, 16], log: true}\n"
        "  batch_size: {type: ordered, values: [8, 16]}\n"
        "  alpha_ratio: {type: categorical, choices: [1, 2, 4]}\n"
        "  variant: [lora, dora]\n"
        "  dropout: {choices: [0.0, 0.1]}\n"
    )
    space = load_space(path)
    assert space.param("learning_rate") == Ordered("learning_rate", (1e-4, 3e-4, 1e-3), log=False)
    assert space.param("rank") == Ordered("rank", (4, 8, 16), log=True)
    assert space.param("batch_size") == Ordered("batch_size", (8, 16))
    assert space.param("alpha_ratio") == Categorical("alpha_ratio", (1, 2, 4))  # numbers declared unordered
    assert space.param("variant") == Categorical("variant", ("lora", "dora"))
    assert space.param("dropout") == Categorical("dropout", (0.0, 0.1))
    assert SearchSpace.from_dict(space.to_dict()) == space == SearchSpace.from_stored(space.to_dict())
    assert space.to_dict()["params"]["rank"] == {"type": "ordered", "values": [4, 8, 16], "log": True}


@pytest.mark.parametrize(
    ("param", "words"),
    [
        ("rank: [16, 4, 8]", "ordered values must increase: write [4, 8, 16], or {type: categorical"),
        ("rank: [4, 4.0, 8]", "repeat a value"),
        ("rank: {values: [0, 4], log: true}", "a log scale needs every value > 0, got 0"),
        ("rank: {values: [-1, 4], log: true}", "a log scale needs every value > 0, got -1"),
        ("rank: {values: [lora, dora]}", "ordered values must be numbers, got 'lora'"),
        ("rank: {values: [4, 8], log: yes please}", "log must be true or false"),
        ("rank: {values: 4}", "values must be a list"),
        ("rank: {values: [4, 8], step: 2}", "unknown key 'step' for an ordered parameter; allowed: log, type, values"),
        ("rank: {type: ordinal, values: [4]}", "allowed: categorical, ordered, int, float"),
        ("rank: {values: [4, .inf]}", "finite"),
    ],
)
def test_bad_ordered_parameters_name_the_parameter_and_what_is_allowed(tmp_path, param, words):
    path = tmp_path / "bad.yaml"
    path.write_text(f"params:\n  {param}\n")
    with pytest.raises(InputError) as err:
        load_space(path)
    assert err.value.field == "rank" and words in err.value.message, err.value.message


def test_a_space_stored_before_ordered_parameters_reads_its_numbers_ordered_by_the_old_rule():
    """What lmtune stored before ordered parameters existed (a study's space, a table's grid) had no format and
    every number categorical; it reads as ordered, on a log scale where language-BO used to guess one."""
    old = {"name": "old", "fixed": {"variant": "lora"}, "params": {
        "rank": {"type": "categorical", "choices": [1, 4, 16]},  # 16 >= 4 x 1: log
        "batch_size": {"type": "categorical", "choices": [8, 16]},  # 16 < 4 x 8: linear
        "dropout": {"type": "categorical", "choices": [0.0, 0.1]},  # holds 0: linear
        "alpha_ratio": {"type": "categorical", "choices": [2.0, 0.5]},  # out of order: the study stored it so
        "target": {"type": "categorical", "choices": ["q", "v"]},
    }}
    space = SearchSpace.from_stored(old)
    assert space.param("rank") == Ordered("rank", (1, 4, 16), log=True)
    assert space.param("batch_size") == Ordered("batch_size", (8, 16), log=False)
    assert space.param("dropout") == Ordered("dropout", (0.0, 0.1), log=False)
    assert space.param("alpha_ratio") == Categorical("alpha_ratio", (2.0, 0.5))
    assert space.param("target") == Categorical("target", ("q", "v"))
    # the same mapping given by a user (no legacy): what it says, numbers unordered
    assert SearchSpace.from_dict(old).param("rank") == Categorical("rank", (1, 4, 16))
    # the trials' distributions do not change: the values, as before
    assert space.distributions()["rank"] == SearchSpace.from_dict(old).distributions()["rank"]
    with pytest.raises(InputError, match="format 7"):
        SearchSpace.from_stored({**space.to_dict(), "format": 7})


def test_the_same_values_however_a_sampler_is_told_to_see_them():
    old = SearchSpace.from_dict({"name": "lora-small", "fixed": {"variant": "lora"}, "params": {
        p.name: {"type": "categorical", "choices": list(p.values())} for p in load_space("lora-small").params}})
    assert old != load_space("lora-small") and old.same_values(load_space("lora-small"))
    assert not old.same_values(load_space("lora-small").with_fixed(dropout=0.0))
    assert not old.same_values(load_space("lora-paper"))
