"""The benchmark scripts' options and edge cases, at no real size: a bad or ignored option is refused
with a message naming it before any work (each test makes the work itself fail if it were reached),
an empty subset is reported as NaN / n/a, and each script's printout says what its figures cover."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.scripts import load_script

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4,seed=0"


def refused(capsys, call, *words) -> str:
    """``call()`` exits with status 2 before any work, its message (stderr) naming every one of ``words``."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err
    return err


def no_work(*_, **__):
    pytest.fail("the script started its work before refusing the arguments")


# -- new_items_fusion.py ------------------------------------------------------------------------------

def test_new_items_fusion_policies_apply_only_to_a_sasrec_blind_to_the_new_items():
    """With --sasrec-new-items nearest SASRec scores the new items: the policies for unscorable
    candidates would overwrite those scores (their rows were built anyway), so only 'default' runs."""
    bench = load_script("bench/new_items_fusion.py")
    assert bench.cold_policies("nearest") == ("default",)
    assert bench.cold_policies("none") == ("default", "gr_only", "union_min", "zero_mass")


def test_new_items_fusion_reports_nan_without_a_new_target():
    """No test target among the new items (possible with a small --share): NaN, shown as n/a (it raised
    'no instances to evaluate')."""
    bench = load_script("bench/new_items_fusion.py")
    top = np.array([[0, 1, 2], [2, 1, 0]])
    is_new = np.array([False, False, False, True])
    m = bench.row_metrics(top, np.array([1, 2]), is_new)
    assert math.isnan(m["ndcg@10 new targets"]) and 0 < m["ndcg@10"] <= 1 and m["exposure@10"] == 0
    text = bench.table({"cold": {"sasrec": m}, "warm": {"sasrec": m}})
    assert "| n/a | n/a |" in text and "nan" not in text


# -- joint_beauty.py ----------------------------------------------------------------------------------

@pytest.fixture
def joint(monkeypatch):
    bench = load_script("bench/joint_beauty.py")
    monkeypatch.setattr(bench.genrec, "load_dataset", no_work)
    return bench


@pytest.mark.parametrize("extra, words", [
    (["--minutes", "5"], ["--minutes", "holdout"]),
    (["--fusion-results", "results.json"], ["--fusion-results", "holdout"]),
    (["--minutes", "40"], ["--minutes"]),  # the old default, given: still ignored, so still refused
])
def test_joint_holdout_refuses_the_end_to_end_options(joint, capsys, extra, words):
    refused(capsys, lambda: joint.main(["--schedule", "holdout", *extra]), *words)


def test_joint_end_to_end_refuses_holdout_options_and_a_missing_comparison_file(joint, capsys, tmp_path):
    refused(capsys, lambda: joint.main(["--depth", "half"]), "--depth", "holdout")
    missing = tmp_path / "nowhere" / "results.json"
    refused(capsys, lambda: joint.main(["--fusion-results", str(missing)]), "--fusion-results", "no such file")
    refused(capsys, lambda: joint.main(["--minutes", "0"]), "--minutes", "> 0")


@pytest.mark.parametrize("schedule", ["end_to_end", "holdout"])
def test_joint_refuses_a_bad_set_before_reading_the_data(joint, capsys, schedule):
    refused(capsys, lambda: joint.main(["--schedule", schedule, "--set", "no_such_key=1"]), "no_such_key")
    bad = "sasrec.hidden=abc" if schedule == "holdout" else "max_epochs=abc"
    refused(capsys, lambda: joint.main(["--schedule", schedule, "--set", bad]), bad.split("=")[0].split(".")[-1])


def test_joint_reports_bad_data_in_one_line(capsys, tmp_path):
    bench = load_script("bench/joint_beauty.py")
    err = refused(capsys, lambda: bench.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]),
                  "error:", "not found")
    assert len(err.strip().splitlines()) == 1


