"""``genrec analyze``: memorization / generalization labels, token-level analysis, per-category metrics.

    genrec analyze DATASET_DIR --out DIR [--codes CODES] [--predictions NAME=TOPK.npy ...]
                   [--max-hop 4] [--ks 10 20] [--metric ndcg@10] [--token-hop 1]

Always: prints the label shares of the validation and test instances and writes ``label_shares.md``
/ ``.json`` and ``labels_valid.jsonl`` / ``labels_test.jsonl`` (one record per instance, in split
order). ``--codes``: an ``[n_items, levels]`` integer semantic-ID table (see :func:`load_codes`);
adds n-gram prefix memorization (``token_memorization.md`` / ``.json``, ``prefix_hops`` in the
JSONL). ``--predictions``: top-K item index arrays ``[n_test, K]`` in test-instance order; writes
``per_category.md`` / ``.json`` / ``.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from genrec.analysis import (evaluate_topk_by_category, export_labels_jsonl, markdown_table, plot_categories,
                             shares_markdown, token_memorization_markdown, token_memorization_summary)
from genrec.artifacts import atomic_write_text, save_json
from genrec.data import SequenceDataset, load_plain
from genrec.memorization import DEFAULT_MAX_HOP, TransitionGraph, label_instances, token_memorization
from genrec.metrics import ranks_from_topk
from genrec.splits import leave_one_out

log = logging.getLogger(__name__)

CODE_FILE_NAMES = ("codes.npy", "semantic_ids.npy", "codes.npz", "codes.tsv", "semantic_ids.tsv")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset directory in the plain format")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--codes", help="semantic-ID table: .npy/.npz [n_items, levels] ints, a TSV/CSV of codes "
                                   "(optionally item_id first), or a directory holding codes.npy")
    p.add_argument("--predictions", nargs="*", default=[], metavar="NAME=FILE",
                   help="top-K item indices [n_test, K] (.npy) in test-instance order, one per model")
    p.add_argument("--max-hop", type=int, default=DEFAULT_MAX_HOP, help="largest hop checked (default 4)")
    p.add_argument("--max-history", type=int, default=50, help="history truncation of the split (default 50)")
    p.add_argument("--order", choices=("file", "timestamp"), default="file", help="row order of interactions")
    p.add_argument("--ks", type=int, nargs="*", help="cutoffs (default: 5, 10, 20 up to the list length)")
    p.add_argument("--metric", default=None, help="metric of the bar chart (default ndcg@<largest K <= 10>)")
    p.add_argument("--token-hop", type=int, default=1,
                   help="prefix memorization counts up to this hop in the summary (default 1: strict)")


def load_codes(path: str | Path, dataset: SequenceDataset) -> np.ndarray:
    """Read a semantic-ID table into ``[n_items, levels]`` int64, row ``j`` = item index ``j``.

    Accepts ``.npy``; ``.npz`` (key ``codes`` or its single array); a text table (tab, comma or
    space separated) with one row per item in dataset order, or with the raw ``item_id`` first
    (recognised by a header starting ``item_id`` or by non-numeric ids); or a directory holding one
    of ``CODE_FILE_NAMES``.
    """
    path = Path(path)
    if path.is_dir():
        for name in CODE_FILE_NAMES:
            if (path / name).is_file():
                return load_codes(path / name, dataset)
        raise FileNotFoundError(f"{path}: no semantic-ID table found (looked for {', '.join(CODE_FILE_NAMES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: semantic-ID table not found")
    if path.suffix == ".npy":
        codes = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "codes" in keys:
                codes = z["codes"]
            elif len(keys) == 1:
                codes = z[keys[0]]
            else:
                raise ValueError(f"{path}: expected an array named 'codes' (or a single array), found {keys}")
    else:
        codes = _read_code_text(path, dataset)
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: expected an integer [n_items, levels] table, got {codes.dtype} {codes.shape}")
    if codes.shape[0] != dataset.num_items:
        raise ValueError(f"{path}: {codes.shape[0]} code rows for {dataset.num_items} items")
    return codes.astype(np.int64)


def _read_code_text(path: Path, dataset: SequenceDataset) -> np.ndarray:
    rows: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(line.replace(",", " ").replace("\t", " ").split())
    header: list[str] = []
    if rows and not all(_is_int(x) for x in rows[0][1:]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise ValueError(f"{path}: empty semantic-ID table")
    # item ids first when the header says so or a first field is not a number (numeric ids need a header)
    keyed = (header[:1] == ["item_id"]) or not all(_is_int(r[0]) for r in rows)
    width = {len(r) for r in rows}
    if len(width) != 1:
        raise ValueError(f"{path}: rows have different numbers of fields {sorted(width)}")
    if not keyed:
        return np.array([[int(x) for x in r] for r in rows], dtype=np.int64)
    codes = np.full((dataset.num_items, width.pop() - 1), -1, dtype=np.int64)
    seen = np.zeros(dataset.num_items, dtype=bool)
    for lineno, r in enumerate(rows, start=1):
        j = dataset.item_index.get(r[0])
        if j is None:
            raise ValueError(f"{path}: data row {lineno}: unknown item_id {r[0]!r}")
        codes[j] = [int(x) for x in r[1:]]
        seen[j] = True
    if not seen.all():
        raise ValueError(f"{path}: {int((~seen).sum())} item(s) have no code row")
    return codes


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _parse_predictions(pairs: list[str], n_test: int, num_items: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise SystemExit(f"--predictions expects NAME=FILE, got {pair!r}")
        if not Path(file).is_file():
            raise SystemExit(f"--predictions {name}: file {file} not found")
        topk = np.load(file, allow_pickle=False)
        if topk.ndim != 2 or topk.shape[0] != n_test or not np.issubdtype(topk.dtype, np.integer):
            raise SystemExit(f"{file}: expected integer top-K item indices [{n_test}, K], "
                             f"got {topk.dtype} {topk.shape}")
        if topk.max(initial=-1) >= num_items:
            raise SystemExit(f"{file}: item index {topk.max()} out of range (catalogue has {num_items} items)")
        out[name] = topk
    return out


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    dataset = load_plain(args.dataset, order=args.order)
    split = leave_one_out(dataset, max_history=args.max_history)
    # check inputs before the (cheap) labelling so a typo fails fast
    codes = load_codes(args.codes, dataset) if args.codes else None
    preds = _parse_predictions(args.predictions, len(split.test), dataset.num_items)

    graph = TransitionGraph(split.train, dataset.num_items, args.max_hop)
    parts = {"valid": split.valid, "test": split.test}
    labels = {name: label_instances(graph, inst) for name, inst in parts.items()}
    tokens = ({name: token_memorization(split.train, inst, codes, args.max_hop) for name, inst in parts.items()}
              if codes is not None else {})

    shares_md = shares_markdown(labels)
    print(f"{dataset.name}: label shares (edges from training sequences, hops <= {args.max_hop})\n")
    print(shares_md)
    atomic_write_text(out / "label_shares.md", shares_md)
    save_json(out / "label_shares.json", {name: {"count": len(lab), "counts": lab.counts(), "shares": lab.shares()}
                                          for name, lab in labels.items()})
    for name, inst in parts.items():
        export_labels_jsonl(out / f"labels_{name}.jsonl", labels[name], inst, split=name, dataset=dataset,
                            token=tokens.get(name))

    ranks = {name: ranks_from_topk(topk, split.test.targets) for name, topk in preds.items()}
    k_list = min((p.shape[1] for p in preds.values()), default=10)
    ks = tuple(args.ks) if args.ks else tuple(k for k in (5, 10, 20) if k <= k_list) or (k_list,)
    if codes is not None:
        k_tok = max((k for k in ks if k <= 10), default=ks[0])
        rows = token_memorization_summary(tokens["test"], labels["test"], ranks, k=k_tok, hop=args.token_hop)
        md = token_memorization_markdown(rows)
        print(f"test generalization instances that are n-gram prefix memorized (hop <= {args.token_hop})\n")
        print(md)
        atomic_write_text(out / "token_memorization.md", md)
        save_json(out / "token_memorization.json", {"hop": args.token_hop, "k": k_tok, "rows": rows})

    if preds:
        results = {name: evaluate_topk_by_category(topk, split.test.targets, labels["test"], ks)
                   for name, topk in preds.items()}
        metrics = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
        md = markdown_table(results, metrics)
        print("test metrics per category\n")
        print(md)
        atomic_write_text(out / "per_category.md", md)
        save_json(out / "per_category.json", {"ks": list(ks), "results": results})
        metric = args.metric or f"ndcg@{max((k for k in ks if k <= 10), default=ks[0])}"
        plot_categories(results, out / "per_category.png", metric=metric, title=f"{dataset.name} test: {metric}")
    log.info("wrote analysis to %s", out)
    return 0
