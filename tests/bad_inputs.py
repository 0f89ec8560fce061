"""The bad-input matrix: every bad input tried on genrec (data files, configs, CLI arguments,
checkpoints, run directories, library calls) and the error it must get.

Each :class:`Case` makes its bad input in a scratch directory and triggers it; ``tests/test_bad_inputs.py``
runs every case (one test each) and ``python bench/bad_input_matrix.py`` writes the table of exact
messages, ``bench/bad_inputs.md``. A CLI case passes when the command exits with code 2 and prints
one ``genrec CMD: error: ...`` line and no traceback.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

# the machinery lives in bad_input_world; run_case and shown are re-exported for the test and the bench
from bad_input_world import ROOT, Case, CliFailed, World, cli, run_case, shown  # noqa: F401


def _recipe(w: World, *overrides: str, yaml_text: str | None = None) -> None:
    from genrec.recipe import config_from_dict, load_config

    if yaml_text is not None:
        load_config(w.yaml(yaml_text), overrides=list(overrides))
    else:
        config_from_dict({}, overrides=list(overrides))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class _Evil:
    """Unpickling this would create a marker file: the checkpoint loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_checkpoint(w: World) -> None:
    import torch

    from genrec.sasrec import load_sasrec

    path = w.root / "evil.pt"
    torch.save({"model": _Evil(str(w.root / "pwned")), "config": {}}, path)
    try:
        load_sasrec(path)
    finally:
        if (w.root / "pwned").exists():
            raise AssertionError("loading the crafted checkpoint ran its code")


def _locked_run(w: World) -> None:
    from genrec.recipe import config_from_dict, run_recipe
    from genrec.rundir import RunLock

    with RunLock(w.root / "locked"):
        run_recipe(config_from_dict({}), w.root / "locked")


def _disk_full(w: World) -> None:
    import errno
    from unittest import mock

    from genrec.recipe import config_from_dict, run_recipe

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # the disk is full once the data stage writes its summary
        if str(dst).endswith("/full/data/summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    with mock.patch("os.replace", replace):
        run_recipe(config_from_dict({"data": {"dataset": str(w.plain())}, "fusion": {"k": 10},
                                     "report": {"ks": [10]}}), w.root / "full")


def _changed_run(w: World) -> None:
    from genrec.recipe import StopAfterStage, config_from_dict, run_recipe

    out = w.root / "changed"
    base = ["sasrec.hidden=8", "sasrec.num_heads=1", "sasrec.max_epochs=1", "quantize.codebook_size=4",
            "fusion.k=10", "report.ks=[10]", f"text.cache_dir={w.root / 'emb'}", "data.max_history=10"]
    raw = {"data": {"dataset": str(w.plain())}}
    try:
        run_recipe(config_from_dict(raw, overrides=base), out, stop_after="sasrec")
    except StopAfterStage:
        pass
    run_recipe(config_from_dict(raw, overrides=base + ["sasrec.hidden=16"]), out)  # refused


def _diverge(w: World) -> None:
    from genrec.sasrec import SASRecConfig, train_sasrec

    train_sasrec(w.split(), SASRecConfig(max_len=10, hidden=8, num_heads=1, num_blocks=1, max_epochs=2, lr=1e6),
                 progress=False)


def _sasrec_bad_index(w: World) -> None:
    from genrec.sasrec import load_sasrec, predict_topk
    from genrec.splits import Instances

    model = load_sasrec(w.sasrec_dir() / "best.pt")
    predict_topk(model, Instances(users=np.array([0]), histories=[np.array([1, -1])], targets=np.array([2])), k=3)


def _empty_history(w: World) -> None:
    from genrec.generative import recommend

    recommend(w.generative_model(), [np.array([1, 2]), np.array([], dtype=np.int64)], beam_size=3, top_k=3)


def _k_above_catalogue(w: World) -> None:
    from fusion import TrainStats
    from fusion.adapters import model_inputs
    from genrec.sasrec import load_sasrec

    split = w.split()
    model_inputs(load_sasrec(w.sasrec_dir() / "best.pt"), w.generative_model(), split.test,
                 TrainStats(split.train, split.num_items), k=500)


def _import(name: str):
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


DataFormatError = _import("genrec.errors.DataFormatError")
ConfigError = _import("genrec.errors.ConfigError")
CheckpointError = _import("genrec.errors.CheckpointError")
RunDirectoryError = _import("genrec.errors.RunDirectoryError")
TrainingDivergedError = _import("genrec.errors.TrainingDivergedError")

HEADER = "user_id\titem_id\ttimestamp\n"


def _load(w: World, name: str):
    import genrec

    return genrec.load_plain(w.plain(name))


def _both_compressions(path: Path) -> None:
    """Write the interactions file's other form beside it (plain beside .gz, or .gz beside plain)."""
    if path.suffix == ".gz":
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
    else:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))


