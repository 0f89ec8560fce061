"""Running a recipe's stages in a run directory: what is done is skipped, what was interrupted
resumes, what changed is refused unless forced, and nothing half-written ever counts.

    with Recipe(config, "runs/beauty") as recipe:   # lock, input fingerprints, plan
        recipe.run_stage("data")
        ...
        results = recipe.run_stage("report") and recipe.results()

or simply :func:`run_recipe` (every enabled stage, in order).

When a stage finishes, ``<stage>/stage.done.json`` is written last, holding the hash of what the
stage depends on (:mod:`genrec.recipe.stage_hash`): its config sections, a fingerprint of the
input data files (:mod:`genrec.rundir`) and its upstream stages' hashes. A stage whose marker
matches is skipped (unless a stage it reads was produced again since with other files: each marker
records its own run id, a digest of its outputs, and those of the stages it read, and a mismatch
clears and reruns it); a stage without one (a killed run) runs again, the training stages resuming
from their checkpoints (unless a stage they read was produced again since: they start over), so a
resumed run ends with the same results. A stage whose hash changed would be
discarded: refused with the changed keys named, unless ``force``.

Under ``torchrun`` (a process group of several ranks, :mod:`genrec.distributed`): rank 0 holds the
lock, plans, writes every marker and runs the stages that do not train; the training stages
(``Stage.every_rank``: sasrec, generative, joint) run on every rank, their trainers sharding the
batches with DDP (their checkpoints written by rank 0; the small summaries after training, the same
on every rank, are written atomically by each). The other ranks wait at each stage's end and then
read what rank 0 wrote; a stage that fails on rank 0 fails on every rank with its message (a trainer
failing on any rank raises there at once and stops the group through torchrun; a trainer's marker is
written only after every rank has finished it). The process group is gloo unless a model is on a
GPU this machine has (nccl). The run directory must be shared by all ranks. In a single process
nothing of this applies.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from genrec.artifacts import load_json, save_json
from genrec.datasets import fetch_dataset_files
from genrec.errors import DataFormatError, GenrecError, RunDirectoryError
from genrec.recipe.config import RecipeConfig, config_to_dict
from genrec.recipe.stages import STAGES, Stage, StageContext, stage_names
from genrec.recipe.stage_hash import flat_keys, hash_inputs, stage_hash
from genrec.rundir import RunLock, data_fingerprint
from genrec.training import trim_heap

log = logging.getLogger(__name__)

__all__ = ["Recipe", "run_recipe", "StopAfterStage"]

OnStage = Callable[[str, str, dict[str, Any]], None]


class StopAfterStage(Exception):
    """Raised by :func:`run_recipe` when ``stop_after`` names the stage just finished (for tests and
    step-by-step runs)."""


class Recipe:
    """One recipe in one run directory, held locked from ``__enter__`` to ``__exit__``.

    ``force``: discard stages whose config or data changed (else :class:`RunDirectoryError`).
    ``progress``: tqdm bars of the stages (``None``: on a terminal only). ``on_stage(name, event,
    info)`` is called with ``"skip"``, ``"start"`` and ``"done"`` events (the CLI prints from it).
    """

    def __init__(self, config: RecipeConfig, run_dir: str | Path, *, force: bool = False,
                 progress: bool | None = None, on_stage: OnStage | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.force = force
        self.on_stage = on_stage
        self.context = StageContext(self.run_dir, config,
                                    progress=progress is not False and bool(progress or sys.stderr.isatty()))
        self._lock = RunLock(self.run_dir)
        self._plan: dict[str, dict] = {}
        self._discard: list[str] = []
        self._done: dict[str, Path] = {}
        self._runs: dict[str, str | None] = {}  # stage -> the run id in its done marker (None: an older marker)
        self._dist: Any = None  # genrec.distributed under torchrun with several ranks, else None

    def _main(self) -> bool:
        """True where markers are written: rank 0, or the single process."""
        return self._dist is None or self._dist.is_main()

    def _from_main(self, action: Callable[[], Any]) -> Any:
        """``action()`` on rank 0 with its result (or its error, raised on every rank) handed to all
        ranks; ``action()`` itself in a single process. Also a barrier: no rank goes on before rank 0
        has finished."""
        if self._dist is None:
            return action()
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self._dist.is_main():
            try:
                outcome = ("ok", action())
            except BaseException as e:  # every rank must hear of it, or the others wait forever
                error, outcome = e, ("error", (type(e), str(e)))
        outcome = self._dist.broadcast_object(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            cls, message = outcome[1]
            try:
                raised = cls(f"on rank 0: {message}")
            except Exception:  # an error class that takes other arguments
                raised = RuntimeError(f"on rank 0: {cls.__name__}: {message}")
            raise raised
        return outcome[1]

    def __enter__(self) -> "Recipe":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join its process group
            from genrec import distributed
            from genrec.model_settings import resolve_device

            # the backend follows the models' devices (nccl cannot reduce the CPU tensors of CPU models,
            # the default even on a GPU machine); the first group made is the one every stage uses
            import torch
            import torch.distributed as dist

            devices = (self.config.sasrec.device, self.config.generative.device)
            gpu = any(resolve_device(d).type == "cuda" for d in devices) and torch.cuda.is_available() \
                and dist.is_nccl_available()  # (no GPU here: gloo, and the trainer names the missing GPU)
            if distributed.init_from_env("nccl" if gpu else "gloo"):
                self._dist = distributed
                self.context.progress = self.context.progress and distributed.is_main()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # every rank: the directory must be shared
        except OSError as e:
            raise RunDirectoryError(f"{self.run_dir}: cannot create the run directory: {e.strerror}") from None
        if self.config.num_threads:
            import torch

            torch.set_num_threads(self.config.num_threads)

        def lock_and_prepare() -> None:  # on rank 0 only: one lock for the whole group
            self._lock.__enter__()
            try:
                self._prepare()
            except BaseException:
                self._lock.__exit__(None, None, None)
                raise

        self._from_main(lock_and_prepare)  # a held lock or a refused plan stops every rank
        if self._dist is not None:  # rank 0's plan everywhere
            try:
                self._plan, self._discard = self._dist.broadcast_object((self._plan, self._discard))
            except BaseException:
                if self._main():
                    self._lock.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main():
            self._lock.__exit__(*exc)

    def _prepare(self) -> None:
        """Fingerprint the data, plan every stage's hash, refuse to discard work unless forced."""
        config, run_dir = self.config, self.run_dir
        if not (run_dir / "config.json").is_file():  # a new run: never inside another tool's output
            taken = [f for f in ("recommender.json", "best.pt", "last.pt") if (run_dir / f).is_file()]
            if taken:
                raise RunDirectoryError(f"{run_dir}: holds {', '.join(taken)}, not a recipe run (a saved recommender "
                                        "or a model's training directory); choose another --out")
        # files a first run downloads must exist before the fingerprint, or its stages would record none
        # and the next invocation (a resume) would see the data as changed
        fetch_dataset_files(config.data.dataset, config.data.cache_dir)
        try:
            fingerprint = data_fingerprint(config.data.dataset, config.data.cache_dir)
        except OSError as e:
            raise DataFormatError(f"{e.filename}: cannot read the dataset file: {e.strerror}") from None
        self._plan, self._discard, changed = _plan(config, run_dir, fingerprint)
        costly = [n for n in self._discard if _stage(n).keeps_work and not self._plan[n]["rerun_only"]]
        if costly and not self.force:
            trained = [f"{n}/{f}" for n in costly for f in ("best.pt", "last.pt") if (run_dir / n / f).exists()]
            cheap = [n for n in self._discard if n not in costly]
            raise RunDirectoryError(
                f"{run_dir}: the config or data changed since this run directory's stages ran "
                f"(changed: {', '.join(changed) or 'the settings of stages they read'}); running would discard "
                f"the stages {', '.join(costly)}"
                + (f", trained models included ({', '.join(trained)})" if trained else "")
                + (f" (and rerun {', '.join(cheap)})" if cheap else "")
                + ". Rerun with --force (run_recipe(force=True)) to discard and redo them, or choose a fresh "
                  "run directory (--out)")
        for name in self._discard:  # config.json is about to describe the new settings: no stage done (or started)
            # under the old ones may pass for done (a run stopped before reaching them served the old fusion with
            # the new k) or for interrupted work of these settings (the same command without --force was refused)
            _write(run_dir, lambda n=name: self._clear(_stage(n), run_dir / n), name)
        _write(run_dir, lambda: save_json(run_dir / "config.json", config_to_dict(config)), "recipe")
        report = _marker(run_dir / "report" / "stage.done.json")
        if report is None or report.get("config_hash") != self._plan["report"]["hash"]:
            # the report will be written anew: an earlier one must not outlive the stages it came from
            for stale in ("results.json", "report.md"):
                (run_dir / stale).unlink(missing_ok=True)

    def run_stage(self, name: str) -> dict[str, Any]:
        """Run stage ``name`` (or skip it when done with the same hash); its ``stage.done.json`` content.
        Its upstream stages must have run (or been skipped) in this recipe first."""
        stage = _stage(name)
        if name not in self._plan:
            raise ValueError(f"stage {name!r} is not enabled by this config; stages: {stage_names(self.config)}")
        reads = stage.upstream(self.config)
        missing = [a for a in reads if a in self._plan and a not in self._done]
        if missing:
            raise ValueError(f"stage {name!r} reads {missing}: run those first")
        run_dir, h, src = self.run_dir, self._plan[name]["hash"], self._plan[name]["src"]
        sdir = run_dir / name
        marker = sdir / "stage.done.json"
        main = self._main()
        def read_done() -> tuple[dict | None, list[str]]:  # the marker, and the outputs it records that are gone
            d = _marker(marker)
            return d, [f for f in ((d or {}).get("artifacts") or {}).values() if not (run_dir / f).exists()]

        done, lost = self._from_main(read_done)  # rank 0's reading everywhere
        upstream_runs = {a: self._runs.get(a) for a in reads if a in self._done}
        rerun_upstream = _reran_upstream(done, upstream_runs)
        started = self._from_main(lambda: _marker(sdir / "stage.started.json")) if done is None else None
        resumed_on = _reran_upstream(started, upstream_runs)
        if resumed_on:
            # interrupted, and what it read was produced again since: its checkpoints describe the old
            # artifacts, so it starts over rather than resume them
            log.warning("stage %s: %s ran again since it was interrupted; clearing %s and starting it over", name,
                        ", ".join(resumed_on), sdir)
            self._from_main(lambda: shutil.rmtree(sdir))
        if lost:  # outputs removed since (the report's, when a stage ran: see _begin) or lost: made again
            log.info("stage %s: %s missing; running it again", name, ", ".join(lost))
        if done is not None and done.get("config_hash") == h and not rerun_upstream and not lost:
            log.info("stage %s: done earlier, skipped", name)
            self._done[name] = sdir
            self._runs[name] = done.get("run_id")
            if self.on_stage and main:
                self.on_stage(name, "skip", done)
            return done
        if rerun_upstream and done is not None and done.get("config_hash") == h:
            # same settings, but what it read was produced again since (a deleted stage directory
            # rerun, say): its outputs describe the old artifacts, and a trainer must not resume them
            log.warning("stage %s: %s ran again after it; clearing %s and running it again", name,
                        ", ".join(rerun_upstream), sdir)
            self._from_main(lambda: shutil.rmtree(sdir))
        self._from_main(lambda: self._begin(stage, sdir, {"stage": name, "config_hash": h, "hashed": src,
                                                          "upstream_runs": upstream_runs}))
        if self.on_stage and main:
            self.on_stage(name, "start", {"description": stage.description})
        self.context.inputs = {k: self._done[k] for k in reads if k in self._done}

        def run_and_mark() -> dict[str, Any]:
            info = self._run(stage, h, src)
            info = {**info, "run_id": _outputs_digest(run_dir, info["artifacts"]), "upstream_runs": upstream_runs}
            if main:
                _write(sdir, lambda: save_json(marker, info), name)  # last: the stage counts as done only now
            return info

        if self._dist is not None and stage.every_rank:
            # a trainer: every rank trains (DDP). A rank that fails raises at once (torchrun then ends the
            # others; waiting in a collective with peers in another one would hang them all); the barrier
            # makes rank 0 write the marker only once every rank has finished training
            ran = self._run(stage, h, src)
            self._dist.barrier()

            def mark() -> dict[str, Any]:
                marked = {**ran, "run_id": _outputs_digest(run_dir, ran["artifacts"]), "upstream_runs": upstream_runs}
                _write(sdir, lambda: save_json(marker, marked), name)  # last: the stage counts as done only now
                return marked

            info = self._from_main(mark)
        else:
            info = self._from_main(run_and_mark)  # rank 0 runs it, the others wait for its outcome
        self._done[name] = sdir
        self._runs[name] = self._from_main(lambda: _marker(marker))["run_id"]  # rank 0's id on every rank
        log.info("stage %s: done in %.1fs", name, info["timing"]["wall_s"])
        if self.on_stage and main:
            self.on_stage(name, "done", info)
        return info

    def _clear(self, stage: Stage, sdir: Path) -> None:
        """Remove what a changed (discarded) stage left, before config.json names the new settings."""
        name = stage.name
        if not sdir.exists():
            return
        if self._plan[name]["rerun_only"]:
            log.info("stage %s: run before settings it now hashes existed (or with other values of %s); "
                     "clearing %s; it runs again", name, ", ".join(stage.rerun_keys), sdir)
        else:  # finished or interrupted with other settings (allowed by force): its checkpoints cannot be resumed
            log.log(logging.WARNING if stage.keeps_work else logging.INFO,
                    "stage %s: its config, data or upstream stages changed since it ran; clearing %s; it runs "
                    "again", name, sdir)
        shutil.rmtree(sdir)

    def _begin(self, stage: Stage, sdir: Path, started: dict[str, Any]) -> None:
        """Write a stage's start marker (what a changed stage left went in :meth:`_prepare`)."""
        for stale in ("results.json", "report.md"):  # any stage that runs makes the last report out of date
            (self.run_dir / stale).unlink(missing_ok=True)
        # an earlier done marker must not outlive this run: killed, the stage counts as interrupted
        (sdir / "stage.done.json").unlink(missing_ok=True)
        _write(sdir, lambda: save_json(sdir / "stage.started.json", started), stage.name)

    def _run(self, stage: Stage, h: str, src: dict[str, Any]) -> dict[str, Any]:
        """Run ``stage`` in this process; the content of its done marker."""
        name, run_dir = stage.name, self.run_dir
        sdir = run_dir / name
        trim_heap()  # what earlier stages freed goes back to the OS before this stage's peak is measured
        scoped = _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            artifacts = _write(sdir, lambda: stage.run(self.context), name)
        except (GenrecError, FileNotFoundError):
            raise  # already say what is wrong and where
        except Exception as e:
            raise RuntimeError(f"stage {name!r} failed: {type(e).__name__}: {e}") from e
        wall = time.perf_counter() - t0
        return {"stage": name, "config_hash": h,
                "artifacts": {k: str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                              for k, p in artifacts.items()},
                "timing": {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(),
                           "peak_rss_scope": "stage" if scoped else "process"},
                "hashed": src}

    def results(self) -> dict[str, Any] | None:
        """``results.json``'s content once the report stage has run, else None."""
        path = self.run_dir / "results.json"
        return load_json(path) if path.exists() else None


