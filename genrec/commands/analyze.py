"""``genrec analyze``: memorization / generalization labels, token-level analysis, per-category metrics.

    genrec analyze DATASET --out DIR [--codes CODES] [--predictions NAME=TOPK.npy ...]
                   [--max-hop 4] [--ks 10 20] [--metric ndcg@10] [--token-hop 1]

``DATASET`` is any dataset spec (a plain-format directory, ``synthetic[:k=v,...]``,
``amazon2014:Beauty``, ...; see :mod:`genrec.datasets`). Always: prints the label shares of the
validation and test instances and writes ``label_shares.md`` / ``.json`` and ``labels_valid.jsonl``
/ ``labels_test.jsonl`` (one record per instance, in split order). ``--codes``: an
``[n_items, levels]`` integer semantic-ID table, e.g. ``genrec quantize``'s output directory or its
``semantic_ids.json`` (see :func:`load_codes`); adds n-gram prefix memorization
(``token_memorization.md`` / ``.json``, ``prefix_hops`` in the JSONL). ``--predictions``: top-K item
index arrays ``[n_test, K]`` in test-instance order; writes ``per_category.md`` / ``.json`` /
``.png``; a ``.npz`` file gives the array named NAME (or ``NAME=FILE.npz:KEY``), so a recipe
run's ``fusion/topk.npz`` can be read directly (not a cold-start run's, whose item numbering differs:
refused).

The paper's semantic-ID analyses (:mod:`genrec.semantic_id_analysis`, :mod:`genrec.codebook_sweep`):

- with ``--codes``: ``support_coverage.md`` / ``.json``, the test generalization instances by the
  longest memorized code-prefix transition (n-gram, or unseen) and each model's metrics on each;
- ``--indicator-validation``: ``indicator_validation.md`` / ``.json`` / ``.png``, the AUC of each
  indicator for memorization vs generalization and for "``--win-pair A B``: A beats B" (default: the
  first two ``--predictions``). Indicators: the training-count ones of :mod:`fusion.indicators`
  (with ``--codes`` their prefix versions; with the ``--id-model`` / ``--gr-model`` predictions the
  transition counts to their top-1), SASRec's MSP and entropy with ``--sasrec CHECKPOINT``, and any
  ``[n_test]`` arrays of ``--indicators FILE.npz``;
- ``--sweep-embeddings FILE.npy`` (``[n_items, d]``): ``codebook_sweep.md`` / ``.json`` / ``.png``,
  the codebook intervention over ``--sweep-sizes`` x ``--sweep-levels``; quick (no training) unless
  ``--sweep-train-minutes`` / ``--sweep-train-epochs`` give a training budget per configuration.
  Each finished configuration is kept in ``codebook_sweep_rows/``, so a killed sweep rerun with the
  same inputs and options resumes at the configuration it was on.

Bad inputs raise :class:`~genrec.errors.GenrecError` exceptions (one-line messages naming the file
or option on the command line).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path

import numpy as np

from genrec.analysis import (evaluate_topk_by_category, export_labels_jsonl, markdown_table, plot_categories,
                             shares_markdown, token_memorization_markdown, token_memorization_summary)
from genrec.artifacts import atomic_write_text, load_arrays, save_json
from genrec.codebook_sweep import codebook_sweep, config_grid, plot_sweep, sweep_markdown
from genrec.commands.common import TABLE_FILE, load_semantic_id_table, load_split
from genrec.data import SequenceDataset
from genrec.errors import ConfigError, DataFormatError, GenrecError
from genrec.memorization import DEFAULT_MAX_HOP, MAX_HOP, TransitionGraph, label_instances, token_memorization
from genrec.metrics import ranks_from_topk
from genrec.semantic_id_analysis import (indicator_validation, indicator_validation_markdown,
                                         plot_indicator_validation, support_coverage, support_coverage_markdown)

log = logging.getLogger(__name__)

#: what only some invocations write (the labels and shares are always written)
OPTIONAL_OUTPUTS = tuple(f"{name}.{ext}" for name in ("token_memorization", "support_coverage", "indicator_validation",
                                                     "codebook_sweep", "per_category") for ext in ("md", "json", "png"))
CODE_FILE_NAMES = ("codes.npy", "semantic_ids.npy", "codes.npz", "codes.tsv", "semantic_ids.tsv", TABLE_FILE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset: a plain-format directory, 'synthetic[:k=v,...]', 'amazon2014:Beauty', "
                                   "'amazon2023:All_Beauty' (see 'genrec data')")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--codes", help="semantic-ID table: the output directory of 'genrec quantize' or its "
                                   "semantic_ids.json, .npy/.npz [n_items, levels] ints, a TSV/CSV of codes "
                                   "(optionally item_id first), or a directory holding codes.npy")
    p.add_argument("--predictions", nargs="*", default=[], metavar="NAME=FILE",
                   help="top-K item indices [n_test, K] (.npy) in test-instance order, one per model")
    p.add_argument("--max-hop", type=int, default=DEFAULT_MAX_HOP, help="largest hop checked (default 4)")
    p.add_argument("--max-history", type=int, default=50, help="history truncation of the split (default 50)")
    p.add_argument("--order", choices=("file", "timestamp"), default="file",
                   help="row order of interactions (timestamp: plain-format directories only)")
    p.add_argument("--ks", type=int, nargs="*", help="cutoffs (default: 5, 10, 20 up to the list length)")
    p.add_argument("--metric", default=None, help="metric of the bar chart (default ndcg@<largest K <= 10>)")
    p.add_argument("--token-hop", type=int, default=1,
                   help="prefix memorization counts up to this hop in the summary (default 1: strict)")
    g = p.add_argument_group("semantic-ID analyses (arXiv 2603.19809, sections 4.2-4.4)")
    g.add_argument("--indicator-validation", action="store_true",
                   help="AUC of each indicator for memorization vs generalization and for which model wins")
    g.add_argument("--win-pair", nargs=2, metavar=("A", "B"),
                   help="the two --predictions models of the win AUC (default: the first two)")
    g.add_argument("--id-model", default="sasrec", help="--predictions name of the item-ID model (default sasrec)")
    g.add_argument("--gr-model", default="gr", help="--predictions name of the generative model (default gr)")
    g.add_argument("--sasrec", metavar="CHECKPOINT", help="SASRec checkpoint (best.pt or its directory): adds "
                                                          "its MSP and entropy as indicators")
    g.add_argument("--generative", metavar="CHECKPOINT",
                   help="generative model checkpoint (best.pt or its directory) of genrec generative --model "
                        "hierarchical or semantic (a TIGER or parallel-code one is refused, naming its kind): a "
                        "test beam search adds its confidence (top-1 log-probability, margin) as indicators; its "
                        "top-1 replaces --gr-model's")
    g.add_argument("--beam", type=int, default=20, help="beam size of --generative (default 20)")
    g.add_argument("--indicators", metavar="FILE.npz", help="extra indicators: named [n_test] arrays")
    g.add_argument("--sweep-embeddings", metavar="FILE.npy",
                   help="item embeddings [n_items, d]: run the codebook intervention sweep on them")
    g.add_argument("--sweep-sizes", type=int, nargs="+", default=[64, 256, 1024],
                   help="codebook sizes of the sweep (default 64 256 1024)")
    g.add_argument("--sweep-levels", type=int, nargs="+", default=[2, 3, 4],
                   help="code levels of the sweep (default 2 3 4)")
    g.add_argument("--sweep-method", default="rq_kmeans", help="quantizer of the sweep (default rq_kmeans)")
    g.add_argument("--sweep-seed", type=int, default=0, help="quantizer seed of the sweep (default 0)")
    g.add_argument("--sweep-train-minutes", type=float,
                   help="also train a generative model per configuration for at most this many minutes "
                        "(expensive: a benchmark, not the quick mode)")
    g.add_argument("--sweep-train-epochs", type=int,
                   help="also train a generative model per configuration for at most this many epochs")


def load_codes(path: str | Path, dataset: SequenceDataset) -> np.ndarray:
    """Read a semantic-ID table into ``[n_items, levels]`` int64, row ``j`` = item index ``j``.

    Accepts ``genrec quantize``'s ``semantic_ids.json`` (:class:`~quantize.semantic_ids.SemanticIdTable`,
    rows matched to the dataset by item id when the table has them; the disambiguation level is
    kept as the last level); ``.npy``; ``.npz`` (key ``codes`` or its single array); a text table
    (tab, comma or space separated) with one row per item in dataset order, or with the raw
    ``item_id`` first (recognised by a header starting ``item_id`` or by non-numeric ids); or a
    directory holding one of ``CODE_FILE_NAMES`` (such as ``genrec quantize``'s output directory).
    A missing or unreadable table, or one that does not fit the dataset, raises
    :class:`~genrec.errors.DataFormatError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        for name in CODE_FILE_NAMES:
            if (path / name).is_file():
                return load_codes(path / name, dataset)
        raise DataFormatError(f"{path}: no semantic-ID table found (looked for {', '.join(CODE_FILE_NAMES)})")
    if not path.is_file():
        raise DataFormatError(f"{path}: semantic-ID table not found")
    if path.suffix == ".json":
        codes = _table_codes(path, dataset)
    elif path.suffix in (".npy", ".npz"):
        codes = _read_code_array(path)
    else:
        codes = _read_code_text(path, dataset)
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise DataFormatError(f"{path}: expected an integer [n_items, levels] table, got {codes.dtype} {codes.shape}")
    if codes.shape[0] != dataset.num_items:
        raise DataFormatError(f"{path}: {codes.shape[0]} code rows for {dataset.num_items} items")
    return codes.astype(np.int64)


def _read_code_array(path: Path) -> np.ndarray:
    loaded = load_arrays(path)
    if not isinstance(loaded, dict):
        return loaded
    if "codes" in loaded:
        return loaded["codes"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DataFormatError(f"{path}: expected an array named 'codes' (or a single array), found {list(loaded)}")


def _table_codes(path: Path, dataset: SequenceDataset) -> np.ndarray:
    """Codes of a saved SemanticIdTable, reordered to the dataset's items when it names them."""
    try:
        table = load_semantic_id_table(path)
    except GenrecError as e:
        raise DataFormatError(str(e)) from None
    if table.item_ids is None:
        return table.codes  # rows in dataset item order; the caller checks the count
    index = {iid: r for r, iid in enumerate(table.item_ids)}
    rows = [index.get(iid, -1) for iid in dataset.item_ids]
    missing = [iid for iid, r in zip(dataset.item_ids, rows) if r < 0]
    if missing:
        raise DataFormatError(f"{path}: {len(missing)} of the dataset's {dataset.num_items} items have no "
                              f"semantic ID in this table, e.g. {missing[0]!r} (a table of another dataset?)")
    return table.codes[np.asarray(rows, dtype=np.int64)]


def _read_code_text(path: Path, dataset: SequenceDataset) -> np.ndarray:
    rows: list[tuple[int, list[str]]] = []  # (line number, fields)
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if line:
                    rows.append((lineno, line.replace(",", " ").replace("\t", " ").split()))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not a UTF-8 text table ({e.reason}); .npy/.npz/.json tables need "
                              f"their file extension") from None
    header: list[str] = []
    if rows and not all(_is_int(x) for x in rows[0][1][1:]):
        header, rows = rows[0][1], rows[1:]
    if not rows:
        raise DataFormatError(f"{path}: empty semantic-ID table")
    # item ids first when the header says so or a first field is not a number (numeric ids need a header)
    keyed = (header[:1] == ["item_id"]) or not all(_is_int(r[0]) for _, r in rows)
    width = {len(r) for _, r in rows}
    if len(width) != 1:
        raise DataFormatError(f"{path}: rows have different numbers of fields {sorted(width)}")
    first = 1 if keyed else 0
    for lineno, r in rows:
        bad = next((x for x in r[first:] if not _is_int(x)), None)
        if bad is not None:
            raise DataFormatError(f"{path}:{lineno}: code {bad!r} is not an integer")
    if not keyed:
        return np.array([[int(x) for x in r] for _, r in rows], dtype=np.int64)
    codes = np.full((dataset.num_items, width.pop() - 1), -1, dtype=np.int64)
    seen = np.zeros(dataset.num_items, dtype=bool)
    first_line = np.zeros(dataset.num_items, dtype=np.int64)
    for lineno, r in rows:
        j = dataset.item_index.get(r[0])
        if j is None:
            raise DataFormatError(f"{path}:{lineno}: unknown item_id {r[0]!r}")
        if seen[j]:  # the later row silently won
            raise DataFormatError(f"{path}:{lineno}: item_id {r[0]!r} repeated (first at line {first_line[j]})")
        codes[j] = [int(x) for x in r[1:]]
        seen[j], first_line[j] = True, lineno
    if not seen.all():
        raise DataFormatError(f"{path}: {int((~seen).sum())} item(s) have no code row")
    return codes


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _cold_start_run(config_path: Path) -> bool:
    """Whether the recipe run whose ``config.json`` this is evaluated cold start (``data.cold_items``)."""
    try:
        cold = json.loads(config_path.read_text(encoding="utf-8")).get("data", {}).get("cold_items", 0)
    except (OSError, ValueError, AttributeError):
        return False  # not a readable run config: the file is read as any other
    return cold not in (0, 0.0, None, False)


def _parse_predictions(pairs: list[str], n_test: int, num_items: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--predictions expects NAME=FILE, got {pair!r}")
        key = None
        if ".npz:" in file:  # FILE.npz:KEY
            file, _, key = file.rpartition(":")
        if not Path(file).is_file():
            raise DataFormatError(f"--predictions {name}: file {file} not found")
        run_config = Path(file).resolve().parent.parent / "config.json"  # a recipe run's fusion/topk.npz
        if run_config.is_file() and _cold_start_run(run_config):
            raise DataFormatError(f"--predictions {name}: {file} is a cold-start run's (data.cold_items): its lists "
                                  f"number the items with the cold ones last, not as the dataset does, and its labels "
                                  f"count the warm training sequences; read that run's report.md / results.json")
        topk = load_arrays(file)
        if isinstance(topk, dict):  # an archive: the array named KEY, or NAME
            if (key or name) not in topk:
                raise DataFormatError(f"{file}: no array named {key or name!r} (has {', '.join(topk)})")
            topk = topk[key or name]
        if topk.ndim != 2 or topk.shape[0] != n_test or not np.issubdtype(topk.dtype, np.integer):
            hint = (" (a recipe run with data.eval_users ranked only its sampled test users)"
                    if topk.ndim == 2 and topk.shape[0] < n_test else "")
            raise DataFormatError(f"{file}: expected integer top-K item indices [{n_test}, K], "
                                  f"got {topk.dtype} {topk.shape}{hint}")
        if topk.max(initial=-1) >= num_items:  # entries < 0 are padding (see ranks_from_topk)
            raise DataFormatError(f"{file}: item index {topk.max()} out of range (catalogue has {num_items} items)")
        out[name] = topk
    return out


def _read_indicator_file(path: str, n_test: int) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise DataFormatError(f"--indicators: file {path} not found")
    arrays = load_arrays(path)
    if not isinstance(arrays, dict):
        raise DataFormatError(f"{path}: expected a .npz archive of named indicator arrays, got one .npy array")
    for k, v in arrays.items():
        if v.shape != (n_test,) or not np.issubdtype(v.dtype, np.number) or not np.isfinite(v).all():
            raise DataFormatError(f"{path}: indicator {k!r} must be [{n_test}] finite numbers, got {v.dtype} {v.shape}")
    return arrays


def _read_embeddings(path: str, num_items: int) -> np.ndarray:
    if not Path(path).is_file():
        raise DataFormatError(f"--sweep-embeddings: file {path} not found")
    x = load_arrays(path)
    if isinstance(x, dict):
        raise DataFormatError(f"{path}: expected one .npy array of embeddings, got a .npz archive")
    if x.ndim != 2 or x.shape[0] != num_items or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise DataFormatError(f"{path}: expected finite float embeddings [{num_items}, d] (one row per item), "
                              f"got {x.dtype} {x.shape}")
    return x.astype(np.float32)


def _indicators(args: argparse.Namespace, split, codes: np.ndarray | None, preds: dict[str, np.ndarray],
                extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Indicator columns of the test instances from what the command line gives."""
    from fusion.indicators import TrainStats, compute_indicators  # fusion builds on genrec: import on use

    summary = None
    if args.sasrec:
        from genrec.sasrec import load_sasrec, softmax_summary

        model = load_sasrec(args.sasrec)
        if model.num_items != split.num_items:
            raise DataFormatError(f"--sasrec {args.sasrec}: the model has {model.num_items} items but the dataset "
                                  f"has {split.num_items} (a model of another dataset?)")
        summary = softmax_summary(model, split.test)
    gr_items, gr_log_probs = preds.get(args.gr_model), None
    if args.generative:
        from genrec.generative import load_generative, recommend

        gen = load_generative(args.generative)
        if gen.num_items != split.num_items:
            raise DataFormatError(f"--generative {args.generative}: the model has {gen.num_items} items but the "
                                  f"dataset has {split.num_items} (a model of another dataset?)")
        beam = recommend(gen, split.test, args.beam)
        gr_items, gr_log_probs = beam.items, beam.log_probs
    stats = TrainStats(split.train, split.num_items, codes)
    ind = compute_indicators(split.test, stats, id_summary=summary, id_items=preds.get(args.id_model),
                             gr_items=gr_items, gr_log_probs=gr_log_probs)
    return {**{name: ind.column(name) for name in ind.names}, **extra}


def _sweep_train_config(args: argparse.Namespace):
    if args.sweep_train_minutes is None and args.sweep_train_epochs is None:
        return None
    from genrec.generative import GenerativeConfig

    cfg = GenerativeConfig()
    if args.sweep_train_minutes is not None:
        if args.sweep_train_minutes <= 0:
            raise ConfigError(f"--sweep-train-minutes must be > 0, got {args.sweep_train_minutes}")
        cfg.max_minutes = args.sweep_train_minutes
    if args.sweep_train_epochs is not None:
        if args.sweep_train_epochs < 1:
            raise ConfigError(f"--sweep-train-epochs must be >= 1, got {args.sweep_train_epochs}")
        cfg.max_epochs = args.sweep_train_epochs
        cfg.eval_every = min(cfg.eval_every, cfg.max_epochs)
    return cfg


#: options that only act with another one: (the options, what they need, whether that is given)
_DEPENDENT_OPTIONS = (
    (("win_pair", "id_model", "gr_model", "sasrec", "generative", "indicators"), "--indicator-validation",
     lambda a: a.indicator_validation),
    (("beam",), "--generative", lambda a: a.generative),
    (("metric",), "--predictions", lambda a: a.predictions),
    (("ks",), "--predictions or a trained sweep (--sweep-train-epochs / --sweep-train-minutes)",
     lambda a: a.predictions or (a.sweep_embeddings and (a.sweep_train_epochs is not None
                                                         or a.sweep_train_minutes is not None))),
    (("token_hop",), "--codes or --sweep-embeddings", lambda a: a.codes or a.sweep_embeddings),
    (("sweep_sizes", "sweep_levels", "sweep_method", "sweep_seed", "sweep_train_minutes", "sweep_train_epochs"),
     "--sweep-embeddings", lambda a: a.sweep_embeddings),
)


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def _option_given(args: argparse.Namespace, option: str) -> bool:
    """Whether ``option`` differs from its default (argparse keeps no record of what was typed)."""
    return getattr(args, option) != _parser().get_default(option)


def _check_options(args: argparse.Namespace) -> None:
    """Range checks, and an error for an option that would be silently ignored (it needs another)."""
    if Path(args.out).exists() and not Path(args.out).is_dir():  # found only after the labelling before
        raise ConfigError(f"argument --out: {args.out} is a file; give a directory")
    if not 1 <= args.max_hop <= MAX_HOP:
        raise ConfigError(f"--max-hop must be in [1, {MAX_HOP}], got {args.max_hop}")
    if not 1 <= args.token_hop <= args.max_hop:
        raise ConfigError(f"--token-hop must be in [1, --max-hop {args.max_hop}], got {args.token_hop}")
    if args.beam < 1:
        raise ConfigError(f"--beam must be >= 1, got {args.beam}")
    if args.win_pair and args.win_pair[0] == args.win_pair[1]:
        raise ConfigError(f"--win-pair {' '.join(args.win_pair)}: two different models are needed")
    names = [pair.partition("=")[0] for pair in args.predictions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--predictions: the name {repeated[0]!r} is given twice")
    for options, needs, present in _DEPENDENT_OPTIONS:
        for option in options:
            if _option_given(args, option) and not present(args):
                raise ConfigError(f"--{option.replace('_', '-')} acts only with {needs}; add it or drop the option")


def run(args: argparse.Namespace) -> int:
    from quantize.pipeline import METHODS  # quantize (faiss) loaded when the command runs, not at CLI start-up

    out = Path(args.out)
    _check_options(args)
    dataset, split = load_split(args.dataset, args.max_history, order=args.order)
    # check inputs before the (cheap) labelling so a typo fails fast
    codes = load_codes(args.codes, dataset) if args.codes else None
    preds = _parse_predictions(args.predictions, len(split.test), dataset.num_items)
    k_list = min((p.shape[1] for p in preds.values()), default=10)
    ks = tuple(sorted(set(args.ks))) if args.ks else tuple(k for k in (5, 10, 20) if k <= k_list) or (k_list,)
    bad_ks = [k for k in ks if k < 1 or (preds and k > k_list)]
    if bad_ks:
        raise ConfigError(f"--ks {' '.join(map(str, bad_ks))}: cutoffs must be >= 1 and at most the ranked-list "
                          f"length {k_list}" if preds else f"--ks {' '.join(map(str, bad_ks))}: cutoffs must be >= 1")
    k_main = max((k for k in ks if k <= 10), default=ks[0])  # K of the summaries: 10, or the nearest below
    metrics = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    if args.metric is not None and args.metric not in metrics:
        raise ConfigError(f"--metric {args.metric!r}: the chart plots one of the table's metrics: {', '.join(metrics)}")
    if args.indicator_validation:
        if args.win_pair and not all(name in preds for name in args.win_pair):
            raise ConfigError(f"--win-pair {' '.join(args.win_pair)}: both must be --predictions names "
                              f"(have {', '.join(preds) or 'none'})")
        for option in ("id_model", "gr_model"):
            name = getattr(args, option)
            if _option_given(args, option) and name not in preds:
                raise ConfigError(f"--{option.replace('_', '-')} {name}: not a --predictions name "
                                  f"(have {', '.join(preds) or 'none'})")
    embeddings = _read_embeddings(args.sweep_embeddings, dataset.num_items) if args.sweep_embeddings else None
    if embeddings is not None and args.sweep_method.lower().replace("-", "_") not in METHODS:
        raise ConfigError(f"--sweep-method {args.sweep_method!r}: choose from {', '.join(METHODS)}")
    try:
        sweep = config_grid(args.sweep_sizes, args.sweep_levels) if embeddings is not None else []
    except ValueError as e:
        raise ConfigError(f"--sweep-sizes / --sweep-levels: {e}") from None
    train_config = _sweep_train_config(args)
    extra = _read_indicator_file(args.indicators, len(split.test)) if args.indicators else {}

    graph = TransitionGraph(split.train, dataset.num_items, args.max_hop)
    parts = {"valid": split.valid, "test": split.test}
    labels = {name: label_instances(graph, inst) for name, inst in parts.items()}
    tokens = ({name: token_memorization(split.train, inst, codes, args.max_hop) for name, inst in parts.items()}
              if codes is not None else {})

    for stale in OPTIONAL_OUTPUTS:  # an earlier run's into the same --out would pass for this run's
        (out / stale).unlink(missing_ok=True)
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
    if codes is not None:
        rows = token_memorization_summary(tokens["test"], labels["test"], ranks, k=k_main, hop=args.token_hop)
        md = token_memorization_markdown(rows)
        print(f"test generalization instances that are n-gram prefix memorized (hop <= {args.token_hop})\n")
        print(md)
        atomic_write_text(out / "token_memorization.md", md)
        save_json(out / "token_memorization.json", {"hop": args.token_hop, "k": k_main, "rows": rows}, strict=True)
        rows = support_coverage(tokens["test"], labels["test"], ranks, k=k_main, hop=args.token_hop)
        md = support_coverage_markdown(rows)
        print(f"test generalization instances by their longest memorized code-prefix transition "
              f"(hop <= {args.token_hop})\n")
        print(md)
        atomic_write_text(out / "support_coverage.md", md)
        save_json(out / "support_coverage.json", {"hop": args.token_hop, "k": k_main, "rows": rows}, strict=True)

    if args.indicator_validation:
        pair = args.win_pair or (list(preds)[:2] if len(preds) >= 2 else None)
        result = indicator_validation(_indicators(args, split, codes, preds, extra), labels["test"], ranks, pair,
                                      k=k_main)
        md = indicator_validation_markdown(result)
        print("test indicator validation (ROC AUC; < 0.5: low values point to the positive class)\n")
        print(md)
        atomic_write_text(out / "indicator_validation.md", md)
        save_json(out / "indicator_validation.json", result, strict=True)
        plot_indicator_validation(result, out / "indicator_validation.png", title=f"{dataset.name} test indicators")

    if sweep:
        rows = codebook_sweep(split, embeddings, sweep, labels["test"], method=args.sweep_method,
                              seed=args.sweep_seed, max_hop=args.max_hop, hop=args.token_hop,
                              train_config=train_config, k=k_main, rows_dir=out / "codebook_sweep_rows")
        md = sweep_markdown(rows)
        print(f"codebook intervention ({args.sweep_method}; test instances, prefix hop <= {args.token_hop})\n")
        print(md)
        atomic_write_text(out / "codebook_sweep.md", md)
        save_json(out / "codebook_sweep.json", {"method": args.sweep_method, "seed": args.sweep_seed,
                                                "hop": args.token_hop, "rows": rows}, strict=True)
        plot_sweep(rows, out / "codebook_sweep.png", title=f"{dataset.name}: codebook intervention")

    if preds:
        results = {name: evaluate_topk_by_category(topk, split.test.targets, labels["test"], ks)
                   for name, topk in preds.items()}
        md = markdown_table(results, metrics)
        print("test metrics per category\n")
        print(md)
        atomic_write_text(out / "per_category.md", md)
        save_json(out / "per_category.json", {"ks": list(ks), "results": results}, strict=True)
        metric = args.metric or f"ndcg@{k_main}"
        plot_categories(results, out / "per_category.png", metric=metric, title=f"{dataset.name} test: {metric}")
    log.info("wrote analysis to %s", out)
    return 0
