"""Decoding configs and reading a stage-1 reply: formats, clamping, missing fields, the fallback."""

from __future__ import annotations

import math

import pytest

from lmtune.errors import InputError
from lmtune.hag.space import PARAMS, Decoding, DecodingSpace

SPACE = DecodingSpace()
FALLBACK = Decoding(temperature=0.7, top_p=0.9, top_k=8, repetition_penalty=1.1)


@pytest.mark.parametrize("reply", [
    "t=0.5 p=0.95 k=8 r=1.2",
    "temperature=0.5, top_p=0.95, top_k=8, repetition_penalty=1.2",
    '{"temperature": 0.5, "top_p": 0.95, "top_k": 8, "repetition_penalty": 1.2}',
    "Temperature: 0.5\nTop_P: 0.95\ntop_k: 8.0\nrepetition_penalty: 1.2 and some chatter",
])
def test_a_reply_in_any_common_form_is_read(reply):
    parsed = SPACE.parse(reply, FALLBACK)
    assert parsed.status == "ok" and not parsed.fallback
    assert parsed.config == Decoding(0.5, 0.95, 8, 1.2)


def test_what_the_model_learns_to_emit_reads_back():
    for config in SPACE.all_configs()[::37]:
        assert SPACE.parse(config.text(), FALLBACK).config == config


@pytest.mark.parametrize(("reply", "expected", "clamped"), [
    ("t=5 p=0.9 k=8 r=1.2", Decoding(2.0, 0.9, 8, 1.2), ["temperature"]),
    ("t=-1 p=0.9 k=8 r=1.2", Decoding(0.0, 1.0, 0, 1.2), ["temperature"]),  # clamped to greedy, then canonical
    ("t=1 p=1.5 k=8 r=1.2", Decoding(1.0, 1.0, 8, 1.2), ["top_p"]),
    ("t=1 p=0.01 k=8 r=1.2", Decoding(1.0, 0.5, 8, 1.2), ["top_p"]),
    ("t=1 p=0.9 k=500 r=1.2", Decoding(1.0, 0.9, 32, 1.2), ["top_k"]),
    ("t=1 p=0.9 k=-1 r=1.2", Decoding(1.0, 0.9, 0, 1.2), []),  # vLLM's "no cut"
    ("t=1 p=0.9 k=7.6 r=1.2", Decoding(1.0, 0.9, 8, 1.2), []),
    ("t=1 p=0.9 k=8 r=0.2", Decoding(1.0, 0.9, 8, 1.0), ["repetition_penalty"]),
    ("t=1 p=0.9 k=8 r=9e9", Decoding(1.0, 0.9, 8, 2.0), ["repetition_penalty"]),
])
def test_out_of_range_values_are_clamped_to_the_space(reply, expected, clamped):
    parsed = SPACE.parse(reply, FALLBACK)
    assert parsed.config == expected and parsed.clamped == clamped
    assert parsed.status == ("clamped" if clamped else "ok")


@pytest.mark.parametrize(("reply", "missing"), [
    ("t=1.25", ["top_p", "top_k", "repetition_penalty"]),
    ("t=1.25 p=nan k=4 r=inf", ["top_p", "repetition_penalty"]),
    ("top_k=4 top_k=16 temperature=1.25", ["top_p", "repetition_penalty"]),  # the first of a repeated key counts
])
def test_missing_or_non_finite_fields_come_from_the_fallback(reply, missing):
    parsed = SPACE.parse(reply, FALLBACK)
    assert parsed.status == "filled" and parsed.missing == missing
    assert parsed.config.temperature == 1.25
    for name in missing:
        assert getattr(parsed.config, name) == getattr(FALLBACK, name)
    assert parsed.config.top_k == (8 if "top_k" in missing else 4)


@pytest.mark.parametrize("reply", ["", "xyzzy", "t=", "t=abc p= k=x", "temperature high, top_p low", "t=nan p=inf",
                                   "stopt=1 top=0.5", None])
def test_an_unreadable_reply_is_the_fallback(reply):
    parsed = SPACE.parse(reply, FALLBACK)
    assert parsed.fallback and parsed.status == "fallback" and parsed.config == FALLBACK
    assert parsed.missing == list(PARAMS)


def test_greedy_has_one_form_and_the_coarse_grid_covers_every_end():
    assert Decoding(0.0, 0.5, 4, 1.2).canonical() == Decoding(0.0, 1.0, 0, 1.2)
    coarse = SPACE.coarse_configs()
    assert len(coarse) == len(set(coarse)) == 34
    for name in PARAMS:
        values = {getattr(c, name) for c in coarse if not c.greedy or name in ("temperature", "repetition_penalty")}
        assert SPACE.grid[name][0] in values and SPACE.grid[name][-1] in values  # both ends of the order
    assert all(math.isfinite(v) for c in coarse for v in c.as_dict().values())


@pytest.mark.parametrize(("grid", "field"), [
    ({"top_p": (0.5, 1.5)}, "top_p_grid"), ({"top_k": (2, 4.5)}, "top_k_grid"),
    ({"temperature": ()}, "temperature_grid"), ({"repetition_penalty": (1.0, 1.0)}, "repetition_penalty_grid"),
    ({"temperature": (-1.0, 1.0)}, "temperature_grid"),
])
def test_a_bad_grid_names_its_field(grid, field):
    from lmtune.hag.space import DEFAULT_GRID

    with pytest.raises(InputError) as error:
        DecodingSpace({**DEFAULT_GRID, **grid})
    assert error.value.field == field
