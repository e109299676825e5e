"""``LoraRunConfig`` is where input is checked: the proxy as one choice of three kinds, in every spelling (flag
text, YAML mapping, Python object), and errors that name the field."""

import pytest
import yaml

from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.finetune.proxy import EpochsProxy, ShareProxy, StepsProxy
from lmtune.lora.config import LoraRunConfig


@pytest.mark.parametrize(("given", "proxy"), [
    ("share", ShareProxy()), ("share:0.2", ShareProxy(share=0.2)), ("steps:40", StepsProxy(steps=40)),
    ("epochs", EpochsProxy()), ({"kind": "steps", "steps": 40}, StepsProxy(steps=40)),
    ({"kind": "share", "share": 0.5}, ShareProxy(share=0.5)), (EpochsProxy(), EpochsProxy()),
])
def test_a_proxy_is_one_of_three_kinds_in_any_spelling(given, proxy):
    cfg = build_config(LoraRunConfig, proxy=given)
    assert cfg.proxy == proxy
    assert build_config(LoraRunConfig, proxy=str(cfg.proxy)).proxy == proxy  # its text reads back as itself


def test_the_default_proxy_is_the_default_share():
    assert LoraRunConfig().proxy == ShareProxy() and str(LoraRunConfig().proxy) == "share"


def test_a_config_round_trips_through_yaml_as_best_yaml_holds_it():
    cfg = build_config(LoraRunConfig, proxy="steps:40", proxy_fraction=0.5, sampler="random")
    dumped = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert dumped["proxy"] == {"kind": "steps", "steps": 40}
    assert build_config(LoraRunConfig, **dumped) == cfg


@pytest.mark.parametrize(("given", "field", "words"), [
    ({"proxy": "steps:0"}, "proxy.steps", "at least 1"),
    ({"proxy": "steps"}, "proxy.steps", "required"),
    ({"proxy": "share:1.5"}, "proxy.share", "at most 1"),
    ({"proxy": "share:0"}, "proxy.share", "greater than 0"),
    ({"proxy": "share:nan"}, "proxy.share", "finite"),
    ({"proxy": "epochs:3"}, "proxy", "share, share:R, steps:N or epochs"),
    ({"proxy": "fraction:0.5"}, "proxy", "share, share:R, steps:N or epochs"),
    ({"proxy": {"kind": "epochs", "steps": 3}}, "proxy.steps", "not a known field; allowed: kind"),
    ({"proxy": {"kind": "bogus"}}, "proxy", "must be one of 'share', 'steps', 'epochs'"),
    ({"proxy_fraction": 1.5}, "proxy_fraction", "at most 1"),
    ({"variant": "qlora"}, "variant", "allowed: lora, rslora, dora, pissa, search"),
    ({"sampler": "tpe", "memory": ["old.json"]}, "memory", "use `sampler` auto"),
    ({"sampler": "language-bo+", "memory": ["none", "old.json"]}, "memory", "stands alone"),
    ({"sampler": "language-bo+", "memory": []}, "memory", "needs auto, none"),
])
def test_bad_input_names_its_field(given, field, words):
    with pytest.raises(InputError) as error:
        build_config(LoraRunConfig, **given)
    assert error.value.field == field and words in error.value.message, error.value
