"""TIGER preset (Rajput et al., 2023): a ``transformers`` T5 encoder-decoder over semantic-ID tokens.

Kept for parity with the paper, not as the default (:mod:`genrec.generative` trains far faster on
a CPU). Encoder input: an optional hashed user token, then the code tokens of the last
``max_items`` history items (oldest first); the decoder emits the next item's ``num_levels`` code
tokens. One training example per target (every prefix of a training sequence), as in TIGER.

Token layout: 0 padding (also the decoder start token), 1 end-of-sequence (unused by decoding),
``2 + offset_l + code`` for level ``l``'s codes, then the ``user_buckets`` user tokens.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from transformers import T5Config, T5ForConditionalGeneration

from genrec.artifacts import torch_save
from genrec.beam_search import PrefixTrie
from genrec.generative import _trie, evaluate
from genrec.training import TrainResult, fit, setup
from genrec.splits import Instances, LeaveOneOutSplit

log = logging.getLogger(__name__)

PAD, EOS, FIRST_CODE = 0, 1, 2


@dataclass
class TigerConfig:
    """TIGER's published architecture; training settings sized for short CPU runs."""

    max_items: int = 20  # history items fed to the encoder
    d_model: int = 128
    d_ff: int = 1024
    num_heads: int = 6
    d_kv: int = 64
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000  # hashed user tokens (0: none)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    max_minutes: float | None = None
    patience: int = 5
    eval_every: int = 1
    eval_beam: int = 20
    eval_batch_size: int = 256
    eval_users: int | None = 2000  # validation subsample per evaluation (None: all)
    seed: int = 0
    num_threads: int | None = None


