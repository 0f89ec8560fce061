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
    # the beam was silently widened to k (and the smaller value only changed the stage hash)
    ({"fusion": {"beam": 10}}, [], r"'fusion.beam' must be >= fusion.k \(50\), the candidate lists' length, got 10"),
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


@pytest.mark.parametrize("raw, overrides, match", [
    ({}, ["sasrec.seed=1:30"], r"'sasrec.seed' expects int, got '1:30'"),  # YAML 1.1 read 90
    ({}, ["fusion.joint=yes"], r"'fusion.joint' expects bool, got 'yes'"),  # YAML 1.1 read True
])
def test_yaml_1_1_look_alikes_are_not_silently_converted(raw, overrides, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw, overrides=overrides)


def test_values_follow_yaml_1_2_and_a_repeated_key_is_refused(tmp_path):
    from genrec.config import parse_value
    from genrec.recipe import load_config

    assert [parse_value(v) for v in ("010", "-7", "0x1f", "true", "off", "Item #{item_id}", "a # b")] == \
           [10, -7, 31, True, "off", "Item #{item_id}", "a # b"]  # YAML 1.1: 8, ..., False, "Item", "a"
    assert config_from_dict({}, overrides=["text.fallback=Item #{item_id}"]).text.fallback == "Item #{item_id}"
    assert [parse_value(v) for v in ('"run #1"', "'a # b'", "1:30.5")] == ["run #1", "a # b", "1:30.5"]
    from genrec.config import yaml_load

    # merge keys still merge (the repeated-key check had broken them), and the keys they bring may be overridden
    assert yaml_load("base: &b\n  hidden: 32\n  lr: 0.1\ngate:\n  <<: *b\n  lr: 0.2\n")["gate"] == \
        {"hidden": 32, "lr": 0.2}
    nested = ("sasrec: &tower\n  hidden: 64\n  lr: 0.001\nfusion:\n  joint_config:\n    id_tower: &id\n"
              "      <<: *tower\n      hidden: 32\ngenerative:\n  <<: *id\n")  # an anchor merged, then merged again
    assert yaml_load(nested)["generative"] == {"hidden": 32, "lr": 0.001}
    with pytest.raises(ConfigError, match=r"key 'h' appears twice"):  # a repeat inside an anchor is still one
        yaml_load("base: &b\n  h: 1\n  h: 2\nc:\n  <<: *b\n")
    with pytest.raises(ConfigError, match=r"'0b1' is not an integer"):
        yaml_load("a: !!int 0b1")
    bad = tmp_path / "twice.yaml"
    bad.write_text("name: x\nsasrec:\n  hidden: 32\nfusion:\n  k: 20\nsasrec:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(line 6, column 1\): key 'sasrec' appears "
                                          r"twice \(first on line 2\)"):
        load_config(bad)


def test_a_preset_keeps_its_nested_settings_under_the_users_own():
    """The quick preset's fusion.gate.max_epochs (40) was dropped as soon as the user set fusion.gate.hidden."""
    for c in (config_from_dict({}, preset="quick", overrides=["fusion.gate.hidden=32"]),
              config_from_dict({"fusion": {"gate": {"hidden": 32}}}, preset="quick")):
        assert c.fusion.gate == {"max_epochs": 40, "hidden": 32}
    assert config_from_dict({"fusion": {"gate": {"max_epochs": 5}}}, preset="quick").fusion.gate == {"max_epochs": 5}


def test_a_local_text_encoders_files_are_in_the_embed_stages_hash(tmp_path):
    """text.model as a local directory: new weights there reused the old embeddings (only the path string
    was hashed); a hub name or the bundled default hashes as before (runs made earlier keep their hashes)."""
    import os

    from genrec.recipe.stage_hash import section_for_hash

    import shutil

    model = tmp_path / "encoder"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    config = config_from_dict({}, overrides=[f"text.model={model}"])
    before = section_for_hash(config, "text")
    os.utime(model / "model.safetensors", ns=(1, 1))  # touched: the same files
    copy = shutil.copytree(model, tmp_path / "copy")  # copied elsewhere (times and path differ): the same files
    assert before == section_for_hash(config, "text") == \
        section_for_hash(config_from_dict({}, overrides=[f"text.model={copy}"]), "text")
    (model / "model.safetensors").write_bytes(b"weights v2")
    assert before["model_files"] != section_for_hash(config, "text")["model_files"]
    assert "model_files" not in section_for_hash(config_from_dict({}), "text")
    assert "model_files" not in section_for_hash(config_from_dict({}, overrides=["text.model=org/name"]), "text")


