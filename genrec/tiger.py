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
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from genrec.artifacts import load_checkpoint, torch_save
from genrec.batching import check_histories
from genrec.beam_search import check_same_codes, eval_mode
from genrec.errors import ConfigError, DataFormatError
from genrec.checkpoint_files import INCOMPATIBLE_CHECKPOINT, incompatible_checkpoint
from genrec.generative import evaluate
from genrec.trie import PrefixTrie, trie_of
from genrec.training import TrainResult, data_digest, fit, setup
from genrec.model_settings import check_training_config, saved_config, usable_device
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
    eval_batch_size: int = 64  # users per beam-search batch: larger ones spill the CPU caches
    eval_users: int | None = 2000  # validation subsample per evaluation (None: all)
    seed: int = 0
    num_threads: int | None = None
    nonfinite_loss: str = "error"  # a NaN/inf training loss: "error" stops, "skip" leaves the step out
    # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available); under torchrun "cuda" is each rank's own GPU
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": bfloat16 autocast of training, evaluation and decoding (CUDA only)

    def __post_init__(self) -> None:
        check_training_config(self)
        b = self.user_buckets  # a negative count shrank the vocabulary under the code tokens (IndexError in T5)
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ConfigError(f"config key 'user_buckets' must be an integer >= 0 (0: no user tokens), got {b!r}")