def test_the_wide_and_deep_table_says_what_each_rows_minutes_cover(tiny_run, tmp_path, capsys):
    """The post-hoc row's minutes are its two towers' training clocks; a joint row's, the whole
    holdout-joint process: the table labels each row and says they are not the same measure."""
    bench = load_script("bench/joint_beauty.py")
    joint = tmp_path / "joint.json"  # the fields a holdout run's results.json holds (figures made up)
    joint.write_text(json.dumps({"results": {"joint_full": {"all": {"ndcg@10": 0.05}}},
                                 "params": {"sasrec": 10, "generative": 20, "gate": 3}, "minutes_this_process": 12.5}))
    rows = bench.main(["--table", f"joint={joint}", "--run", str(tiny_run)])["rows"]
    text = capsys.readouterr().out
    assert "| minutes (see note) |" in text and "| 12.5 (c) |" in text
    (post_hoc,) = [n for n in rows if n.startswith("post-hoc")]
    assert rows[post_hoc]["minutes_cover"] == bench.MINUTES_NOTES["b"] and "fusion" in bench.MINUTES_NOTES["b"]
    assert rows["joint"]["minutes_cover"] == bench.MINUTES_NOTES["c"] and "gate fitting" in bench.MINUTES_NOTES["c"]
    assert rows["SASRec"]["minutes_cover"] == bench.MINUTES_NOTES["a"]
    note = text.strip().splitlines()[-1]
    assert note.startswith("minutes: (a)") and "(b)" in note and "(c)" in note and "not the same measure" in note


# -- bad_input_matrix.py ------------------------------------------------------------------------------

def test_bad_input_matrix_help_prints_help_and_does_no_work(monkeypatch, capsys):
    bench = load_script("bench/bad_input_matrix.py")
    monkeypatch.setattr(bench, "run_case", no_work)
    monkeypatch.setattr(bench, "World", no_work)
    tracked = ROOT / "bench" / "bad_inputs.md"
    before = tracked.stat().st_mtime_ns
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out
    assert tracked.stat().st_mtime_ns == before


def test_bad_input_matrix_writes_where_out_says(monkeypatch, tmp_path, capsys):
    bench = load_script("bench/bad_input_matrix.py")
    case = bench.CASES[0]
    monkeypatch.setattr(bench, "CASES", [case])
    monkeypatch.setattr(bench, "run_case", lambda c, world: None)  # a case that raised nothing: "**NO**"
    tracked = ROOT / "bench" / "bad_inputs.md"
    before = tracked.stat().st_mtime_ns
    assert bench.main(["--out", str(tmp_path / "m.md")]) == 1
    text = (tmp_path / "m.md").read_text()
    assert f"| {case.id} |" in text and "1 cases, 0 as expected." in text
    assert tracked.stat().st_mtime_ns == before


# -- quantize_beauty.py -------------------------------------------------------------------------------

def test_quantize_refuses_an_unknown_method_before_embedding(monkeypatch, capsys):
    bench = load_script("bench/quantize_beauty.py")
    monkeypatch.setattr(bench, "load_plain", no_work)
    refused(capsys, lambda: bench.main(["--methods", "rq_kmeans,opqq"]), "--methods", "'opqq'", "rq_kmeans,pq,opq,rq_vae")
    refused(capsys, lambda: bench.main(["--methods", ","]), "--methods", "no method")


# -- fusion_beauty.py ---------------------------------------------------------------------------------

def test_fusion_refuses_a_beam_below_k(monkeypatch, capsys):
    bench = load_script("bench/fusion_beauty.py")
    monkeypatch.setattr(bench.genrec, "load_dataset", no_work)
    refused(capsys, lambda: bench.main(["--sasrec", "s.pt", "--generative", "g.pt", "--k", "10", "--beam", "5"]),
            "--beam 5", "--k 10")
    refused(capsys, lambda: bench.main(["--sasrec", "s.pt", "--generative", "g.pt", "--k", "5"]), "--k", ">= 10")


