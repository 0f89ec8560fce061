"""Fuzzing the recipe config: any ``--set`` override and any YAML file either builds a valid
RecipeConfig or raises ConfigError naming what is wrong, never another exception."""

from __future__ import annotations

# Floats without subnormals: genrec.training.setup turns on flush-denormal for the process, after
# which hypothesis refuses to generate subnormal floats.
import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.config import parse_value, yaml_load
from genrec.errors import ConfigError
from genrec.recipe import SECTIONS, TOP_LEVEL, config_from_dict, load_config

KEYS = [f"{sec}.{f.name}" for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.init]
KEYS += list(TOP_LEVEL) + ["fusion.gate.hidden", "fusion.gate.lr", "fusion.gate.model", "fusion.joint_config.lr",
                           "sasrec", "nosuch.key", "data.nosuch", ""]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
raw_text = st.one_of(st.text(max_size=20), st.sampled_from(["1e-3", "[1, 2", "{a: 1}", "null", "true", "0", "-1",
                                                            "1e400", ".nan", "[title]", "'x'", "2024-01-01"]))


def _build(overrides=(), raw=None):
    try:
        return config_from_dict(raw, overrides=list(overrides))
    except ConfigError as e:
        assert str(e)  # a message, naming the key
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), raw_text), min_size=1, max_size=3))
def test_any_override_builds_or_raises_config_error(pairs):
    _build([f"{k}={v}" for k, v in pairs])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_any_override_text_builds_or_raises_config_error(words):
    _build(words)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(SECTIONS) + list(TOP_LEVEL) + ["extra"]),
                       st.one_of(values, st.dictionaries(st.sampled_from(
                           sorted({k.split(".")[1] for k in KEYS if k.count(".") == 1}) + ["zzz"]), values,
                           max_size=4)), max_size=4))
def test_any_yaml_mapping_builds_or_raises_config_error(raw):
    _build(raw=raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_any_yaml_file_loads_or_raises_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)


def test_yaml_floats_follow_yaml_1_2():
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"  # what PyYAML alone gives
    assert yaml_load("lr: 1e-3")["lr"] == 1e-3
    assert yaml_load("a: 1E5\nb: .5\nc: -2.5e+2\nd: 7\ne: '1e-3'") == {"a": 1e5, "b": 0.5, "c": -250.0, "d": 7,
                                                                      "e": "1e-3"}
    assert parse_value("1e-3") == 1e-3 and parse_value("[10, 20]") == [10, 20] and parse_value("abc") == "abc"
    assert parse_value("null") is None and parse_value("2024-01-01") == "2024-01-01"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sasrec:\n  lr: 1e-3\n  hidden: [64\n", encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e) and "line 4" in str(e)
    else:
        raise AssertionError("no error")
    path.write_text("sasrec:\n  lr: 1e-3\n", encoding="utf-8")
    assert load_config(path).sasrec.lr == 1e-3


def test_settings_found_wanting_by_review_are_config_errors_naming_the_key():
    """Each once passed validation (failing later, after hours of training) or raised another exception."""
    import pytest

    cases = [
        ({"fusion": {"joint_config": {"sasrec": 5}}}, ["fusion.joint_config.sasrec.hidden=32"],
         "'fusion.joint_config.sasrec' is not a mapping"),
        ({}, ["fusion.joint=true", "fusion.joint_config.gate.hidden=abc"], "fusion.joint_config.gate.hidden"),
        ({}, ["text.max_seq_length=0"], "text.max_seq_length"),
        ({}, ["text.max_description_chars=-1"], "text.max_description_chars"),
        ({}, ["quantize.method=pq", "quantize.subspaces=0"], "quantize.subspaces"),
        ({}, ["fusion.joint=true", "fusion.k=5", "fusion.beam=5", "report.ks=[5]", "report.metric=ndcg@5"],
         "k must be >= 10"),
    ]
    for raw, overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(raw, overrides=overrides)
    for raw in ([1, 2], "fusion"):
        with pytest.raises(ConfigError, match="must be a mapping"):
            config_from_dict(raw)
    config_from_dict({}, overrides=["fusion.joint=true", "fusion.joint_config.gate.hidden=8", "text.max_seq_length=null"])