class TigerModel(nn.Module):
    """T5 over semantic-ID tokens; implements :class:`genrec.beam_search.CodeDecoder` with cached
    encoder outputs (as cross-attention keys/values shared by a user's beams) and a key/value cache."""

    # an empty history is a cold start: the encoder reads the user token alone (or an EOS token)
    min_history = 0

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

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing weights trained on other semantic IDs
        (:func:`~genrec.beam_search.check_same_codes`): a resumed run names its checkpoint."""
        check_same_codes(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def codes(self) -> np.ndarray:
        """Semantic IDs ``[n_items, num_levels]``."""
        return (self.item_tokens[1:].cpu() - FIRST_CODE - torch.tensor(self.offsets)).numpy()

    def encoder_inputs(self, histories: list[np.ndarray], users: np.ndarray | None = None,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded encoder tokens and attention mask ``[N, S]`` of (user token +) history codes,
        on ``device`` (None: the model's)."""
        item_tokens = self.item_tokens.cpu()  # assembled on the host, row by row, then moved once
        rows = []
        for k, h in enumerate(histories):
            toks = item_tokens[torch.as_tensor(np.asarray(h[-self.config.max_items:], dtype=np.int64) + 1)]
            toks = toks.reshape(-1)
            if self.config.user_buckets and users is not None:
                toks = torch.cat([torch.tensor([self.user_offset + int(users[k]) % self.config.user_buckets]), toks])
            rows.append(toks if len(toks) else torch.tensor([EOS]))
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), PAD, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = r
        ids = ids.to(self.item_tokens.device if device is None else device)
        return ids, ids != PAD

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy of target items ``[B]`` given encoder inputs ``[B, S]``."""
        labels = self.item_tokens[targets + 1]  # [B, L]
        return self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss

    # -- CodeDecoder protocol ----------------------------------------------------------------------
    # Our own T5 forward on the model's weights (the maths of transformers' T5 in eval mode, checked
    # against it in the tests), laid out for decoding on a CPU, where ``generate`` is not:
    # - the encoder's feed-forward and output projections run on the real tokens only (padding is a
    #   quarter or more of a length-sorted batch); its attention sees the padded layout;
    # - all beams of a user share one copy of the cross-attention keys/values (the beams are folded
    #   into the query axis), where ``generate`` keeps and reorders one copy per beam;
    # - q/k/v, and each layer's cross-attention k/v, are single fused matrix products, and the lm
    #   head is padded to a multiple of 32 rows (odd widths run ~1.6x slower in CPU GEMMs), the
    #   padding logits set to -inf so the softmax is unchanged;
    # - self-attention keys/values are kept per level, ``[N, K, 2, heads, d_kv]``, level 0's (the
    #   start token) once per user: a step appends one level and a reorder gathers rows, nothing
    #   is concatenated.

    def _decoding_weights(self) -> dict[str, Any]:
        """Fused and padded weights for :meth:`start`/:meth:`step`, rebuilt per :meth:`start` (a
        few hundred KB of copies) so that training can keep updating the parameters in between."""
        t5 = self.t5
        qkv = lambda a: torch.cat([a.q.weight, a.k.weight, a.v.weight])  # noqa: E731  [3 * inner, D]
        out = t5.lm_head.weight  # [V, D] (the shared embedding when tied)
        V, D = out.shape
        head = out.new_zeros(-(-V // 32) * 32, D)
        head[:V] = out
        cross = [b.layer[1].EncDecAttention for b in t5.decoder.block]
        return {"enc_qkv": [qkv(b.layer[0].SelfAttention) for b in t5.encoder.block],
                "dec_qkv": [qkv(b.layer[0].SelfAttention) for b in t5.decoder.block],
                "cross_kv": [torch.cat([a.k.weight, a.v.weight]) for a in cross],  # [2 * inner, D] per layer
                "head": head}

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, weights: dict[str, Any]) -> torch.Tensor:
        """T5 encoder output on the real tokens, ``[T, D]`` in ``mask.nonzero()`` order."""
        enc = self.t5.encoder
        N, S = ids.shape
        real = mask.reshape(-1).nonzero().squeeze(1)  # [T] flat positions of real tokens
        x = enc.embed_tokens(ids.reshape(-1)[real])  # [T, D]
        att0 = enc.block[0].layer[0].SelfAttention
        bias = att0.compute_bias(S, S).masked_fill(~mask[:, None, None, :], -torch.inf)  # [N, heads, S, S]
        for block, w_qkv in zip(enc.block, weights["enc_qkv"]):
            att = block.layer[0].SelfAttention
            nh, dk = att.n_heads, att.key_value_proj_dim
            h = x.new_zeros(N * S, x.shape[1])  # padded again for attention: narrow, so cheaper than after q/k/v
            h[real] = block.layer[0].layer_norm(x)
            q, k, v = F.linear(h, w_qkv).view(N, S, 3, nh, dk).permute(2, 0, 3, 1, 4)  # each [N, heads, S, dk]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=getattr(att, "scaling", 1.0))
            x = x + att.o(y.transpose(1, 2).reshape(N * S, nh * dk)[real])
            ff = block.layer[1]
            x = x + ff.DenseReluDense.wo(F.relu_(ff.DenseReluDense.wi(ff.layer_norm(x))))
        return enc.final_layer_norm(x)

    def start(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> dict[str, Any]:
        """Encoder outputs turned into per-layer cross-attention keys ``[N, heads, d_kv, S]`` and
        values ``[N, heads, S, d_kv]``, and the additive mask ``[N, 1, 1, S]``, once per history."""
        weights = self._decoding_weights()
        ids, mask = self.encoder_inputs(histories, users)
        N, S = ids.shape
        enc = self._encode(ids, mask, weights)
        padded = enc.new_zeros(N * S, enc.shape[1])  # [N * S, D]
        padded[mask.reshape(-1).nonzero().squeeze(1)] = enc
        att = self.t5.decoder.block[0].layer[1].EncDecAttention
        nh, dk = att.n_heads, att.key_value_proj_dim
        cross = []
        for w_kv in weights["cross_kv"]:
            kv = F.linear(padded, w_kv).view(N, S, 2, nh, dk)
            # keys as [N, heads, dk, S] and values as [N, heads, S, dk], contiguous: plain batched GEMMs per step
            cross.append((kv[:, :, 0].permute(0, 2, 3, 1).contiguous(), kv[:, :, 1].transpose(1, 2).contiguous()))
        bias = torch.zeros(N, 1, 1, S, device=ids.device).masked_fill(~mask[:, None, None, :], -torch.inf)
        L = self.num_levels
        self_bias = self.t5.decoder.block[0].layer[0].SelfAttention.compute_bias(L, L)[0]  # [heads, L, L]
        return {"cross": cross, "mask": bias, "self_bias": self_bias, "weights": weights}

    def step(self, context: dict[str, Any], codes: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoder step for prefixes ``[N, K, l]`` on the cached self-attention keys/values of
        levels < l; returns full-vocabulary log-probs restricted to level ``l``'s codes."""
        N, K, lvl = codes.shape
        R = N * K
        if lvl == 0:
            tok = torch.full((N, K), PAD, dtype=torch.long, device=codes.device)
        else:
            tok = codes[:, :, -1] + self.offsets[lvl - 1] + FIRST_CODE
        dec, weights = self.t5.decoder, context["weights"]
        x = dec.embed_tokens(tok.reshape(R))  # [R, D]
        pos_bias = context["self_bias"][:, lvl, :lvl + 1]  # [heads, l + 1]: query l to keys 0..l
        new_cache = []
        for i, block in enumerate(dec.block):
            att = block.layer[0].SelfAttention
            nh, dk = att.n_heads, att.key_value_proj_dim
            C = nh * dk
            qkv = F.linear(block.layer[0].layer_norm(x), weights["dec_qkv"][i]).view(N, K, 3, nh, dk)
            # keys/values of levels 0..l: [N, K_j, 2, heads, dk] each, K_0 = 1 (the shared start token)
            kvs = (cache[i] if lvl else []) + [qkv[:, :, 1:]]
            new_cache.append(kvs)
            q = qkv[:, :, 0]  # [N, K, heads, dk]
            scores = torch.stack([(q * kv[:, :, 0]).sum(-1) for kv in kvs], -1)  # [N, K, heads, l + 1]
            p = torch.softmax(scores * getattr(att, "scaling", 1.0) + pos_bias, -1)  # T5: no 1/sqrt(d) scaling
            y = sum(p[..., j, None] * kv[:, :, 1] for j, kv in enumerate(kvs))  # [N, K, heads, dk]
            x = x + att.o(y.reshape(R, C))
            catt = block.layer[1].EncDecAttention
            q = catt.q(block.layer[1].layer_norm(x)).view(N, K, nh, dk).transpose(1, 2)  # [N, heads, K, dk]
            ck, cv = context["cross"][i]  # [N, heads, dk, S], [N, heads, S, dk]
            scores = (q @ ck) * getattr(catt, "scaling", 1.0)
            y = torch.softmax(scores + context["mask"], -1) @ cv  # [N, heads, K, dk]
            x = x + catt.o(y.transpose(1, 2).reshape(R, C))
            ff = block.layer[2]
            x = x + ff.DenseReluDense.wo(F.relu_(ff.DenseReluDense.wi(ff.layer_norm(x))))
        x = dec.final_layer_norm(x)
        # transformers 5 names the rescaling; 4.x rescaled exactly when the embeddings were tied
        if getattr(self.t5.config, "scale_decoder_outputs", self.t5.config.tie_word_embeddings):
            x = x * (self.t5.model_dim ** -0.5)
        logits = F.linear(x, weights["head"])  # [R, V padded]
        logits[:, self.t5.config.vocab_size:] = -torch.inf
        logp = torch.log_softmax(logits.float(), -1)  # full vocabulary, as HF generate
        lo = FIRST_CODE + self.offsets[lvl]
        return logp[:, lo:lo + self.codebook_sizes[lvl]].reshape(N, K, -1), new_cache

    def reorder(self, cache: list[list[torch.Tensor]], index: torch.Tensor) -> list[list[torch.Tensor]]:
        """Self-attention caches of beams ``index [N, K_new]`` (indices into the old beams); level 0's
        entry is shared by all beams and stays as it is."""
        N, K = index.shape
        out = []
        for kvs in cache:
            K_old = kvs[-1].shape[1]  # levels >= 1 all have the old beams' rows
            rows = (index + torch.arange(N, device=index.device)[:, None] * K_old).reshape(-1)
            out.append(kvs[:1] + [kv.reshape(N * K_old, *kv.shape[2:]).index_select(0, rows).view(N, K, *kv.shape[2:])
                                  for kv in kvs[1:]])
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
        # on the host: loss_fn moves the batch (under DDP a rank builds, and skips, the others' batches too)
        ids, mask = model.encoder_inputs([hist[r] for r in rows], users[rows], device="cpu")
        yield ids, mask, torch.from_numpy(targets[rows])


