"""``genrec recommend``: batch inference of a trained recommender over a file of user histories.

    genrec recommend RUN_DIR --input histories.jsonl --out recs.parquet --k 10

``RUN_DIR`` is a finished recipe run or a directory written by ``Recommender.save_pretrained``;
formats of ``--input`` / ``--out`` are described in :mod:`genrec.batch`.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

from genrec.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_DIR", help="a finished recipe run directory or a saved recommender")
    p.add_argument("--input", required=True, help="histories: .jsonl ({user_id, history}) or .tsv "
                   "(user_id + history, or an interaction log user_id/item_id/timestamp); .gz allowed")
    p.add_argument("--out", required=True, help="output file: .jsonl or .parquet (written atomically)")
    p.add_argument("--k", type=int, default=None, help="recommendations per user (default 10, or what the "
                   "method can rank when that is fewer)")
    p.add_argument("--method", default=None, help="fusion method, 'joint', 'sasrec' or 'generative' "
                   "(default: the saved one / the run's primary: fusion.primary, or the one chosen on "
                   "validation when it is auto)")
    p.add_argument("--exclude-seen", action="store_true", help="leave each history's items out of its list")
    p.add_argument("--on-unknown", choices=("skip", "error"), default="skip",
                   help="history ids the catalogue does not know: skip and report them (default) or stop")
    p.add_argument("--chunk-size", type=int, default=2048, help="histories per model call (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


#: what a recipe run directory holds at its top level besides its stage directories
_RUN_FILES = frozenset({"config.json", "results.json", "report.md", "run.log", "run.lock"})


def _overwrites_model(out: Path, model_dir: Path) -> bool:
    """Whether ``out`` is (or would be) a file the model directory owns: anything in a saved recommender
    (``recommender.json`` beside it), a stage's file or the recipe's own files in a run directory (a new
    file at a run's top level is the user's)."""
    from genrec.recommender_files import MANIFEST

    from genrec.recipe import stage_names

    out, model_dir = out.resolve(), model_dir.resolve()
    if not out.is_relative_to(model_dir) or out == model_dir:  # the directory itself: "is a directory" later
        return False
    if (model_dir / MANIFEST).is_file():
        return True
    rel = out.relative_to(model_dir)
    if len(rel.parts) > 1:  # in a stage's directory (or the report's plots), not a folder the user made
        return rel.parts[0] in {*stage_names(), "plots"}
    return rel.name in _RUN_FILES


def run(args: argparse.Namespace) -> int:
    import torch

    from genrec.batch import recommend_file
    from genrec.recommender import Recommender

    for name in ("k", "chunk_size", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"argument --{name.replace('_', '-')}: must be >= 1, got {v}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recommender.from_pretrained(args.path, method=args.method)  # first: is RUN_DIR a model at all
    if _overwrites_model(Path(args.out), Path(args.path)):
        raise ConfigError(f"argument --out: {args.out} would replace a file of the model directory {args.path}; "
                          f"write the recommendations elsewhere")
    if args.k is None:  # the default is never refused (a model with fusion.k or beam below 10)
        args.k = min(10, rec.max_k)
    if args.k > rec.max_k:
        raise ConfigError(f"argument --k: {args.k} exceeds what method {rec.method_name!r} can rank "
                          f"({rec.max_k}, {rec.max_k_source})")
    s = recommend_file(rec, args.input, args.out, k=args.k, exclude_seen=args.exclude_seen,
                       on_unknown=args.on_unknown, chunk_size=args.chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{s.users} users -> {args.out} (method {rec.method_name}, k={args.k}): {s.seconds:.1f} s, "
          f"{s.users_per_second:.1f} users/s, peak memory {peak:.0f} MiB; {s.with_unknown_ids} histories with "
          f"unknown ids (skipped), {s.fallbacks} answered by the popularity fallback")
    return 0
