"""Run directories that cannot lie or be lost: input-data fingerprints in the stage hashes, refusal
to discard finished work, a lock against concurrent runs, clear errors when a stage cannot write."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genrec
from genrec import cli
from genrec.errors import ConfigError, RunDirectoryError
from genrec.recipe import StopAfterStage, config_from_dict, run_recipe, strip_timing
from genrec.rundir import FULL_HASH_BYTES, RunLock, data_fingerprint, file_fingerprint

torch.set_num_threads(1)


def _tiny(dataset: str, cache: Path) -> list[str]:
    return ["num_threads=1", f"data.dataset={dataset}", "data.max_history=10", f"text.cache_dir={cache}",
            "text.fields=[title, categories]", "quantize.codebook_size=4",
            "sasrec.hidden=16", "sasrec.num_blocks=1", "sasrec.max_epochs=2", "sasrec.batch_size=64",
            "generative.hidden=16", "generative.num_blocks=1", "generative.head_layers=1", "generative.max_epochs=2",
            "generative.eval_beam=5", "generative.batch_size=64", "fusion.k=10", "fusion.beam=10",
            "fusion.methods=[fixed, adaptive]", "fusion.primary=adaptive", "report.ks=[5, 10]", "report.plots=false"]


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """A small plain-format dataset on disk (the fingerprint covers its files)."""
    ds = genrec.make_synthetic(num_users=150, num_brands=4, num_categories=4, num_attributes=4, seed=1)
    out = tmp_path_factory.mktemp("plain") / "data"
    genrec.write_plain(ds, out)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("emb_cache")


def _config(dataset, cache, *more):
    return config_from_dict({}, overrides=_tiny(str(dataset), cache) + list(more))


def _halve_users(directory: Path) -> None:
    path = next(p for p in directory.iterdir() if p.name.startswith("interactions"))
    ds = genrec.load_plain(directory)
    keep = set(ds.user_ids[: ds.num_users // 2])
    if path.suffix == ".gz":
        import gzip

        lines = gzip.open(path, "rt", encoding="utf-8").read().splitlines()
        body = [ln for ln in lines[1:] if ln.split("\t")[0] in keep]
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("\n".join([lines[0], *body]) + "\n")
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("\n".join([lines[0], *[ln for ln in lines[1:] if ln.split("\t")[0] in keep]]) + "\n",
                        encoding="utf-8")


def test_changed_data_reruns_dependent_stages(plain_dir, cache, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(plain_dir, data)
    out = tmp_path / "run"
    with pytest.raises(StopAfterStage):
        run_recipe(_config(data, cache), out, stop_after="sasrec")
    users_before = json.loads((out / "data" / "summary.json").read_text())["split"]["users_kept"]
    # the same data again: every stage is reused
    events = []
    with pytest.raises(StopAfterStage):
        run_recipe(_config(data, cache), out, stop_after="sasrec", on_stage=lambda n, e, i: events.append((n, e)))
    assert {e for _, e in events} == {"skip"}
    _halve_users(data)
    with pytest.raises(RunDirectoryError, match=r"changed: data files \(.*interactions.*\)\); running would discard "
                                                r"the stages embed, quantize, sasrec, trained models included"):
        run_recipe(_config(data, cache), out, stop_after="sasrec")
    with pytest.raises(StopAfterStage):
        run_recipe(_config(data, cache), out, stop_after="sasrec", force=True)
    users_after = json.loads((out / "data" / "summary.json").read_text())["split"]["users_kept"]
    assert users_after == users_before // 2


def test_fingerprint_covers_content_and_samples_large_files(tmp_path):
    f = tmp_path / "a.tsv"
    f.write_bytes(b"x" * 1000)
    a = file_fingerprint(f)
    f.write_bytes(b"x" * 999 + b"y")  # same size, other content
    b = file_fingerprint(f)
    assert a["size"] == b["size"] and a["sha256"] != b["sha256"] and "sampled" not in a
    assert data_fingerprint("synthetic:num_users=5") == {"spec": "synthetic:num_users=5", "files": []}
    # the generator changed its output for noisy specs (session 17): their runs see changed data and
    # rerun; every other synthetic spec keeps the fingerprint its runs recorded
    assert data_fingerprint("synthetic:num_users=5,noise_share=0.1") == \
        {"spec": "synthetic:num_users=5,noise_share=0.1", "files": [], "generator": 2}
    assert data_fingerprint("synthetic:noise_share=0.0") == {"spec": "synthetic:noise_share=0.0", "files": []}
    assert data_fingerprint("synthetic") == {"spec": "synthetic", "files": []}
    (tmp_path / "interactions.tsv").write_text("x")
    (tmp_path / "notes.txt").write_text("not an input")
    assert [Path(x["path"]).name for x in data_fingerprint(str(tmp_path))["files"]] == ["interactions.tsv"]
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(FULL_HASH_BYTES + 5 * 2**20)
    fp = file_fingerprint(big)
    assert fp["sampled"] and fp["mtime_ns"] == big.stat().st_mtime_ns


def test_second_run_on_a_locked_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunDirectoryError, match=rf"is in use by another genrec run \(pid {os.getpid()} "):
            RunLock(out).__enter__()
    with RunLock(out):  # released on exit
        pass


def test_a_lock_file_that_cannot_be_written_is_released_and_named(tmp_path, monkeypatch):
    """A full disk while writing the holder record: the lock stayed held for the process's lifetime (a
    notebook could not run there again) and the OSError reached the CLI as a traceback."""
    import errno

    import genrec.rundir as rundir

    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", full)
    with pytest.raises(RunDirectoryError, match=r"run.lock: cannot write the lock file \(No space left on device\)"):
        RunLock(tmp_path / "run").__enter__()
    monkeypatch.setattr(rundir.os, "write", real)
    with RunLock(tmp_path / "run"):  # free again
        pass


@pytest.fixture(scope="module")
def reference(plain_dir, cache, tmp_path_factory):
    """The tiny recipe on ``plain_dir``, uninterrupted: its results."""
    return run_recipe(_config(plain_dir, cache), tmp_path_factory.mktemp("ref") / "run")


@pytest.mark.slow
def test_concurrent_run_is_refused_and_a_killed_runs_lock_taken_over(plain_dir, cache, reference, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n", encoding="utf-8")  # every setting comes from --set, as in _config
    sets = _tiny(str(plain_dir), cache)
    first = subprocess.Popen([sys.executable, "-m", "genrec.cli", "run", str(cfg), "--out", str(out), "--set", *sets],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / "run.lock"
        deadline = time.time() + 120
        while time.time() < deadline and f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the test could race it"
        # a second genrec run on the same directory: refused, naming the first one's pid
        assert cli.main(["run", str(cfg), "--out", str(out), "--set", *sets]) == 2
        assert f"is in use by another genrec run (pid {first.pid}" in capsys.readouterr().err
        first.kill()  # SIGKILL: its lock file stays behind, its flock goes with it
        first.wait()
        assert lock.exists()
        assert cli.main(["run", str(cfg), "--out", str(out), "--set", *sets]) == 0  # taken over and resumed
    finally:
        first.kill()
        first.wait()
    assert strip_timing(json.loads((out / "results.json").read_text())) == strip_timing(reference)


def test_stage_that_cannot_write_fails_clearly_and_keeps_earlier_work(plain_dir, cache, reference, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def disk_full(src, dst, *a, **kw):
        if "/fusion/" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(RunDirectoryError, match=r"stage 'fusion' could not write .*fusion/.*No space left on device; "
                                                r"the stages finished before it are intact"):
        run_recipe(_config(plain_dir, cache), out)
    monkeypatch.setattr(os, "replace", real_replace)
    for stage in ("data", "embed", "quantize", "sasrec", "generative", "labels"):
        assert (out / stage / "stage.done.json").is_file()
    assert not (out / "fusion" / "stage.done.json").exists() and not (out / "results.json").exists()
    assert not list((out / "fusion").glob(".*.tmp"))  # no half-written files left behind
    assert strip_timing(run_recipe(_config(plain_dir, cache), out)) == strip_timing(reference)  # resumes


def test_fusion_k_above_the_catalogue_is_a_config_error(cache, tmp_path):
    config = _config("synthetic:num_users=60,seed=0", cache, "fusion.k=5000", "fusion.beam=5000", "report.ks=[10]")
    with pytest.raises(ConfigError, match=r"'fusion.k' \(5000\) exceeds the catalogue of synthetic.* \(\d+ items\)"):
        run_recipe(config, tmp_path / "run")


def test_stale_results_do_not_outlive_a_changed_run(plain_dir, cache, tmp_path):
    out = tmp_path / "run"
    run_recipe(_config(plain_dir, cache), out)
    assert (out / "results.json").is_file()
    with pytest.raises(StopAfterStage):  # a changed setting, stopped before the report is rewritten
        run_recipe(_config(plain_dir, cache, "sasrec.hidden=8"), out, stop_after="sasrec", force=True)
    assert not (out / "results.json").exists() and not (out / "report.md").exists()
    assert not (out / "fusion").exists()  # discarded by the forced run (the old fusion cannot pass for done)
    # the same command without --force goes on where the forced one stopped (it was refused: the discarded
    # stages' start markers passed for changed work)
    run_recipe(_config(plain_dir, cache, "sasrec.hidden=8"), out)
    # the same settings, a stage produced again (its directory deleted): the report is out of date too
    import shutil

    shutil.rmtree(out / "labels")
    with pytest.raises(StopAfterStage):
        run_recipe(_config(plain_dir, cache, "sasrec.hidden=8"), out, stop_after="labels")
    assert not (out / "results.json").exists() and not (out / "report.md").exists()


def test_a_changed_cheap_setting_reruns_its_stages_without_calling_them_interrupted(plain_dir, cache, tmp_path, caplog):
    """labels.max_hop changed: labels, evaluate and report rerun; they were reported as "interrupted" and
    "started over" (the done markers removed before they ran read as interruptions)."""
    import logging

    out = tmp_path / "run"
    run_recipe(_config(plain_dir, cache), out)
    with caplog.at_level(logging.INFO, logger="genrec.recipe.runner"):
        run_recipe(_config(plain_dir, cache, "labels.max_hop=3"), out)
    assert "since it was interrupted" not in caplog.text
    assert "stage labels: its config, data or upstream stages changed since it ran" in caplog.text
    assert (out / "results.json").is_file()


def test_a_full_disk_while_saving_a_checkpoint_is_a_clear_error(plain_dir, cache, tmp_path, monkeypatch):
    import builtins

    import genrec.artifacts

    def full_disk_open(path, mode="r", *args, **kwargs):  # a real ENOSPC from the kernel
        if "sasrec" in str(path) and "w" in mode and "b" in mode:
            return builtins.open("/dev/full", mode)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(genrec.artifacts, "open", full_disk_open, raising=False)
    with pytest.raises(RunDirectoryError, match=r"stage 'sasrec' could not write .*No space left on device"):
        run_recipe(_config(plain_dir, cache), tmp_path / "run")
    assert (tmp_path / "run" / "quantize" / "stage.done.json").is_file()


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith("run.lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunDirectoryError, match=r"cannot create the lock file run.lock \(Read-only file system\)"):
        run_recipe(_config("synthetic:num_users=50", tmp_path), tmp_path / "run")


def test_a_stage_reports_its_own_peak_memory_after_an_exec():
    """``ru_maxrss`` never falls below the parent's peak after an exec, so a benchmark that built 1 GB
    of data before starting ``genrec run`` saw ~1 GB for every small stage; the stages read the
    kernel's resettable ``VmHWM``."""
    import subprocess
    import sys

    import numpy as np

    big = np.ones(125_000_000)  # 1 GB resident in this (the parent) process
    big.sum()
    child = ("from genrec.recipe.runner import _peak_rss_mib, _reset_peak_rss\n"
             "_reset_peak_rss()\nprint(_peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    del big
    assert 10 < float(out) < 700  # the child's own imports, not the parent's gigabyte


def test_a_stage_whose_outputs_are_gone_runs_again_and_a_killed_rerun_counts_as_interrupted(plain_dir, cache,
                                                                                             tmp_path, monkeypatch):
    """A finished stage whose recorded output was deleted runs again (the report after it too); if that
    run is killed, its old done marker is gone, so the next run does not skip it on stale outputs."""
    from dataclasses import replace

    from genrec.recipe import runner, stages

    out = tmp_path / "run"
    config = _config(plain_dir, cache)
    run_recipe(config, out)
    (out / "evaluate" / "metrics.json").unlink()

    def killed(ctx):
        raise KeyboardInterrupt

    patched = tuple(replace(s, run=killed) if s.name == "evaluate" else s for s in stages.STAGES)
    monkeypatch.setattr(runner, "STAGES", patched)
    monkeypatch.setattr(stages, "STAGES", patched)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(config, out)
    assert not (out / "evaluate" / "stage.done.json").exists() and (out / "evaluate" / "stage.started.json").exists()
    monkeypatch.undo()
    events: dict[str, str] = {}
    run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert [n for n, e in events.items() if e == "done"] == ["evaluate", "report"]
    assert (out / "evaluate" / "metrics.json").is_file() and (out / "results.json").is_file()