def test_fusion_timing_says_the_selection_cross_fit_is_not_in_it(tmp_path, capsys):
    """The printed fusion time leaves out the 5-fold cross-fitting that picks the best fusion, and says
    so; with --k 10 the lists have no @20 figures (results_by_label refused @20 of 10-item lists)."""
    from genrec import load_dataset
    from genrec.generative import GenerativeConfig, HierarchicalGenerative, save_generative
    from genrec.sasrec import SASRec, SASRecConfig, save_sasrec
    from genrec.synthetic import synthetic_info

    ds = load_dataset(SYNTH)
    info = synthetic_info(ds)
    codes = np.stack([info.category, info.brand, info.attribute], 1)
    torch.manual_seed(0)
    save_sasrec(SASRec(ds.num_items, SASRecConfig(hidden=16, num_blocks=1)), tmp_path / "sasrec.pt")
    save_generative(HierarchicalGenerative(codes, [int(c) + 1 for c in codes.max(0)],
                                           GenerativeConfig(hidden=16, num_blocks=1, num_heads=1, head_layers=1)),
                    tmp_path / "gr.pt")
    bench = load_script("bench/fusion_beauty.py")
    summary = bench.main(["--data", SYNTH, "--sasrec", str(tmp_path / "sasrec.pt"), "--generative",
                          str(tmp_path / "gr.pt"), "--k", "10", "--beam", "10", "--threads", "1", "--scales", "minmax"])
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("model inference"))
    assert "cross-fitting" in line and "not counted" in line
    assert summary["seconds"]["selection_cross_fit"] > 0


# -- new_item_sasrec.py -------------------------------------------------------------------------------

def test_new_item_sasrec_needs_in_set_users(capsys, tmp_path):
    bench = load_script("bench/new_item_sasrec.py")
    refused(capsys, lambda: bench.main(["--run", str(tmp_path / "none"), "--in-set-users", "0"]), "--in-set-users")


def test_new_item_sasrec_reports_na_without_a_new_validation_target(tiny_run, capsys):
    """A share whose simulated new items are no validation target: n/a on the new side (it raised
    'no instances to evaluate')."""
    from genrec.recipe import StageContext
    from genrec.recipe.run_files import run_config

    bench = load_script("bench/new_item_sasrec.py")
    _, split = StageContext(tiny_run, run_config(tiny_run)).training()
    n = split.num_items
    never = set(range(n)) - set(split.valid.targets.tolist())
    if not never:
        pytest.skip("every item of the tiny run is a validation target")
    share = 1.4 / n  # one item simulated as new
    seed = next(s for s in range(10_000) if int(np.random.default_rng(s).choice(n, 1, replace=False)[0]) in never)
    out = bench.main(["--run", str(tiny_run), "--share", str(share), "--seed", str(seed), "--in-set-users", "20",
                      "--scales"])
    text = capsys.readouterr().out
    assert "0 with a new target" in text and "| trained | n/a | n/a |" in text
    assert all(math.isnan(r["new"]["ndcg@10"]) and 0 <= r["in_set"]["ndcg@10"] <= 1 for r in out.values())


# -- the cold-start benches' --in-set-users and --test ------------------------------------------------

@pytest.mark.parametrize("script", ["bench/new_item_generative.py", "bench/content_sasrec_cold.py",
                                    "bench/new_item_prefix.py"])
def test_cold_start_benches_need_in_set_users(script, capsys, tmp_path):
    bench = load_script(script)
    refused(capsys, lambda: bench.main(["--run", str(tmp_path / "none"), "--in-set-users", "0"]), "--in-set-users")


def test_new_item_generative_refuses_test_without_the_content_term(capsys, tmp_path):
    bench = load_script("bench/new_item_generative.py")
    refused(capsys, lambda: bench.main(["--run", str(tmp_path / "none"), "--test", "--no-content"]),
            "--test", "--content")


# -- gpu_all.py ---------------------------------------------------------------------------------------