def run_recipe(config: RecipeConfig, run_dir: str | Path, *, progress: bool | None = None,
               stop_after: str | None = None, on_stage: OnStage | None = None,
               force: bool = False) -> dict[str, Any] | None:
    """Run (or resume) every enabled stage of ``config`` in ``run_dir``; returns ``results.json``'s content.

    See :class:`Recipe`: completed stages whose hash matches are skipped, interrupted ones resume,
    changed ones are refused unless ``force``; ``run_dir/run.lock`` keeps a second run out; a stage
    that cannot write fails with :class:`RunDirectoryError` and leaves finished stages intact.
    ``stop_after``: raise :class:`StopAfterStage` once that stage is done (later stages are left for
    the next call)."""
    from tqdm.auto import tqdm

    names = stage_names(config)
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"stop_after={stop_after!r} is not a stage of this recipe; stages: {names}")
    with Recipe(config, run_dir, force=force, progress=progress, on_stage=on_stage) as recipe:
        quiet = not recipe._main()  # one bar, rank 0's, under torchrun
        bar = tqdm(total=len(names), desc="recipe", unit="stage",
                   disable=True if quiet else (None if progress is None else not progress))
        try:
            for name in names:
                bar.set_postfix_str(name)
                recipe.run_stage(name)
                bar.update(1)
                if stop_after == name:
                    raise StopAfterStage(name)
        finally:
            bar.close()
        return recipe.results()


