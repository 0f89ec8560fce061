"""What keeps a run directory honest: fingerprints of the input data files, and a lock so that two
runs never write into one directory at once.

**Fingerprints** (:func:`data_fingerprint`). A recipe's stage hashes cover the files a dataset spec
reads, so changed data reruns every stage that depends on it instead of reporting an old run. Each
file contributes its resolved path, its size and a content hash: SHA-256 of the whole file up to
:data:`FULL_HASH_BYTES` (64 MiB); above that, a sampled hash (SHA-256 of 16 blocks of 1 MiB spread
evenly over the file) plus the modification time in nanoseconds, so a multi-GB file costs ~16 MiB
of reading. A spec with no files (``synthetic:...``) is fingerprinted by the spec alone (the generator
is seeded). ``recbole:`` and ``parquet:`` specs cover their ``.inter`` / ``.item`` and Parquet files.
Files that a loader fetches itself from a hub (``amazon2023`` without local files) are not
covered.

**Lock** (:class:`RunLock`). ``run.lock`` in the run directory holds an exclusive ``flock`` and the
holder's pid and start time. A second run on the same directory is refused with a message naming
that pid; the kernel releases the lock of a killed process, so a stale lock file is simply taken over
(and logged).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from genrec.errors import RunDirectoryError
from genrec.paths import default_cache_dir

log = logging.getLogger(__name__)

__all__ = ["FULL_HASH_BYTES", "file_fingerprint", "data_files", "data_fingerprint", "RunLock"]

FULL_HASH_BYTES = 64 * 2**20
_SAMPLE_BLOCKS = 16
_BLOCK = 2**20


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of one file (``"sampled": True`` and ``"mtime_ns"`` added above
    :data:`FULL_HASH_BYTES`; see the module doc)."""
    path = Path(path).resolve()
    st = path.stat()
    h = hashlib.sha256()
    out: dict[str, Any] = {"path": str(path), "size": st.st_size}
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
        else:
            step = (st.st_size - _BLOCK) // (_SAMPLE_BLOCKS - 1)
            for i in range(_SAMPLE_BLOCKS):
                f.seek(i * step)
                h.update(f.read(_BLOCK))
            out.update(sampled=True, mtime_ns=st.st_mtime_ns)
    out["sha256"] = h.hexdigest()
    return out


def data_files(spec: str, cache_dir: str | Path | None = None) -> list[Path]:
    """The files that :func:`genrec.load_dataset` reads for ``spec`` (those that exist now)."""
    spec = str(spec).strip()
    kind, sep, arg = spec.partition(":")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if kind == "synthetic":
        return []
    if sep and kind in ("amazon2014", "amazon2023"):
        from genrec.datasets import amazon_category

        cat = amazon_category(arg, spec)  # a file name in the cache: never a path out of it
    if sep and kind == "amazon2014":
        candidates = [root / "amazon2014" / f"reviews_{cat}_5.json.gz", root / "amazon2014" / f"meta_{cat}.json.gz"]
    elif sep and kind == "amazon2023":
        candidates = [root / "amazon2023" / f"{name}{ext}" for name in (cat, f"meta_{cat}")
                      for ext in (".jsonl", ".jsonl.gz")]
    elif sep and kind in ("recbole", "parquet"):
        from genrec.datasets import split_path_spec

        path, rest = split_path_spec(arg, spec)
        if kind == "recbole":
            from genrec.recbole import recbole_files

            candidates = [p for p in recbole_files(path) if p is not None] if path is not None else []
        elif path is not None:
            candidates = [Path(path) / "interactions.parquet", Path(path) / "items.parquet"]
        else:  # parquet:interactions=PATH,items=PATH,...
            kv = dict(part.strip().partition("=")[::2] for part in rest.split(",") if "=" in part)
            candidates = [Path(kv[k].strip()) for k in ("interactions", "items") if kv.get(k, "").strip()]
    else:
        directory = Path(arg if sep and kind == "plain" else spec).expanduser()
        if not directory.is_dir():
            return []
        # the plain format's two inputs, in whichever form (.tsv / .tsv.gz, .jsonl / .jsonl.gz) is there
        candidates = sorted(p for p in directory.iterdir()
                            if p.is_file() and p.name.split(".")[0] in ("interactions", "items"))
    return [p for p in candidates if p.is_file()]


def data_fingerprint(spec: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The spec and a :func:`file_fingerprint` of each of its :func:`data_files`; for a generated
    (``synthetic``) dataset whose generator changed for its arguments, also its ``generator`` revision."""
    out: dict[str, Any] = {"spec": str(spec), "files": [file_fingerprint(p) for p in data_files(spec, cache_dir)]}
    kind, sep, arg = str(spec).strip().partition(":")
    if kind == "synthetic" and sep:
        from genrec.datasets import typed_spec_kwargs
        from genrec.synthetic import generator_revision, make_synthetic

        revision = generator_revision(**typed_spec_kwargs(arg, str(spec), make_synthetic, "synthetic"))
        if revision is not None:  # absent for the first revision: the fingerprints of runs made before it
            out["generator"] = revision
    return out


class RunLock:
    """An exclusive lock on a run directory for the duration of a ``with`` block (see the module doc)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "run.lock"
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def held_elsewhere(self) -> bool:
        """True while another process holds this lock (checked with a shared lock taken and given back
        at once, creating nothing); the CLI asks before appending to the run's log, which a running job
        is writing. A file system without locks answers False (``__enter__`` then says what fails)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or no directory): nobody holds it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError as e:
            return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirectoryError(f"{self.path.parent}: cannot create the lock file {self.path.name} "
                                    f"({e.strerror}); use a writable run directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self._holder()
            since = holder.get("started")
            raise RunDirectoryError(
                f"{self.path.parent} is in use by another genrec run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, started {since or '?'}; lock file {self.path}); wait for it to "
                f"finish or use another run directory") from None
        previous = self._holder()
        if previous.get("pid") is not None:
            log.info("%s: taking over the lock of pid %s, which is no longer running", self.path, previous["pid"])
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        except OSError as e:  # a full disk: give the lock back (it stayed held for the process's lifetime)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunDirectoryError(f"{self.path}: cannot write the lock file ({e.strerror}); free space in "
                                    f"{self.path.parent} or use another run directory") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            # Empty the file before unlocking: a later run then sees no previous holder to report.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