def test_gpu_all_says_what_stopped_the_t5_training():
    bench = load_script("bench/gpu_all.py")
    rows = [{"epoch": 3, "minutes": 0.5}, {"epoch": 6, "minutes": 1.1}]
    assert bench.stopped_by(rows, max_epochs=6, budget_minutes=2.0) == "max_epochs"
    assert bench.stopped_by(rows, max_epochs=200, budget_minutes=1.0) == "time budget"
    assert bench.stopped_by(rows, max_epochs=200, budget_minutes=2.0) == "patience"
    assert bench.stopped_by([], max_epochs=200, budget_minutes=2.0) == "time budget"
    t = {"test_ndcg@10": 0.039, "met": True, "epochs": 6, "train_s": 70.0, "converged": False,
         "stopped_by": "max_epochs"}
    text = bench.table({"tiger": t})
    assert "stopped at its max_epochs" in text and "time budget" not in text
    text = bench.table({"tiger": {**t, "stopped_by": "time budget"}})
    assert "stopped by its time budget" in text
    text = bench.table({"tiger": {**t, "stopped_by": "patience", "converged": True}})
    assert "converged" in text


# -- recommend_throughput.py --------------------------------------------------------------------------

@pytest.mark.parametrize("users", ["0", "-3"])
def test_recommend_throughput_refuses_no_users(monkeypatch, capsys, users):
    bench = load_script("bench/recommend_throughput.py")
    monkeypatch.setattr(bench.Recommender, "from_pretrained", no_work)
    refused(capsys, lambda: bench.main(["run", "--input", "h.jsonl", "--users", users]), "--users")


# -- scale.py -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--pipeline", "--items", "10", "100", "--interactions", "100", "1000", "--plot", "p.png"], ["--plot", "--pipeline"]),
    (["--items", "10", "--interactions", "100", "--plot", "p.png"], ["--plot", "two sizes"]),
])
def test_scale_refuses_a_plot_it_would_not_draw(monkeypatch, capsys, argv, words):
    bench = load_script("bench/scale.py", "scale_bench")
    monkeypatch.setattr(bench, "run_pipeline", no_work)
    monkeypatch.setattr(bench.subprocess, "run", no_work)
    refused(capsys, lambda: bench.main(argv), *words)


@pytest.mark.parametrize("keep", [False, True])
def test_scale_removes_its_temporary_work_directory(monkeypatch, tmp_path, keep):
    """The temporary directory of a size (several GB at 1M items) is removed when the size is done, even
    when it fails; --keep-workdir keeps it; a --workdir given is the user's and stays."""
    import genrec.synthetic_scale

    bench = load_script("bench/scale.py", "scale_bench")
    made = []

    def mkdtemp(prefix=""):
        made.append(tmp_path / f"{prefix}{len(made)}")
        made[-1].mkdir()
        (made[-1] / "big.bin").write_bytes(b"0" * 10)
        return str(made[-1])

    def fail(*a, **k):
        raise RuntimeError("stopped here")

    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(genrec.synthetic_scale, "make_scale_dataset", fail)
    args = argparse.Namespace(workdir=None, keep_workdir=keep, threads=1, dim=8, seed=0)
    for run in (bench.run_one, bench.run_pipeline):
        with pytest.raises(RuntimeError, match="stopped here"):
            run(args, 100, 1000)
    assert len(made) == 2 and all(p.exists() == keep for p in made)
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError):
        bench.run_one(argparse.Namespace(**{**vars(args), "workdir": str(mine), "keep_workdir": False}), 100, 1000)
    assert mine.is_dir() and len(made) == 2


# -- --set before the data: sasrec_beauty.py, generative_beauty.py, parallel_beauty.py -----------------