CASES: list[Case] = [
    # --- data files ---------------------------------------------------------------------------
    Case("data-missing-dir", "data", "a dataset directory that does not exist",
         lambda w: _import("genrec.load_dataset")(str(w.root / "nowhere")), Exception, r"nowhere: dataset directory not found"),
    Case("data-no-interactions", "data", "a directory without interactions.tsv",
         lambda w: (w.interactions("noint").unlink(), _load(w, "noint")), DataFormatError,
         r"noint: expected interactions.tsv or interactions.tsv.gz, found neither"),
    Case("data-both-compressions", "data", "interactions.tsv and interactions.tsv.gz side by side",
         lambda w: (_both_compressions(w.interactions("both")), _load(w, "both")), DataFormatError,
         r"both: both interactions.tsv and interactions.tsv.gz exist; keep the one to read"),
    Case("data-no-header", "data", "interactions.tsv without its header line",
         lambda w: (w.write_interactions("nohead", "u1\ti1\t1\n"), _load(w, "nohead")), DataFormatError, r":1: "),
    Case("data-missing-column", "data", "a header without the timestamp column",
         lambda w: (w.write_interactions("nocol", "user_id\titem_id\nu1\ti1\n"), _load(w, "nocol")),
         DataFormatError, r":1: .*timestamp"),
    Case("data-duplicate-column", "data", "a header naming item_id twice",
         lambda w: (w.write_interactions("dupcol", "user_id\titem_id\ttimestamp\titem_id\nu1\ti1\t1\ti1\n"),
                    _load(w, "dupcol")), DataFormatError, r":1: header column 'item_id' appears more than once"),
    Case("data-short-row", "data", "a row with two fields",
         lambda w: (w.write_interactions("shortrow", HEADER + "u1\ti1\t1\nu1\ti2\n"), _load(w, "shortrow")),
         DataFormatError, r":3: "),
    Case("data-bad-timestamp", "data", "a timestamp that is not a number",
         lambda w: (w.write_interactions("badts", HEADER + "u1\ti1\tyesterday\n"), _load(w, "badts")),
         DataFormatError, r":2: timestamp 'yesterday' is not a number"),
    Case("data-timestamp-overflow", "data", "an integer timestamp beyond int64",
         lambda w: (w.write_interactions("bigts", HEADER + "u1\ti1\t9223372036854775808\n"), _load(w, "bigts")),
         DataFormatError, r":2: timestamp '9223372036854775808' is outside the 64-bit integer range"),
    Case("data-mixed-timestamps", "data", "epoch-ns integers mixed with a decimal timestamp",
         lambda w: (w.write_interactions("mixts", HEADER + "u1\ti1\t1700000000123456789\nu1\ti2\t1.5\n"),
                    _load(w, "mixts")), DataFormatError,
         r"timestamps mix decimals with integers too large for a float \(user 'u1': 1700000000123456789\)"),
    Case("data-unknown-item", "data", "an interacted item with no entry in items.jsonl",
         lambda w: (w.write_interactions("unk", HEADER + "u1\tnosuch\t1\n"), _load(w, "unk")),
         DataFormatError, r"nosuch"),
    Case("data-empty", "data", "an interactions file with a header and no rows",
         lambda w: (w.write_interactions("empty", HEADER), _load(w, "empty")), DataFormatError, r"interactions"),
    Case("data-truncated-gz", "data", "a truncated interactions.tsv.gz",
         lambda w: (_gzip_truncated(w), _load(w, "trunc")), DataFormatError,
         r"interactions.tsv.gz:\d+: truncated or corrupt gzip file"),
    Case("data-not-gzip", "data", "interactions.tsv.gz that is not gzip-compressed",
         lambda w: (_not_gzip(w), _load(w, "notgz")), DataFormatError, r"interactions.tsv.gz:1: corrupt gzip file"),
    Case("data-non-utf8", "data", "Latin-1 bytes in interactions.tsv",
         lambda w: (w.write_interactions("latin", (HEADER + "u1\ti1\t1\nu\xe9\ti2\t2\n").encode("latin-1")),
                    _load(w, "latin")), DataFormatError, r":3: not valid UTF-8 \(byte 0xe9 at"),
    Case("data-items-bad-json", "data", "a line of items.jsonl that is not JSON",
         lambda w: (_bad_items(w), _load(w, "badjson")), DataFormatError, r"items.jsonl.*:\d+: "),
    Case("data-duplicate-item", "data", "an item id listed twice in items.jsonl",
         lambda w: (_dup_item(w), _load(w, "dupitem")), DataFormatError, r"i0"),
    Case("data-item-id-list", "data", "an item_id that is a list",
         lambda w: (_list_item_id(w), _load(w, "listid")), DataFormatError,
         r"items.jsonl.*:1: 'item_id' must be a string or number, got list"),
    Case("data-item-text-surrogate", "data", "a lone surrogate escape in an item's title",
         lambda w: (_edit_first_item(w, "surrogate", title="caf\udc80"), _load(w, "surrogate")), DataFormatError,
         r"items.jsonl.*:1: field 'title' is not valid Unicode"),
    Case("data-item-id-surrogate", "data", "a lone surrogate escape in an item id",
         lambda w: (_edit_first_item(w, "surrid", item_id="\ud800x"), _load(w, "surrid")), DataFormatError,
         r"items.jsonl.*:1: 'item_id' is not valid Unicode"),
    Case("data-item-title-bool", "data", "a title that is true",
         lambda w: (_edit_first_item(w, "booltitle", title=True), _load(w, "booltitle")), DataFormatError,
         r"items.jsonl.*:1: field 'title' must be text, got bool"),
    Case("data-item-category-object", "data", "a category that is a JSON object",
         lambda w: (_edit_first_item(w, "dictcat", categories=[{"a": 1}]), _load(w, "dictcat")), DataFormatError,
         r"items.jsonl.*:1: field 'categories' must be text, got dict"),
    Case("data-too-short", "data", "no user with the 3 interactions leave-one-out needs",
         lambda w: _import("genrec.leave_one_out")(_load(w, "good").__class__(
             name="short", item_ids=["a", "b"], user_ids=["u"], sequences=[np.array([0, 1])],
             items=[_import("genrec.ItemText")(title="a"), _import("genrec.ItemText")(title="b")])),
         DataFormatError, r"no user has >= 3 interactions"),
    Case("spec-unknown", "data", "an unknown dataset spec",
         lambda w: _import("genrec.load_dataset")("movielens:1m"), ConfigError, r"unknown dataset spec 'movielens:1m'"),
    Case("spec-repeated-key", "data", "a synthetic spec key given twice (the last one won)",
         lambda w: _import("genrec.load_dataset")("synthetic:num_users=50,num_users=60"), ConfigError,
         r"'num_users' given more than once"),
    Case("spec-empty", "data", "an empty dataset spec (it loaded the working directory)",
         lambda w: _import("genrec.load_dataset")("plain:"), ConfigError, r"dataset spec 'plain:' names no dataset"),
    Case("spec-amazon-path", "data", "an Amazon category that is a path out of the cache",
         lambda w: _import("genrec.load_dataset")("amazon2014:../../etc", cache_dir=w.root), ConfigError,
         r"category '../../etc' must be letters, digits"),
    Case("spec-bad-type", "data", "a synthetic spec value of the wrong type",
         lambda w: _import("genrec.load_dataset")("synthetic:num_users=abc"), ConfigError,
         r"synthetic parameter num_users expects int, got 'abc'"),
    Case("spec-unknown-key", "data", "an unknown synthetic spec key",
         lambda w: _import("genrec.load_dataset")("synthetic:users=5"), ConfigError,
         r"unknown synthetic parameter\(s\) \['users'\]"),
    Case("recbole-untyped-header", "data", "a RecBole .inter header without name:type fields",
         lambda w: _recbole(w, "untyped", "user_id\titem_id\ttimestamp\nu1\ti1\t1\n"), DataFormatError,
         r"untyped.inter:1: header field 'user_id' is not written name:type"),
    Case("recbole-wrong-separator", "data", "a comma-separated RecBole file loaded with sep=tab",
         lambda w: _recbole(w, "commas", "user_id:token,item_id:token\nu1,i1\n", spec_extra=",sep=tab"),
         DataFormatError, r"commas.inter:1: header field .* holds a comma: the file looks comma-separated"),
    Case("recbole-both-compressions", "data", "NAME.inter and NAME.inter.gz side by side",
         lambda w: _recbole(w, "recboth", "user_id:token\titem_id:token\nu1\ti1\n", gz_beside=True), DataFormatError,
         r"recboth: both recboth.inter and recboth.inter.gz exist; keep the one to read"),
    Case("recbole-item-directory", "data", "NAME.item that is a directory (its text was silently absent)",
         lambda w: ((w.root / "recdir" / "recdir.item").mkdir(parents=True),
                    _recbole(w, "recdir", "user_id:token\titem_id:token\nu1\ti1\n")), DataFormatError,
         r"recdir.item: is not a file"),
    Case("recbole-unknown-item", "data", "a RecBole .inter row whose item the .item file lacks",
         lambda w: _recbole(w, "recunk", "user_id:token\titem_id:token\nu1\ti1\nu1\tnosuch\n",
                            "item_id:token\ttitle:token_seq\ni1\tOne\n"), DataFormatError,
         r"recunk.inter:3: 1 interacted item\(s\) have no entry in recunk.item, e.g. \['nosuch'\]"),
    Case("parquet-missing-column", "data", "Parquet interactions without the named time column",
         lambda w: _parquet(w, "pqcol", {"user_id": ["u1"], "item_id": ["i1"], "ts": [1]}), DataFormatError,
         r"interactions.parquet: no column 'timestamp' for the time .*name it with time=COLUMN"),
    Case("parquet-duplicate-item", "data", "an item id on two rows of items.parquet",
         lambda w: _parquet(w, "pqdup", {"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]},
                            {"item_id": ["i1", "i1"], "title": ["a", "b"]}), DataFormatError,
         r"items.parquet: row 2: duplicate item_id 'i1' \(first at row 1\)"),
    Case("parquet-items-directory", "data", "items.parquet written as a directory of parts (Spark's layout)",
         lambda w: _parquet(w, "pqparts", {"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]},
                            {"item_id": ["i1"], "title": ["a"]}, items_as_directory=True), DataFormatError,
         r"items.parquet: is a directory, not a Parquet file"),
    Case("embeddings-missing-item", "data", "precomputed embeddings (text.embeddings) lacking an item",
         lambda w: _embeddings_missing_item(w), DataFormatError,
         r"vectors.npy: 1 of the dataset's 12 items have no embedding, e.g. \['i0'\]"),
    # --- recipe configs and overrides ---------------------------------------------------------
    Case("config-unknown-key", "config", "a misspelt key in a recipe YAML",
         lambda w: _recipe(w, yaml_text="sasrec:\n  max_epoch: 3\n"), ConfigError,
         r"recipe.yaml: unknown config key 'sasrec.max_epoch' \(did you mean 'max_epochs'\?\)"),
    Case("config-unknown-section", "config", "an unknown section",
         lambda w: _recipe(w, yaml_text="sasrc:\n  hidden: 3\n"), ConfigError,
         r"unknown config key 'sasrc' \(did you mean 'sasrec'\?\)"),
    Case("config-wrong-type", "config", "a string where an int is expected",
         lambda w: _recipe(w, yaml_text="sasrec:\n  max_epochs: many\n"), ConfigError,
         r"'sasrec.max_epochs' expects int, got 'many'"),
    Case("config-optional-wrong-type", "config", "an Optional field given a string (num_threads: two)",
         lambda w: _recipe(w, yaml_text="sasrec:\n  num_threads: two\n"), ConfigError,
         r"'sasrec.num_threads' expects int or null, got 'two'"),
    Case("config-yaml-syntax", "config", "a YAML syntax error",
         lambda w: _recipe(w, yaml_text="sasrec:\n  hidden: [64\n"), ConfigError,
         r"recipe.yaml: not valid YAML \(line \d+, column \d+\)"),
    Case("config-not-mapping", "config", "a YAML file that is a list",
         lambda w: _recipe(w, yaml_text="- a\n- b\n"), ConfigError, r"must be a YAML mapping"),
    Case("config-out-of-range", "config", "max_epochs: 0",
         lambda w: _recipe(w, "sasrec.max_epochs=0"), ConfigError, r"'sasrec.max_epochs' must be an integer >= 1, got 0"),
    Case("config-gate-type", "config", "fusion.gate.hidden=big",
         lambda w: _recipe(w, "fusion.gate.hidden=big"), ConfigError, r"'fusion.gate.hidden' expects int, got 'big'"),
    Case("config-gate-internal", "config", "fusion.gate.model (a fitted field, not an option)",
         lambda w: _recipe(w, "fusion.gate.model=1"), ConfigError, r"unknown config key 'fusion.gate.model'"),
    Case("config-preset", "config", "an unknown preset",
         lambda w: _recipe(w, "preset=fast"), ConfigError, r"'preset' must be one of \['quick', 'full'\]"),
    Case("config-override-form", "config", "an override without '='",
         lambda w: _recipe(w, "sasrec.hidden"), ConfigError, r"not of the form section.key=value"),
    Case("config-ks-above-k", "config", "report.ks beyond fusion.k",
         lambda w: _recipe(w, "report.ks=[10, 100]"), ConfigError, r"'report.ks' must not exceed fusion.k \(50\)"),
    Case("config-k-above-catalogue", "config", "fusion.k larger than the catalogue",
         lambda w: _import("genrec.recipe.check_catalogue")(
             _import("genrec.recipe.config_from_dict")({"fusion": {"k": 60, "beam": 60}, "report": {"ks": [10]}}), 12),
         ConfigError, r"'fusion.k' \(60\) exceeds the catalogue of synthetic \(12 items\)"),
    # --- command line -------------------------------------------------------------------------
    Case("cli-data-spec-type", "cli", "genrec data synthetic:num_users=abc",
         lambda w: cli("data", "synthetic:num_users=abc"), CliFailed,
         r"genrec data: error: .*num_users expects int, got 'abc'"),
    Case("cli-sasrec-set-typo", "cli", "genrec sasrec --set max_epoch=1 DIR",
         lambda w: cli("sasrec", "--set", "max_epoch=1", str(w.plain())), CliFailed,
         r"genrec sasrec: error: unknown setting 'max_epoch' for SASRecConfig \(did you mean 'max_epochs'\?\)"),
    Case("cli-sasrec-missing-dir", "cli", "genrec sasrec on a missing directory",
         lambda w: cli("sasrec", str(w.root / "nowhere")), CliFailed,
         r"genrec sasrec: error: .*nowhere: dataset directory not found"),
    Case("cli-generative-malformed", "cli", "genrec generative on data with a malformed row",
         lambda w: cli("generative", str(w.write_interactions("cligen", HEADER + "u1\ti1\t1\nu1\ti2\tsoon\n")),
                       "--semantic-ids", str(w.sid()), "--out", str(w.root / "gen")), CliFailed,
         r"genrec generative: error: .*cligen/interactions.tsv:3: timestamp 'soon' is not a number"),
    Case("cli-generative-no-table", "cli", "genrec generative with a semantic-ID path that does not exist",
         lambda w: cli("generative", str(w.plain()), "--semantic-ids", str(w.root / "nocodes"), "--out",
                       str(w.root / "gen")), CliFailed,
         r"genrec generative: error: .*nocodes: semantic-ID table not found"),
    Case("cli-sasrec-threads", "cli", "genrec sasrec --set num_threads=0 (ignored; -1 was a traceback from torch)",
         lambda w: cli("sasrec", str(w.plain()), "--set", "num_threads=0"), CliFailed,
         r"genrec sasrec: error: .*'num_threads' must be an integer >= 1 \(or null: torch's choice\), got 0"),
    Case("cli-sasrec-max-history", "cli", "genrec sasrec --max-history 0 (the message named max_len)",
         lambda w: cli("sasrec", str(w.plain()), "--max-history", "0"), CliFailed,
         r"genrec sasrec: error: argument --max-history: must be >= 1, got 0"),
    Case("cli-run-max-history", "cli", "data.max_history=0 in a recipe (blamed sasrec.max_len and the YAML file)",
         lambda w: cli("run", str(ROOT / "recipes" / "configs" / "demo.yaml"), "--show", "--set",
                       "data.max_history=0"), CliFailed,
         r"genrec run: error: .*config key 'data.max_history' must be an integer >= 1, got 0"),
    Case("cli-data-export-into-input", "cli", "genrec data DIR --export DIR (wrote a copy over the data)",
         lambda w: cli("data", str(w.plain("selfexport")), "--export", str(w.plain("selfexport"))), CliFailed,
         r"genrec data: error: argument --export: .*selfexport holds the dataset's own files; export elsewhere"),
    Case("cli-quantize-ignored-text-option", "cli", "genrec quantize --embeddings with a text option it ignores",
         lambda w: cli("quantize", str(w.plain()), "--embeddings", str(w.root / "x.npy"), "--fallback", "Item {item_id}",
                       "--skip-category", "a", "--out", str(w.root / "q")), CliFailed,
         r"genrec quantize: error: --skip-category, --fallback: act\(s\) on the text encoder and item text, which "
         r"--embeddings replaces"),
    Case("cli-quantize-show-with-options", "cli", "genrec quantize --show DIR with options it ignores",
         lambda w: cli("quantize", "--show", str(w.root / "q"), "--levels", "2", str(w.plain())), CliFailed,
         r"genrec quantize: error: --show only prints a saved run's diagnostics; drop (DATASET, --levels|--levels, DATASET)"),
    Case("cli-quantize-out-file", "cli", "genrec quantize --out naming a file (found after the quantization)",
         lambda w: cli("quantize", str(w.plain()), "--out", str(w.yaml("x", "not_a_dir.txt"))), CliFailed,
         r"genrec quantize: error: argument --out: .*not_a_dir.txt is a file; give a directory"),
    Case("cli-analyze-out-file", "cli", "genrec analyze --out naming a file (found after the labelling)",
         lambda w: cli("analyze", str(w.plain()), "--out", str(w.yaml("x", "not_a_dir.txt"))), CliFailed,
         r"genrec analyze: error: argument --out: .*not_a_dir.txt is a file; give a directory"),
    Case("cli-set-without-value", "cli", "--set followed by a word that is no key=value",
         lambda w: cli("sasrec", str(w.plain()), "--set", "max_epochs"), CliFailed,
         r"genrec: error: argument --set: expected KEY=VALUE after it, got 'max_epochs'"),
    Case("cli-run-missing-config", "cli", "genrec run on a missing config file",
         lambda w: cli("run", str(w.root / "missing.yaml")), CliFailed,
         r"genrec run: error: .*missing.yaml: recipe config not found"),
    Case("cli-run-until", "cli", "genrec run --until a stage that does not exist",
         lambda w: cli("run", str(ROOT / "recipes" / "configs" / "demo.yaml"), "--until", "nowhere"), CliFailed,
         r"genrec run: error: --until 'nowhere' is not a stage"),
    Case("cli-analyze-codes", "cli", "genrec analyze --codes on a file that is no semantic-ID table",
         lambda w: cli("analyze", str(w.plain()), "--out", str(w.root / "an"), "--codes",
                       str(w.yaml("x: 1", "codes.json"))), CliFailed,
         r"genrec analyze: error: .*codes.json"),
    Case("cli-analyze-max-hop", "cli", "genrec analyze --max-hop 0",
         lambda w: cli("analyze", str(w.plain()), "--out", str(w.root / "an"), "--max-hop", "0"), CliFailed,
         r"genrec analyze: error: --max-hop must be in \[1, 126\], got 0"),
    Case("cli-quantize-set", "cli", "genrec quantize --set with a misspelt quantizer option",
         lambda w: cli("quantize", str(w.plain()), "--set", "nitre=3"), CliFailed,
         r"genrec quantize: error: .*unknown setting 'nitre' \(did you mean 'niter'\?\)"),
    Case("cli-quantize-set-type", "cli", "genrec quantize --set niter=abc",
         lambda w: cli("quantize", str(w.plain()), "--set", "niter=abc", "--out", str(w.root / "q")), CliFailed,
         r"genrec quantize: error: config key 'niter' expects int, got 'abc'"),
    Case("cli-quantize-embeddings", "cli", "genrec quantize --embeddings on a file that is not .npy",
         lambda w: cli("quantize", str(w.plain()), "--embeddings", str(_items_path(w, "good")), "--out",
                       str(w.root / "q")), CliFailed, r"genrec quantize: error: .*items.jsonl.*: not a .npy array"),
    Case("cli-sasrec-device", "cli", "genrec sasrec --set device=foo",
         lambda w: cli("sasrec", str(w.plain()), "--set", "device=foo"), CliFailed,
         r"genrec sasrec: error: .*device 'foo' is not a torch device"),
    Case("cli-out-is-a-file", "cli", "genrec sasrec --out pointing at an existing file",
         lambda w: cli("sasrec", str(w.plain()), "--out", str(w.yaml("x", "a_file"))), CliFailed,
         r"genrec sasrec: error: .*a_file: the output directory is an existing file"),
    Case("cli-generative-table-mismatch", "cli", "genrec generative with a semantic-ID table of another dataset",
         lambda w: cli("generative", str(w.write_interactions("fewer", HEADER + "".join(
             f"u{k}\ti{j}\t{j}\n" for k in range(6) for j in range(4)))), "--semantic-ids", str(w.sid()), "--out",
             str(w.root / "gen2"), "--set", "max_epochs=1"), CliFailed,
         r"genrec generative: error: .*semantic-ID table"),
    Case("cli-generative-test-beam", "cli", "genrec generative --test-beam 0",
         lambda w: cli("generative", str(w.plain()), "--semantic-ids", str(w.sid()), "--test-beam", "0"), CliFailed,
         r"genrec generative: error: --test-beam and --max-history must be >= 1, got 0"),
    Case("config-non-finite", "config", "sasrec.lr=.inf",
         lambda w: _recipe(w, "sasrec.lr=.inf"), ConfigError, r"'sasrec.lr' expects a finite number, got inf"),
    Case("config-gate-features", "config", "fusion.gate.features naming no indicator",
         lambda w: _recipe(w, "fusion.gate.features=[bogus]"), ConfigError,
         r"'fusion.gate.features' must name indicators among .*got 'bogus'"),
    Case("config-joint-tower-key", "config", "a misspelt key inside fusion.joint_config.id_tower",
         lambda w: _recipe(w, "fusion.joint=true", "fusion.joint_schedule=end_to_end",
                           "fusion.joint_config.id_tower.hiden=64"), ConfigError,
         r"unknown config key 'fusion.joint_config.id_tower.hiden' \(did you mean 'hidden'\?\)"),
    Case("config-holdout-joint-key", "config", "a misspelt key inside fusion.joint_config.sasrec (holdout schedule)",
         lambda w: _recipe(w, "fusion.joint=true", "fusion.joint_config.sasrec.hiden=64"), ConfigError,
         r"unknown config key 'fusion.joint_config.sasrec.hiden' \(did you mean 'hidden'\?\)"),
    Case("config-joint-schedule", "config", "an unknown fusion.joint_schedule",
         lambda w: _recipe(w, "fusion.joint_schedule=both"), ConfigError,
         r"'fusion.joint_schedule' must be one of \['holdout', 'end_to_end'\]"),
    # --- checkpoints --------------------------------------------------------------------------
    Case("ckpt-missing", "checkpoint", "load_sasrec on a file that does not exist",
         lambda w: _import("genrec.sasrec.load_sasrec")(w.root / "none.pt"), CheckpointError,
         r"none.pt: no SASRec checkpoint; train \(or save\) the model first"),
    Case("ckpt-truncated", "checkpoint", "a truncated best.pt",
         lambda w: _import("genrec.sasrec.load_sasrec")(_truncate(_copy(w.sasrec_dir() / "best.pt", w.root / "t.pt"))),
         CheckpointError, r"t.pt is truncated or corrupt"),
    Case("ckpt-not-torch", "checkpoint", "a text file named best.pt",
         lambda w: _import("genrec.sasrec.load_sasrec")(w.yaml("hello", "text.pt")), CheckpointError,
         r"text.pt is truncated or corrupt"),
    Case("ckpt-crafted-pickle", "checkpoint", "a checkpoint whose pickle would run code",
         _crafted_checkpoint, CheckpointError, r"evil.pt contains Python objects that genrec does not load"),
    Case("ckpt-resume-truncated", "checkpoint", "resume with last.pt and last.prev.pt both truncated",
         lambda w: _resume_broken(w), CheckpointError, r"last.pt"),
    # --- run directories ----------------------------------------------------------------------
    Case("run-locked", "run directory", "a second run on a directory in use",
         _locked_run, RunDirectoryError, rf"is in use by another genrec run \(pid {os.getpid()}"),
    Case("run-changed", "run directory", "a changed config on a directory holding a trained model",
         _changed_run, RunDirectoryError, r"\(changed: sasrec.hidden\); running would discard the stages sasrec, "
                                          r"trained models included \(sasrec/best.pt, sasrec/last.pt\)\. Rerun with --force"),
    Case("run-disk-full", "run directory", "a stage that cannot write (disk full)",
         _disk_full, RunDirectoryError, r"stage 'data' could not write .*full/data/summary.json: No space left on device"),
    # --- library calls ------------------------------------------------------------------------
    Case("lib-negative-rank", "library", "metrics_from_ranks with a negative rank",
         lambda w: _import("genrec.metrics.metrics_from_ranks")(np.array([0, -1])), ValueError,
         r"ranks must be >= 0 \(0 = first\); got -1 for instance 1"),
    Case("lib-diverged", "library", "SASRec trained with lr=1e6 (NaN loss)",
         _diverge, TrainingDivergedError, r"sasrec training diverged: the loss is nan at epoch \d+, step \d+ .*"
                                         r"the last finite loss was"),
    Case("lib-sasrec-padding-index", "library", "item index -1 in a history given to SASRec",
         _sasrec_bad_index, ValueError, r"-1"),
    Case("lib-empty-history", "library", "generative.recommend with an empty history",
         _empty_history, ValueError, r"history 1 is empty"),
    Case("lib-k-above-catalogue", "library", "fusion.adapters.model_inputs with k above the catalogue",
         _k_above_catalogue, ValueError, r"k=500 must be between 1 and the catalogue size \(12 items\)"),
]


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _gzip_truncated(w: World) -> None:
    d = w.plain("trunc")
    path = w.interactions("trunc")
    text = (HEADER + "".join(f"u{k}\ti{k % 12}\t{k}\n" for k in range(3000)))
    data = gzip.compress(text.encode())
    path.unlink()
    (d / "interactions.tsv.gz").write_bytes(data[: len(data) // 2])


def _not_gzip(w: World) -> None:
    d = w.plain("notgz")
    w.interactions("notgz").unlink()
    (d / "interactions.tsv.gz").write_text(HEADER + "u1\ti1\t1\n", encoding="utf-8")


def _items_path(w: World, name: str) -> Path:
    return next(w.plain(name).glob("items.jsonl*"))


def _write_items(w: World, name: str, text: str) -> None:
    path = _items_path(w, name)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _read_items(w: World, name: str) -> list[str]:
    path = _items_path(w, name)
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode().splitlines()


def _bad_items(w: World) -> None:
    lines = _read_items(w, "badjson")
    _write_items(w, "badjson", "\n".join([lines[0], "{not json", *lines[1:]]) + "\n")


def _dup_item(w: World) -> None:
    lines = _read_items(w, "dupitem")
    _write_items(w, "dupitem", "\n".join([*lines, lines[0]]) + "\n")


def _list_item_id(w: World) -> None:
    lines = _read_items(w, "listid")
    first = json.loads(lines[0])
    first["item_id"] = ["i0"]
    _write_items(w, "listid", "\n".join([json.dumps(first), *lines[1:]]) + "\n")


def _edit_first_item(w: World, name: str, **fields) -> None:
    """Set ``fields`` in the first object of dataset ``name``'s items.jsonl (JSON's escapes kept)."""
    lines = _read_items(w, name)
    first = {**json.loads(lines[0]), **fields}
    _write_items(w, name, "\n".join([json.dumps(first), *lines[1:]]) + "\n")


def _recbole(w: World, name: str, inter: str, item: str | None = None, spec_extra: str = "", gz_beside: bool = False):
    d = w.root / name
    d.mkdir(exist_ok=True)
    (d / f"{name}.inter").write_text(inter, encoding="utf-8")
    if gz_beside:  # the same file compressed beside it
        _both_compressions(d / f"{name}.inter")
    if item is not None:
        (d / f"{name}.item").write_text(item, encoding="utf-8")
    return _import("genrec.load_dataset")(f"recbole:{d}{spec_extra}")


def _parquet(w: World, name: str, interactions: dict, items: dict | None = None, items_as_directory: bool = False):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = w.root / name
    d.mkdir(exist_ok=True)
    pq.write_table(pa.table(interactions), d / "interactions.parquet")
    if items is not None and items_as_directory:
        (d / "items.parquet").mkdir()
        pq.write_table(pa.table(items), d / "items.parquet" / "part-0.parquet")
    elif items is not None:
        pq.write_table(pa.table(items), d / "items.parquet")
    return _import("genrec.load_dataset")(f"parquet:{d}")


def _embeddings_missing_item(w: World) -> None:
    from genrec.item_embeddings import load_item_embeddings

    ds = _load(w, "good")
    np.save(w.root / "vectors.npy", np.ones((ds.num_items - 1, 4)))
    (w.root / "vectors.ids.txt").write_text("\n".join(ds.item_ids[1:]) + "\n", encoding="utf-8")
    load_item_embeddings(w.root / "vectors.npy", ds.item_ids)


def _resume_broken(w: World) -> None:
    import shutil

    from genrec.sasrec import SASRecConfig, train_sasrec

    out = w.root / "resume_broken"
    shutil.copytree(w.sasrec_dir(), out)
    for name in ("last.pt", "last.prev.pt"):
        if (out / name).exists():
            _truncate(out / name)
    train_sasrec(w.split(), SASRecConfig(max_len=10, hidden=8, num_heads=1, num_blocks=1, max_epochs=2),
                 out_dir=out, progress=False)
