"""What a newcomer sees: without ``-v`` the console of ``genrec run`` / ``genrec demo`` holds the stage
lines, the running stage's bar and the summary, never INFO logs, faiss's loader messages or the
encoder's weight-loading bar; the full log is appended to ``<run dir>/run.log``; ``-v`` brings the
INFO lines back to the console (genrec.logs)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from genrec import cli
from genrec.logs import configure_logging, log_to_file, reset_logging
from test_pipeline import TINY  # the tiny demo's overrides, defined once

ROOT = Path(__file__).resolve().parents[1]
DEMO_YAML = ROOT / "recipes" / "configs" / "demo.yaml"

NOISE = ("INFO", "faiss", "AVX512", "ModuleNotFoundError", "Loading weights", "sentence_transformers", "Traceback")


def test_console_policy(tmp_path, capsys):
    """Own WARNINGs and everyone's ERRORs on the console; INFO (own) and third-party WARNINGs in
    the file; third-party INFO (faiss's loader) nowhere without -v; -v shows INFO of all."""
    root_level = logging.getLogger().level
    configure_logging(0)
    try:
        with log_to_file(tmp_path / "run.log", header="genrec test"):
            logging.getLogger("faiss.loader").info("Could not load library with AVX512 support due to: ...")
            logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
            logging.getLogger("genrec.training").info("sasrec epoch 1 loss 4.2")
            logging.getLogger("genrec.training").warning("validation ndcg@10 is nan")
            logging.getLogger("faiss").error("faiss broke")
    finally:
        reset_logging()
    err = capsys.readouterr().err
    assert "validation ndcg@10 is nan" in err and "faiss broke" in err
    assert "AVX512" not in err and "some weights" not in err and "INFO" not in err
    text = (tmp_path / "run.log").read_text()
    assert text.startswith("===== ") and "genrec test =====" in text.splitlines()[0]
    assert "INFO genrec.training: sasrec epoch 1 loss 4.2" in text and "some weights were not used" in text
    assert "faiss broke" in text and "AVX512" not in text
    assert logging.getLogger().level == root_level  # reset_logging undid the setup

    configure_logging(1)
    try:
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        logging.getLogger("genrec.training").info("sasrec epoch 2 loss 3.9")
    finally:
        reset_logging()
    err = capsys.readouterr().err
    assert "INFO faiss.loader: Loading faiss with AVX2 support." in err and "sasrec epoch 2" in err
    logging.getLogger("genrec.training").warning("after reset")
    assert "after reset" not in capsys.readouterr().err  # no handler of ours left behind


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """``genrec run demo.yaml --until quantize`` at the tiny size in a new process with an empty
    embedding cache, so that the encoder loads and faiss is imported for the first time, as for a
    newcomer; its stderr piped (no bars: stderr is not a terminal)."""
    tmp = tmp_path_factory.mktemp("face")
    out, cache = tmp / "run", tmp / "emb_cache"
    env = {**os.environ, "GENREC_CACHE": str(tmp / "genrec_cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "genrec.cli", "run", str(DEMO_YAML), "--out", str(out),
                           "--until", "quantize", "--set", *TINY, f"text.cache_dir={cache}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, cache, proc


def test_console_is_quiet_without_verbose(fresh_run):
    out, _, proc = fresh_run
    for word in NOISE:
        assert word not in proc.stderr, f"{word!r} on the console:\n{proc.stderr}"
    lines = proc.stderr.splitlines()
    # nothing but the command's own lines: the header, one start and one done line per stage, the stop
    assert all(re.match(r"(genrec run: |\[\d+/10 (data|embed|quantize)\] )", line) for line in lines), proc.stderr
    assert lines[0].endswith(f"(log: {out / 'run.log'})")
    assert [line.split("] ", 1)[1][:4] for line in lines[1:-1]] == ["load", "done", "item", "done", "embe", "done"]
    assert "stopped after stage quantize" in lines[-1]


def test_run_log_holds_the_full_log(fresh_run):
    out, _, _ = fresh_run
    text = (out / "run.log").read_text()
    first = text.splitlines()[0]
    assert first.startswith("===== ") and "genrec run " in first and "--until quantize" in first
    assert re.search(r"INFO genrec\.\S+: stage embed: done in", text)
    assert "INFO quantize.embed: loading sentence encoder" in text  # the encoder did load in that process
    assert "[3/10 quantize] done in" in text  # the console's lines are in the log too
    assert "Loading weights" not in text and "AVX512" not in text  # third-party INFO: only with -v


def test_verbose_brings_info_back_and_resume_appends(fresh_run, capsys):
    """``genrec demo -v`` on the same directory: it resumes after quantize (same settings), the INFO
    lines are on stderr, and run.log gets a second header."""
    out, cache, _ = fresh_run
    capsys.readouterr()
    assert cli.main(["demo", "-v", "--out", str(out), "--set", *TINY, f"text.cache_dir={cache}"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^\d\d:\d\d:\d\d INFO genrec\.training: sasrec epoch 1 loss", captured.err, re.M)
    assert "[3/10 quantize] already done, skipped" in captured.err
    assert "[10/10 report] done in" in captured.err and "test ndcg@10" in captured.out
    assert "Traceback" not in captured.err
    headers = [line for line in (out / "run.log").read_text().splitlines() if line.startswith("===== ")]
    assert len(headers) == 2 and "genrec demo -v --out" in headers[1]
    # without -v, in this process too: no INFO on the console, the run is all skips
    assert cli.main(["demo", "--out", str(out), "--set", *TINY, f"text.cache_dir={cache}"]) == 0
    err = capsys.readouterr().err
    assert "INFO" not in err and "[10/10 report] already done, skipped" in err


def test_a_second_run_on_a_held_directory_leaves_its_log_alone(fresh_run, capsys):
    """A run refused because another job holds the directory says so on the console and writes
    nothing into that job's run.log (it appended its header and error there)."""
    from genrec.rundir import RunLock

    out, cache, _ = fresh_run
    before = (out / "run.log").read_bytes()
    capsys.readouterr()
    with RunLock(out):
        assert RunLock(out).held_elsewhere()
        assert cli.main(["demo", "--out", str(out), "--set", *TINY, f"text.cache_dir={cache}"]) == 2
    assert not RunLock(out).held_elsewhere() and not RunLock(out / "nowhere").held_elsewhere()
    err = capsys.readouterr().err
    assert "is in use by another genrec run" in err and "(log:" not in err
    assert (out / "run.log").read_bytes() == before


@pytest.mark.parametrize("error, code, says", [
    (RuntimeError("stage 'sasrec' failed: ValueError: boom"), 1, "error: stage 'sasrec' failed: ValueError: boom"),
    (KeyboardInterrupt(), 130, "interrupted; run the same command again to resume"),
])
def test_failure_is_one_console_line_and_a_traceback_in_run_log(error, code, says, tmp_path, capsys, monkeypatch):
    from genrec.commands import run as run_cmd
    from genrec.recipe import load_config

    def fail(*args, **kwargs):
        try:
            raise ValueError("boom")
        except ValueError as inner:
            raise error from inner

    monkeypatch.setattr(run_cmd, "run_stages", fail)
    configure_logging(0)
    try:
        assert run_cmd.execute(load_config(DEMO_YAML, overrides=TINY), tmp_path / "run", label="genrec demo") == code
    finally:
        reset_logging()
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"genrec demo: {says}" in err
    text = (tmp_path / "run" / "run.log").read_text()
    assert says in text
    if code == 1:
        assert f"(traceback in {tmp_path / 'run' / 'run.log'})" in err
        assert "Traceback" in text and "ValueError: boom" in text
