"""Benchmark: our constrained beam search against ``transformers`` ``generate`` on the T5 TIGER preset.

    python bench/beam_search_throughput.py [--data ../shared/data/amazon2014/beauty]
                                           [--semantic-ids /tmp/genrec_beauty_sid] [--model-dir runs/bench_tiger]
                                           [--train-minutes 4] [--users 300] [--beam 20] [--threads 1]
                                           [--generative runs/bench_generative]

Trains the T5 preset briefly on Beauty (or resumes/loads it from ``--model-dir``), then decodes the
same ``--users`` test users with beam 20 both ways: ``T5.generate(num_beams=20,
prefix_allowed_tokens_fn=...)`` and :func:`genrec.beam_search.beam_search` (cached encoder outputs
and key/value cache, per-level valid-code masks). Prints test users/s, the speed-up, and how often
the top-K lists agree (exactly, and up to ties: lists that differ only where scores are equal
within 1e-4). With ``--generative DIR`` also times the default hierarchical model.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

import genrec
from genrec.beam_search import beam_search
from genrec.tiger import TigerConfig, hf_generate, train_tiger
from genrec.trie import trie_of

ROOT = Path(__file__).resolve().parents[1]


def agreement(a_items: np.ndarray, a_scores: np.ndarray, b_items: np.ndarray, b_scores: np.ndarray,
              tol: float = 1e-4) -> tuple[float, float, float]:
    """(exact list match rate, match rate up to ties, max |score difference| at equal rank)."""
    exact = (a_items == b_items).all(1)
    close = np.abs(a_scores - b_scores) <= tol  # [n, K] same score at each rank
    tied = exact | (close.all(1) & np.array([set(x[np.abs(sa - sa[-1]) > tol]) == set(y[np.abs(sb - sb[-1]) > tol])
                                              for x, y, sa, sb in zip(a_items, b_items, a_scores, b_scores)]))
    return float(exact.mean()), float(tied.mean()), float(np.abs(a_scores - b_scores).max())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/amazon2014/beauty"))
    p.add_argument("--semantic-ids", default="/tmp/genrec_beauty_sid")
    p.add_argument("--model-dir", default=str(ROOT / "runs/bench_tiger"))
    p.add_argument("--train-minutes", type=float, default=4.0)
    p.add_argument("--users", type=int, default=300, help="test users decoded by both (HF is slow)")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--hf-batch", type=int, default=8, help="generate is fastest at 4-8 here (16: ~2x slower)")
    p.add_argument("--our-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--generative", default=None, help="also time a trained hierarchical model (directory)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    from quantize.semantic_ids import SemanticIdTable

    sid = Path(args.semantic_ids) / "semantic_ids.json"
    if not sid.is_file():
        p.error(f"--semantic-ids {args.semantic_ids}: no semantic_ids.json there; pass a Beauty semantic-ID "
                f"directory (`genrec quantize`'s output, or a recipe run's quantize/, e.g. runs/beauty_s14/quantize)")
    split = genrec.leave_one_out(genrec.load_plain(args.data))
    table = SemanticIdTable.load(sid)
    config = TigerConfig(max_epochs=1, max_minutes=args.train_minutes, eval_users=500, num_threads=args.threads)
    model = train_tiger(split, table, config, out_dir=args.model_dir).model.eval()
    users = np.random.default_rng(0).choice(len(split.test), min(args.users, len(split.test)), replace=False)
    test = split.test.subset(np.sort(users))
    # the trie of the model's own codes, the one hf_generate constrains generate with: both searches
    # decode the same semantic IDs (a model resumed from --model-dir keeps the codes it trained on)
    trie = trie_of(model)

    warm = test.subset(np.arange(min(20, len(test))))  # first calls pay one-off allocations: warm both up
    beam_search(model, trie, warm.histories, beam_size=args.beam, users=warm.users, batch_size=args.our_batch)
    hf_generate(model, warm, num_beams=args.beam, batch_size=args.hf_batch)
    t = time.perf_counter()
    ours = beam_search(model, trie, test.histories, beam_size=args.beam, users=test.users, batch_size=args.our_batch)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    hf_items, hf_scores = hf_generate(model, test, num_beams=args.beam, batch_size=args.hf_batch)
    t_hf = time.perf_counter() - t
    exact, tied, diff = agreement(ours.items, ours.log_probs, hf_items, hf_scores)
    print(f"T5 TIGER preset, beam {args.beam}, {len(test)} test users, {args.threads} thread(s)")
    print(f"  ours:        {len(test) / t_ours:8.1f} users/s ({t_ours:.1f}s)")
    print(f"  HF generate: {len(test) / t_hf:8.1f} users/s ({t_hf:.1f}s)")
    print(f"  speed-up {t_hf / t_ours:.1f}x (target >= 10x)")
    print(f"  top-{args.beam} agreement: exact {exact:.3f}, up to ties {tied:.3f}; max |log-prob diff| {diff:.2e}; "
          f"invalid IDs ours {(ours.items < 0).mean():.4f}, HF {(hf_items < 0).mean():.4f}")
    if args.generative:
        from genrec.generative import load_generative, recommend

        gen = load_generative(args.generative)
        # first calls pay one-off allocations: a warm-up batch first, as for the T5 comparison above
        recommend(gen, split.test.subset(np.arange(min(20, len(split.test)))), beam_size=args.beam,
                  batch_size=args.our_batch)
        t = time.perf_counter()
        recommend(gen, split.test, beam_size=args.beam, batch_size=args.our_batch)
        dt = time.perf_counter() - t
        print(f"hierarchical model, beam {args.beam}, all {len(split.test)} test users: {len(split.test) / dt:.0f} users/s")


if __name__ == "__main__":
    main()