def test_joint_settings_the_run_would_fail_on_late_are_refused_early():
    """fusion.teacher_forcing=false with the held-out joint model scored the two kinds of model under
    different settings; a joint k beyond the catalogue failed after the stage-1 towers had trained."""
    from genrec.recipe.stages import check_catalogue

    # refused where training would start or resume, not when a finished run's config is read back
    unforced = config_from_dict({}, overrides=["fusion.joint=true", "fusion.teacher_forcing=false"])
    with pytest.raises(ConfigError, match=r"'fusion.teacher_forcing' must be true with the held-out joint model"):
        check_catalogue(unforced, 10_000)
    check_catalogue(config_from_dict({}, overrides=["fusion.joint=true"]), 10_000)
    check_catalogue(config_from_dict({}, overrides=["fusion.teacher_forcing=false"]), 10_000)  # no joint model
    config = config_from_dict({}, overrides=["fusion.joint=true", "fusion.joint_config.k=100", "fusion.k=20",
                                             "fusion.beam=20"])
    with pytest.raises(ConfigError, match=r"'fusion.joint_config.k' \(100\) exceeds the catalogue .* \(64 items\)"):
        check_catalogue(config, 64)
    check_catalogue(config, 100)


@pytest.mark.parametrize("overrides, key", [
    (["sasrec.seed=-1"], "sasrec.seed"), (["generative.seed=-1"], "generative.seed"),
    (["quantize.seed=-1"], "quantize.seed"), (["fusion.selection_seed=-1"], "fusion.selection_seed"),
    (["data.eval_users=50", "data.eval_seed=-1"], "data.eval_seed"),
    (["data.cold_items=0.1", "data.cold_seed=-1"], "data.cold_seed"),
    (["fusion.gate.seed=-1"], "fusion.gate.seed"), (["fusion.gate.weight_decay=-1"], "fusion.gate.weight_decay"),
    (["fusion.gate.holdout=1"], "fusion.gate.holdout"), (["text.fallback=Item {foo}"], "text.fallback"),
    (["fusion.joint=true", "fusion.joint_config.holdout_seed=-1"], "fusion.joint_config"),
    (["report.metric=ndcg@010"], "report.metric"),  # "no result holds the metric" in the report stage
    (["fusion.gate.features=[id_msp,prefix_source@01]"], "fusion.gate.features"),  # a KeyError in fusion
    (["fusion.joint=true", "fusion.joint_config.k=50", "fusion.joint_config.gate.k=80"], "fusion.joint_config.gate.k"),
    (["fusion.joint=true", "fusion.joint_config.gate.k=0"], "fusion.joint_config.gate.k"),
    (["fusion.k=50", "fusion.gate.k=40", "fusion.joint=true", "fusion.joint_config.k=20"], "fusion.gate.k"),
])
def test_settings_that_failed_inside_a_stage_are_refused_with_the_key(overrides, key):
    """Each passed the checks and failed in its stage (exit 1, the key not named; a negative seed after the
    towers had trained), and the fixed value was then refused as a change to a started stage."""
    with pytest.raises(ConfigError, match=f"config (key|section) '{key}'"):
        config_from_dict({}, overrides=overrides)


def test_gate_features_beyond_the_ids_prefix_levels_are_refused_before_training():
    from genrec.recipe.stages import check_gate_features

    config = config_from_dict({}, overrides=["fusion.gate.features=[prefix_source@2,gr_margin]"])
    check_gate_features(config, 3)  # codes of 3 levels: prefixes 1 and 2
    with pytest.raises(ConfigError, match=r"'fusion.gate.features': 'prefix_source@2' reads semantic-ID prefix "
                                          r"level 2; the run's IDs have 2 codes, so its prefix levels are 1..1"):
        check_gate_features(config, 2)
    # read by no learned method: nothing to refuse (the run would succeed)
    check_gate_features(config_from_dict({}, overrides=["fusion.methods=[fixed]",
                                                        "fusion.gate.features=[prefix_source@5]"]), 3)
    inherited = config_from_dict({}, overrides=["fusion.methods=[fixed]", "fusion.joint=true",
                                                "fusion.gate.features=[prefix_source@4]"])
    with pytest.raises(ConfigError, match=r"'fusion.gate.features': 'prefix_source@4'"):  # the key the user set
        check_gate_features(inherited, 3)
    joint = config_from_dict({}, overrides=["fusion.joint=true", "fusion.joint_config.gate.features=[prefix_source@0]"])
    with pytest.raises(ConfigError, match=r"'fusion.joint_config.gate.features': 'prefix_source@0'"):
        check_gate_features(joint, 3)


def test_a_gate_without_a_holdout_is_accepted():
    """``fusion.gate.holdout=0`` (early stopping on the fitting rows), which the gate accepts, was refused."""
    assert config_from_dict({}, overrides=["fusion.gate.holdout=0"]).fusion.gate["holdout"] == 0