@pytest.mark.parametrize("script, bad, word", [
    ("bench/sasrec_beauty.py", "hidden=abc", "hidden"),
    ("bench/sasrec_beauty.py", "hiden=64", "hiden"),
    ("bench/generative_beauty.py", "num_blocks=abc", "num_blocks"),
    ("bench/parallel_beauty.py", "no_such_key=1", "no_such_key"),
])
def test_training_benches_refuse_a_bad_set_before_anything(script, bad, word, monkeypatch, capsys, tmp_path):
    bench = load_script(script)
    monkeypatch.setattr(bench.genrec, "load_plain", no_work)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a finished run")
    refused(capsys, lambda: bench.main(["--set", bad, "--out", str(out), "--fresh"]), "--set", word)
    assert (out / "keep.txt").exists()  # --fresh deleted nothing


@pytest.mark.parametrize("script", ["bench/sasrec_beauty.py", "bench/generative_beauty.py"])
def test_training_benches_report_bad_data_in_one_line(script, capsys, tmp_path):
    bench = load_script(script)
    err = refused(capsys, lambda: bench.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]),
                  "error:", "not found")
    assert len(err.strip().splitlines()) == 1


# -- beam_search_throughput.py ------------------------------------------------------------------------

def test_beam_throughput_decodes_both_searches_on_the_same_codes_and_warms_up(monkeypatch, tmp_path, capsys):
    """Our search used a trie of --semantic-ids while HF generate used the model's own codes (a model
    resumed from --model-dir may have other ones): both now read the model's; the --generative
    figure gets a warm-up call as the T5 comparison does. The T5 model, its training and HF generate
    are stood in for by a hierarchical model (transformers is not needed here)."""
    import genrec.generative as generative_module
    from genrec.data import write_plain
    from genrec.generative import GenerativeConfig, HierarchicalGenerative, save_generative
    from genrec.synthetic import synthetic_info
    from genrec.trie import trie_of
    from quantize.semantic_ids import SemanticIdTable

    import genrec

    ds = genrec.load_dataset(SYNTH)
    write_plain(ds, tmp_path / "data")
    info = synthetic_info(ds)
    own = np.stack([info.category, info.brand, info.attribute], 1)
    sizes = [int(c) + 1 for c in own.max(0)]
    other = own[np.random.default_rng(0).permutation(len(own))]  # another assignment: not the model's codes
    (tmp_path / "sid").mkdir()
    SemanticIdTable.from_codes(other, sizes).save(tmp_path / "sid" / "semantic_ids.json")
    torch.manual_seed(0)
    model = HierarchicalGenerative(own, sizes, GenerativeConfig(hidden=16, num_blocks=1, num_heads=1,
                                                                head_layers=1)).eval()
    save_generative(model, tmp_path / "gr.pt")

    bench = load_script("bench/beam_search_throughput.py")
    monkeypatch.setattr(bench, "train_tiger", lambda *a, **k: argparse.Namespace(model=model))
    tries = []
    real_search = bench.beam_search

    def search(m, trie, *a, **k):
        tries.append(trie)
        return real_search(m, trie, *a, **k)

    def hf(m, instances, num_beams, batch_size):  # HF generate constrains by trie_of(model)
        tries.append(trie_of(m))
        out = real_search(m, trie_of(m), instances.histories, beam_size=num_beams, users=instances.users)
        return out.items, out.log_probs

    calls = []
    real_recommend = generative_module.recommend
    monkeypatch.setattr(bench, "beam_search", search)
    monkeypatch.setattr(bench, "hf_generate", hf)
    monkeypatch.setattr(generative_module, "recommend", lambda *a, **k: calls.append(len(a[1])) or real_recommend(*a, **k))
    bench.main(["--data", str(tmp_path / "data"), "--semantic-ids", str(tmp_path / "sid"), "--model-dir",
                str(tmp_path / "t5"), "--users", "30", "--beam", "5", "--our-batch", "16", "--generative",
                str(tmp_path / "gr.pt")])
    text = capsys.readouterr().out
    assert len(tries) == 4 and all(t is tries[0] for t in tries)
    assert np.array_equal(tries[0].codes.numpy(), own)
    assert "agreement: exact" in text
    assert len(calls) == 2 and calls[0] < calls[1]  # a warm-up batch, then every test user timed
    assert "hierarchical model, beam 5" in text