def train_tiger(split: LeaveOneOutSplit, table: Any, config: TigerConfig | None = None,
                out_dir: str | Path | None = None, progress: bool = True,
                on_eval: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train the T5 preset on ``split.train`` (one example per target), early-stopping on the
    validation NDCG@10 of a constrained beam search (on ``eval_users`` sampled users)."""
    config = config or TigerConfig()
    if len(table.codes) != split.num_items:
        raise DataFormatError(f"the semantic-ID table has {len(table.codes)} items but the dataset has "
                              f"{split.num_items}; was it built for another dataset?")
    setup(config)
    device = usable_device(config.device)  # after setup: under torchrun "cuda" is this rank's GPU
    model = TigerModel(table.codes, table.codebook_sizes, config).to(device)
    examples = tiger_examples(split.train, split.users, config.max_items)
    valid = split.valid.sample(config.eval_users, config.seed)

    def loss_fn(m: TigerModel, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        ids, mask, targets = (t.to(device) for t in batch)
        return m(ids, mask, targets), len(targets)

    return fit(model, config, lambda rng: tiger_batches(model, examples, config.batch_size, rng),
               math.ceil(len(examples[2]) / config.batch_size), loss_fn,
               lambda m: evaluate(m, valid, config.eval_beam, batch_size=config.eval_batch_size),
               out_dir, progress, on_eval,
               {"codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)}, "tiger",
               data_digest(split, model.codes, model.codebook_sizes))


def save_tiger(model: TigerModel, path: str | Path) -> None:
    """Save weights, config and semantic IDs atomically (see :func:`load_tiger`)."""
    torch_save(path, {"model": model.state_dict(), "config": asdict(model.config),
                      "codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)})


def load_tiger(path: str | Path, device: str = "cpu") -> TigerModel:
    """Load a model saved by :func:`train_tiger` (``best.pt`` or its directory) or :func:`save_tiger`
    onto ``device`` (wherever it was trained)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    ckpt = load_checkpoint(path, kind="TIGER model checkpoint", keys=("model", "config", "codes", "codebook_sizes"))
    try:
        model = TigerModel(np.asarray(ckpt["codes"]), ckpt["codebook_sizes"],
                           TigerConfig(**saved_config(ckpt["config"])))
        model.load_state_dict(ckpt["model"])
    except INCOMPATIBLE_CHECKPOINT as e:
        raise incompatible_checkpoint(path, "TIGER model", ckpt, e) from e
    return model.to(usable_device(device)).eval()


# ----------------------------------------------------------------------------------------------
# Reference decoding with transformers' generate (for the throughput benchmark and parity checks)


@torch.no_grad()
def hf_generate(model: TigerModel, instances: Instances | list[np.ndarray], num_beams: int = 20,
                top_k: int | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items per history with ``T5.generate(num_beams, prefix_allowed_tokens_fn)``:
    ``(items [n, k] int64, sequence log-probs [n, k] float32)``; the reference for our beam search."""
    histories = instances.histories if isinstance(instances, Instances) else instances
    users = instances.users if isinstance(instances, Instances) else None
    check_histories(histories, model.num_items, model.min_history, "TigerModel")
    top_k = top_k or num_beams
    if not 1 <= top_k <= num_beams:  # generate returns num_beams sequences per history
        raise ValueError(f"need 1 <= top_k <= num_beams, got top_k={top_k}, num_beams={num_beams}")
    if num_beams > model.num_items:  # more beams than items: generate repeats items and pads with -1e9
        raise ValueError(f"num_beams ({num_beams}) exceeds the catalogue's {model.num_items} items")
    trie: PrefixTrie = trie_of(model)
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
    with eval_mode(model):  # a model in training is left in training (it was left in eval mode)
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            ids, mask = model.encoder_inputs([histories[r] for r in rows], None if users is None else users[rows])
            out = model.t5.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams,
                                    num_return_sequences=num_beams, max_new_tokens=model.num_levels,
                                    min_new_tokens=model.num_levels, prefix_allowed_tokens_fn=allowed,
                                    length_penalty=0.0, early_stopping=True, do_sample=False,
                                    return_dict_in_generate=True, output_scores=True)
            seqs = out.sequences[:, 1:1 + model.num_levels].reshape(len(rows), num_beams, -1)
            codes = (seqs - FIRST_CODE - torch.tensor(model.offsets, device=seqs.device)).cpu()
            flat = codes.reshape(-1, model.num_levels)
            item = torch.tensor([trie.walk(c) for c in flat.tolist()]).reshape(len(rows), num_beams)
            sc = out.sequences_scores.reshape(len(rows), num_beams)
            items[rows], scores[rows] = item[:, :top_k].numpy(), sc[:, :top_k].float().cpu().numpy()
    return items, scores