class TigerModel(nn.Module):
    """T5 over semantic-ID tokens; implements :class:`genrec.beam_search.CodeDecoder` with cached
    encoder outputs (as cross-attention keys/values shared by a user's beams) and a key/value cache."""

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int], config: TigerConfig):
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        self.config = config
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.num_items, self.num_levels = codes.shape
        self.offsets = [int(o) for o in np.r_[0, np.cumsum(self.codebook_sizes)[:-1]]]
        self.user_offset = FIRST_CODE + int(sum(self.codebook_sizes))
        item_tokens = np.zeros((self.num_items + 1, self.num_levels), dtype=np.int64)
        item_tokens[1:] = codes + np.asarray(self.offsets)[None] + FIRST_CODE
        self.register_buffer("item_tokens", torch.from_numpy(item_tokens))  # [n_items + 1, L], row 0 = padding
        t5 = T5Config(vocab_size=self.user_offset + config.user_buckets, d_model=config.d_model, d_ff=config.d_ff,
                      d_kv=config.d_kv, num_heads=config.num_heads, num_layers=config.num_encoder_layers,
                      num_decoder_layers=config.num_decoder_layers, dropout_rate=config.dropout,
                      feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
                      tie_word_embeddings=True)
        self.t5 = T5ForConditionalGeneration(t5)

    @property
    def codes(self) -> np.ndarray:
        """Semantic IDs ``[n_items, num_levels]``."""
        return (self.item_tokens[1:] - FIRST_CODE - torch.tensor(self.offsets)).numpy()

    def encoder_inputs(self, histories: list[np.ndarray], users: np.ndarray | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded encoder tokens and attention mask ``[N, S]`` of (user token +) history codes."""
        rows = []
        for k, h in enumerate(histories):
            toks = self.item_tokens[torch.as_tensor(np.asarray(h[-self.config.max_items:], dtype=np.int64) + 1)]
            toks = toks.reshape(-1)
            if self.config.user_buckets and users is not None:
                toks = torch.cat([torch.tensor([self.user_offset + int(users[k]) % self.config.user_buckets]), toks])
            rows.append(toks if len(toks) else torch.tensor([EOS]))
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), PAD, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = r
        return ids, ids != PAD

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy of target items ``[B]`` given encoder inputs ``[B, S]``."""
        labels = self.item_tokens[targets + 1]  # [B, L]
        return self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss

    # -- CodeDecoder protocol ----------------------------------------------------------------------
    # Our own T5 decoder step on the model's weights (same maths as transformers' T5): all beams of
    # a user share one copy of the cross-attention keys/values (the beams are folded into the query
    # axis), where ``generate`` keeps and reorders one copy per beam. Self-attention keys/values are
    # cached per beam as ``[N, K, heads, steps, d_kv]`` tensors.

    def start(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> dict[str, Any]:
        """Encoder outputs turned into per-layer cross-attention keys/values ``[N, heads, S, d_kv]``
        and the additive mask ``[N, 1, 1, S]``, computed once per history."""
        ids, mask = self.encoder_inputs(histories, users)
        enc = self.t5.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, S, D]
        N, S, _ = enc.shape
        cross = []
        for block in self.t5.decoder.block:
            att = block.layer[1].EncDecAttention
            k = att.k(enc).view(N, S, att.n_heads, att.key_value_proj_dim).transpose(1, 2)
            v = att.v(enc).view(N, S, att.n_heads, att.key_value_proj_dim).transpose(1, 2)
            cross.append((k, v))
        bias = torch.zeros(N, 1, 1, S).masked_fill(~mask[:, None, None, :], -torch.inf)
        return {"cross": cross, "mask": bias}

    def step(self, context: dict[str, Any], codes: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoder step for prefixes ``[N, K, l]`` on the cached self-attention keys/values of
        levels < l; returns full-vocabulary log-probs restricted to level ``l``'s codes."""
        N, K, lvl = codes.shape
        if lvl == 0:
            tok = torch.full((N, K), PAD, dtype=torch.long)
            cache = [None] * len(self.t5.decoder.block)
        else:
            tok = codes[:, :, -1] + self.offsets[lvl - 1] + FIRST_CODE
        dec = self.t5.decoder
        x = dec.embed_tokens(tok)  # [N, K, D]
        self_att0 = dec.block[0].layer[0].SelfAttention
        pos_bias = self_att0.compute_bias(lvl + 1, lvl + 1)[:, :, -1:, :]  # [1, heads, 1, l + 1]
        new_cache = []
        for i, block in enumerate(dec.block):
            att = block.layer[0].SelfAttention
            nh, dk = att.n_heads, att.key_value_proj_dim
            hs = block.layer[0].layer_norm(x)
            q = att.q(hs).view(N, K, nh, 1, dk)
            k = att.k(hs).view(N, K, nh, 1, dk)
            v = att.v(hs).view(N, K, nh, 1, dk)
            if cache[i] is not None:
                k, v = torch.cat([cache[i][0], k], 3), torch.cat([cache[i][1], v], 3)
            new_cache.append((k, v))
            scores = (q @ k.transpose(-1, -2)) * getattr(att, "scaling", 1.0)  # T5: no 1/sqrt(d) scaling
            y = torch.softmax(scores + pos_bias[:, None], -1) @ v  # [N, K, nh, 1, dk]
            x = x + att.o(y.reshape(N, K, nh * dk))
            catt = block.layer[1].EncDecAttention
            hs = block.layer[1].layer_norm(x)
            q = catt.q(hs).view(N, K, catt.n_heads, catt.key_value_proj_dim).transpose(1, 2)  # [N, nh, K, dk]
            ck, cv = context["cross"][i]
            scores = (q @ ck.transpose(-1, -2)) * getattr(catt, "scaling", 1.0)
            y = torch.softmax(scores + context["mask"], -1) @ cv  # [N, nh, K, dk]
            x = x + catt.o(y.transpose(1, 2).reshape(N, K, -1))
            x = x + block.layer[2].DenseReluDense(block.layer[2].layer_norm(x))
        x = dec.final_layer_norm(x)
        if self.t5.config.scale_decoder_outputs:
            x = x * (self.t5.model_dim ** -0.5)
        logp = torch.log_softmax(self.t5.lm_head(x).float(), -1)  # full vocabulary, as HF generate
        lo = FIRST_CODE + self.offsets[lvl]
        return logp[..., lo:lo + self.codebook_sizes[lvl]], new_cache

    def reorder(self, cache: list[tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Self-attention caches of beams ``index [N, K_new]`` (indices into the old beams)."""
        N, K = index.shape
        out = []
        for k, v in cache:
            idx = index.view(N, K, 1, 1, 1).expand(N, K, *k.shape[2:])
            out.append((k.gather(1, idx), v.gather(1, idx)))
        return out


# ----------------------------------------------------------------------------------------------
# Training


def tiger_examples(sequences: list[np.ndarray], users: np.ndarray, max_items: int
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Every prefix of every sequence as ``(histories, users, targets)`` (TIGER's examples)."""
    hist, us, tg = [], [], []
    for s, u in zip(sequences, users):
        for t in range(1, len(s)):
            hist.append(s[max(0, t - max_items):t])
            us.append(u)
            tg.append(s[t])
    return hist, np.asarray(us, dtype=np.int64), np.asarray(tg, dtype=np.int64)


def tiger_batches(model: TigerModel, examples: tuple[list[np.ndarray], np.ndarray, np.ndarray], batch_size: int,
                  rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled length-bucketed ``(input_ids, attention_mask, targets)`` batches."""
    hist, users, targets = examples
    lengths = np.array([len(h) for h in hist])
    order = np.lexsort((rng.random(len(hist)), lengths))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in rng.permutation(len(chunks)):
        rows = chunks[b]
        ids, mask = model.encoder_inputs([hist[r] for r in rows], users[rows])
        yield ids, mask, torch.from_numpy(targets[rows])


def train_tiger(split: LeaveOneOutSplit, table: Any, config: TigerConfig | None = None,
                out_dir: str | Path | None = None, progress: bool = True,
                on_eval: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train the T5 preset on ``split.train`` (one example per target), early-stopping on the
    validation NDCG@10 of a constrained beam search (on ``eval_users`` sampled users)."""
    config = config or TigerConfig()
    setup(config)
    model = TigerModel(table.codes, table.codebook_sizes, config)
    examples = tiger_examples(split.train, split.users, config.max_items)
    valid = split.valid.sample(config.eval_users, config.seed)

    def loss_fn(m: TigerModel, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        ids, mask, targets = batch
        return m(ids, mask, targets), len(targets)

    return fit(model, config, lambda rng: tiger_batches(model, examples, config.batch_size, rng),
               math.ceil(len(examples[2]) / config.batch_size), loss_fn,
               lambda m: evaluate(m, valid, config.eval_beam, batch_size=config.eval_batch_size),
               out_dir, progress, on_eval, {"codes": model.codes, "codebook_sizes": list(model.codebook_sizes)},
               "tiger")


def save_tiger(model: TigerModel, path: str | Path) -> None:
    """Save weights, config and semantic IDs atomically (see :func:`load_tiger`)."""
    torch_save(path, {"model": model.state_dict(), "config": asdict(model.config), "codes": model.codes,
                      "codebook_sizes": list(model.codebook_sizes)})


def load_tiger(path: str | Path) -> TigerModel:
    """Load a model saved by :func:`train_tiger` (``best.pt`` or its directory) or :func:`save_tiger`."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    ckpt = torch.load(path, weights_only=False)
    model = TigerModel(ckpt["codes"], ckpt["codebook_sizes"], TigerConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Reference decoding with transformers' generate (for the throughput benchmark and parity checks)


@torch.no_grad()
def hf_generate(model: TigerModel, instances: Instances | list[np.ndarray], num_beams: int = 20,
                top_k: int | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items per history with ``T5.generate(num_beams, prefix_allowed_tokens_fn)``:
    ``(items [n, k] int64, sequence log-probs [n, k] float32)``; the reference for our beam search."""
    histories = instances.histories if isinstance(instances, Instances) else instances
    users = instances.users if isinstance(instances, Instances) else None
    top_k = top_k or num_beams
    trie: PrefixTrie = _trie(model)
    allowed_cache: dict[tuple[int, ...], list[int]] = {}

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        key = tuple(sent[1:].tolist())
        if key not in allowed_cache:
            lvl = len(key)
            codes = [t - FIRST_CODE - off for t, off in zip(key, model.offsets)]
            node = trie.walk(codes) if lvl < model.num_levels else -1
            if node < 0:
                allowed_cache[key] = [EOS]
            else:
                nz = torch.nonzero(trie.child[lvl][node] >= 0)[:, 0]
                allowed_cache[key] = (nz + FIRST_CODE + model.offsets[lvl]).tolist()
        return allowed_cache[key]

    n = len(histories)
    items = np.full((n, top_k), -1, dtype=np.int64)
    scores = np.full((n, top_k), -np.inf, dtype=np.float32)
    model.eval()
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        ids, mask = model.encoder_inputs([histories[r] for r in rows], None if users is None else users[rows])
        out = model.t5.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams,
                                num_return_sequences=num_beams, max_new_tokens=model.num_levels,
                                min_new_tokens=model.num_levels, prefix_allowed_tokens_fn=allowed,
                                length_penalty=0.0, early_stopping=True, do_sample=False,
                                return_dict_in_generate=True, output_scores=True)
        seqs = out.sequences[:, 1:1 + model.num_levels].reshape(len(rows), num_beams, -1)
        codes = seqs - FIRST_CODE - torch.tensor(model.offsets)
        flat = codes.reshape(-1, model.num_levels)
        item = torch.tensor([trie.walk(c) for c in flat.tolist()]).reshape(len(rows), num_beams)
        sc = out.sequences_scores.reshape(len(rows), num_beams)
        items[rows], scores[rows] = item[:, :top_k].numpy(), sc[:, :top_k].float().numpy()
    return items, scores