# ----------------------------------------------------------------------------------------------
# Hashes and markers


def _stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"no stage {name!r}; stages: {stage_names()}")


def _changed_keys(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """The config keys (``section.key``) whose hashed values differ; input data changes read
    ``data files (path)``."""
    if before is None:
        return ["(unknown: the stage was run by an older genrec)"]
    old, new = flat_keys(before.get("config", {})), flat_keys(after.get("config", {}))
    ups_old, ups_new = before.get("upstream", {}), after.get("upstream", {})
    out = [f"stage {k} added" for k in ups_new if k not in ups_old]
    out += [f"stage {k} removed" for k in ups_old if k not in ups_new]
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "text.fingerprint":
            out.append("text.embeddings files")
            continue
        out.append("data files (" + _data_paths(before, after) + ")" if ".fingerprint" in key else key)
    return sorted(set(out))


def _rerun_only(stage: Stage, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether only ``stage.rerun_keys`` differ between a marker's hashed inputs and now (same
    upstream hashes, same version): such a stage reruns without ``force``."""
    if not stage.rerun_keys or before is None:
        return False
    if before.get("upstream") != after.get("upstream") or before.get("version") != after.get("version"):
        return False
    old, new = flat_keys(before.get("config", {})), flat_keys(after.get("config", {}))
    diff = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
    # a rerun key whose value is a mapping is flattened into "key.sub" entries
    return bool(diff) and all(any(k == rk or k.startswith(rk + ".") for rk in stage.rerun_keys) for k in diff)


def _data_paths(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    def files(src: Mapping[str, Any]) -> dict[str, Any]:
        fp = src.get("config", {}).get("data", {}).get("fingerprint") or {}
        return {f["path"]: f for f in fp.get("files", [])}

    a, b = files(before), files(after)
    changed = [p for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
    return ", ".join(changed) if changed else "the dataset spec"


def _reran_upstream(done: Mapping[str, Any] | None, upstream_runs: Mapping[str, str | None]) -> list[str]:
    """The upstream stages that produced their artifacts again after ``done`` (a stage's done marker)
    read them: their run ids differ from those the marker recorded. Markers from before run ids were
    recorded (no ``upstream_runs``) match anything."""
    recorded = (done or {}).get("upstream_runs")
    if not isinstance(recorded, Mapping):
        return []
    return [a for a, run in upstream_runs.items() if a in recorded and recorded[a] != run]


def _outputs_digest(run_dir: Path, artifacts: Mapping[str, str]) -> str:
    """A stage run's id: the SHA-256 of its artifacts' files (a directory: every file in it), so a
    stage produced again with identical files (its directory deleted, say) keeps its id and the stages
    that read it stay valid, while different outputs get a new id and those stages rerun. A stage
    whose files record timings, or with no artifact file (a random id), always counts as new."""
    digest, hashed = hashlib.sha256(), 0
    for key in sorted(artifacts):
        path = Path(artifacts[key]) if Path(artifacts[key]).is_absolute() else run_dir / artifacts[key]
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for p in paths:
            digest.update(f"{key}:{p.relative_to(path) if path.is_dir() else ''}\0".encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            hashed += 1
    return digest.hexdigest()[:32] if hashed else uuid.uuid4().hex


def _marker(path: Path) -> dict[str, Any] | None:
    """A stage marker's content; an unreadable one (a damaged file) counts as absent: the stage reruns."""
    if not path.exists():
        return None
    try:
        content = load_json(path)
    except (OSError, ValueError):
        content = None
    if not isinstance(content, dict):  # unreadable, or valid JSON of another shape
        log.warning("%s is unreadable; treating its stage as not done", path)
        return None
    return content


def _plan(config: RecipeConfig, run_dir: Path, fingerprint: Any) -> tuple[dict[str, dict], list[str], list[str]]:
    """Hash inputs of every enabled stage, the stages whose earlier work a run would discard, and
    the config keys that changed for them."""
    hashes: dict[str, str] = {}
    plan: dict[str, dict] = {}
    discard, changed = [], []
    for stage in STAGES:
        if not stage.enabled(config):
            continue
        src = hash_inputs(stage, config, hashes, fingerprint)
        hashes[stage.name] = stage_hash(src)
        plan[stage.name] = {"hash": hashes[stage.name], "src": src, "rerun_only": False}
        sdir = run_dir / stage.name
        earlier = _marker(sdir / "stage.done.json") or _marker(sdir / "stage.started.json")
        if earlier is not None and earlier.get("config_hash") != hashes[stage.name]:
            discard.append(stage.name)
            plan[stage.name]["rerun_only"] = _rerun_only(stage, earlier.get("hashed"), src)
            if stage.keeps_work and not plan[stage.name]["rerun_only"]:
                changed += [k for k in _changed_keys(earlier.get("hashed"), src) if k not in changed]
    return plan, discard, changed


# ----------------------------------------------------------------------------------------------
# Writes and memory


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write(where: Path, action: Callable[[], Any], stage: str) -> Any:
    """Run ``action``; an error writing the run directory (disk full, read-only, no permission)
    becomes a :class:`RunDirectoryError` naming the stage and the file. Artifacts are written
    atomically, so what earlier stages wrote is intact. ``where``: the stage directory (or the run
    directory itself)."""
    try:
        return action()
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:
            raise
        run_dir = where.resolve() if stage == "recipe" else where.resolve().parent
        inside = e.filename is None or Path(str(e.filename)).resolve().is_relative_to(run_dir)
        if not inside:  # an input outside the run directory (data, an embedding cache)
            raise DataFormatError(f"stage {stage!r} cannot read {e.filename}: {e.strerror}") from None
        verb = "write" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
        raise RunDirectoryError(
            f"stage {stage!r} could not {verb} {e.filename or where}: {e.strerror}; the stages finished before "
            f"it are intact: free some space or make the run directory writable, then rerun to resume") from None


def _peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: the kernel's ``VmHWM`` (reset per stage by
    :func:`_reset_peak_rss`), else ``ru_maxrss``, which never resets and, after an exec, never falls
    below the parent's peak (a benchmark that built its data before starting ``genrec run`` saw its
    own peak as every small stage's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
