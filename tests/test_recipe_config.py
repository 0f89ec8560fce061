"""Recipe config values out of range or of the wrong type: a ConfigError naming the key and the
value, raised when the config is built (before any stage runs)."""

import pytest

from genrec.recipe import ConfigError, config_from_dict


@pytest.mark.parametrize("raw, overrides, match", [
    ({"sasrec": {"hiden": 64}}, [], r"unknown config key 'sasrec.hiden'.*hidden"),
    ({"sasrec": {"lr": "fast"}}, [], r"'sasrec.lr' expects float, got 'fast'"),
    ({"sasrec": {"max_epochs": 0}}, [], r"'sasrec.max_epochs' must be an integer >= 1, got 0"),
    ({"generative": {"dropout": 1.5}}, [], r"'generative.dropout' must be in \[0, 1\), got 1.5"),
    ({"quantize": {"method": "kmeans"}}, [], r"'quantize.method' must be one of .*rq_kmeans.*got 'kmeans'"),
    ({"fusion": {"methods": ["fixed", "magic"]}}, [], r"'fusion.methods' must be among .*got 'magic'"),
    ({"fusion": {"primary": "learned_mixture", "methods": ["fixed"]}}, [], r"'fusion.primary'"),
    ({"fusion": {"gate": {"hiddn": 3}}}, [], r"'fusion.gate.hiddn'"),
    ({"report": {"ks": [10, 100]}}, [], r"'report.ks' must not exceed fusion.k \(50\)"),
    ({"report": {"metric": "mrr@10"}}, [], r"'report.metric'"),
    ({"analysis": {"codebook_sizes": [1, 64]}}, [], r"'analysis.codebook_sizes' must all be >= 2"),
    ({"analysis": {"token_hop": 0}}, [], r"'analysis.token_hop' must be in \[1, labels.max_hop \(4\)\], got 0"),
    ({"analysis": {"token_hop": 5}}, [], r"'analysis.token_hop' must be in \[1, labels.max_hop \(4\)\], got 5"),
    ({"labels": {"max_hop": 127}}, [], r"'labels.max_hop' must be in \[1, 126\], got 127"),
    ({"data": {"eval_users": 0}}, [], r"'data.eval_users' must be null or at least fusion.selection_folds \(5\)"),
    ({"data": {"eval_users": 4}}, [], r"'data.eval_users' must be null or at least fusion.selection_folds"),
    ({"data": {"eval_users": 100, "cold_items": 0.05}}, [], r"'data.eval_users' cannot be combined with data.cold_items"),
    ({"sasrec": {"max_minutes": 0}}, [], r"'sasrec.max_minutes' must be > 0 or null, got 0"),
    ({"preset": "fast"}, [], r"'preset' must be one of \['quick', 'full'\], got 'fast'"),
    ({"models": {}}, [], r"unknown config key 'models'"),
    ({"data": ["synthetic"]}, [], r"section 'data' must be a mapping"),
    ({"text": {"fields": ["title", "colour"]}}, [], r"'text.fields'"),
    ({"text": {"precision": "int8", "device": "cuda"}}, [], r"'text.device' must be the CPU"),
    ({"num_threads": 0}, [], r"'num_threads' must be a positive integer"),
    ({}, ["sasrec.hidden"], r"not of the form section.key=value"),
    ({}, ["training.lr=1"], r"unknown section 'training'"),
    ({}, ["hidden=3"], r"'hidden' is not a top-level key"),
    ({}, ["sasrec.hidden=30", "sasrec.num_heads=4"], r"'sasrec.hidden' must be divisible by num_heads"),
])
def test_bad_config_values_give_clear_errors(raw, overrides, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw, overrides=overrides)
