"""RQ-VAE (TIGER's semantic-ID tokenizer), in PyTorch.

An MLP encoder maps an embedding to a small latent (default 384 -> 512 -> 256 -> 128 -> 32);
``levels`` codebooks quantize it residually (level ``l`` picks the codeword nearest to what levels
``< l`` left); an MLP decoder reconstructs the embedding from the sum of the chosen codewords.
Training loss per batch::

    ||x - dec(z_q)||^2 + sum_l ( ||sg(r_l) - e_l||^2 + beta * ||r_l - sg(e_l)||^2 )

with the straight-through estimator carrying the decoder's gradient past the argmin to the
encoder. Codebooks start from k-means on the initial latents (faiss), and codes unused over an
epoch are restarted on random current residuals, which keeps utilisation high.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from genrec.errors import TrainingDivergedError
from quantize.base import (Quantizer, as_embeddings, check_nonnegative_ints, check_positive_ints, effective_k, kmeans,
                           nearest)
from quantize.rq_kmeans import level_sizes

log = logging.getLogger(__name__)

__all__ = ["RQVAE"]


def _build_modules(dim: int, hidden: Sequence[int], latent: int, sizes: Sequence[int], dropout: float) -> Any:
    import torch
    from torch import nn

    def mlp(widths: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:  # no activation on the output layer
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    class _RQVAEModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = mlp([dim, *hidden, latent])
            self.decoder = mlp([latent, *reversed(hidden), dim])
            # Codebooks [k_l, latent]; overwritten by the k-means initialisation.
            self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(k, latent) * 0.1) for k in sizes])

        def quantize(self, z: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", list]:
            """Residual quantization of ``z [B, latent]`` -> (z_q [B, latent], codes [B, L],
            codebook+commitment terms [L] (unweighted pair), residuals per level)."""
            residual = z
            z_q = torch.zeros_like(z)
            codes, cb_terms, commit_terms, residuals = [], [], [], []
            for book in self.codebooks:
                # Squared distances [B, k]; argmin is the code.
                d = (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.t() + book.pow(2).sum(1)[None])
                idx = d.argmin(1)
                e = book[idx]  # [B, latent]
                cb_terms.append((residual.detach() - e).pow(2).sum(1).mean())
                commit_terms.append((residual - e.detach()).pow(2).sum(1).mean())
                residuals.append(residual.detach())
                codes.append(idx)
                z_q = z_q + e
                residual = residual - e.detach()
            return z_q, torch.stack(codes, 1), torch.stack([torch.stack(cb_terms), torch.stack(commit_terms)]), residuals

        def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", list]:
            z = self.encoder(x)
            z_q, codes, terms, residuals = self.quantize(z)
            z_ste = z + (z_q - z).detach()  # straight-through: forward uses z_q, gradient goes to z
            return self.decoder(z_ste), codes, terms, residuals

    return _RQVAEModule()


class RQVAE(Quantizer):
    """Residual-quantized VAE (TIGER): ``levels`` x ``codebook_size`` codes over a ``latent_dim`` latent.

    Defaults follow TIGER (hidden 512-256-128, latent 32, 3 x 256, beta 0.25) with Adam and a
    cosine learning-rate decay; ``standardize`` scales inputs per dimension first (stored, so
    ``decode`` returns vectors in the original space). ``device`` is a runtime choice, not saved.
    Training is deterministic for a seed on a given machine and torch thread count (a different
    thread count changes float summation order, hence slightly different codes).
    """

    name = "rq_vae"

    def __init__(self, levels: int = 3, codebook_size: int | Sequence[int] = 256, latent_dim: int = 32,
                 hidden_dims: Sequence[int] = (512, 256, 128), beta: float = 0.25, epochs: int = 150,
                 batch_size: int = 1024, lr: float = 1e-3, weight_decay: float = 0.0, dropout: float = 0.0,
                 kmeans_init: bool = True, restart_dead: bool = True, standardize: bool = True,
                 seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed)
        self.requested_sizes = level_sizes(levels, codebook_size)
        # integers, not floats truncated (latent_dim=4.7 built a 4-d latent) or bools taken as 0 / 1
        check_positive_ints(latent_dim=latent_dim, batch_size=batch_size)
        check_nonnegative_ints(epochs=epochs)
        if lr <= 0 or beta < 0:  # NaN passes here, to the finiteness check below
            raise ValueError(f"rq_vae: need lr > 0 and beta >= 0, got {lr!r} and {beta!r}")
        # checked here, not first in fit(): the recipe builds the quantizer to check its options before embedding
        if not (math.isfinite(lr) and math.isfinite(beta)):
            raise ValueError(f"rq_vae: lr and beta must be finite, got {lr!r} and {beta!r}")
        if not (0 <= dropout < 1) or not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"rq_vae: need 0 <= dropout < 1 and a finite weight_decay >= 0, got {dropout!r} and "
                             f"{weight_decay!r}")
        if isinstance(hidden_dims, (str, bytes)) or any(isinstance(h, bool) or int(h) != h or h < 1 for h in hidden_dims):
            raise ValueError(f"rq_vae: hidden_dims must be integers >= 1, got {hidden_dims!r}")
        self.latent_dim = int(latent_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.beta = float(beta)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.kmeans_init = bool(kmeans_init)
        self.restart_dead = bool(restart_dead)
        self.standardize = bool(standardize)
        self.device = device
        self.module: Any = None
        self.mean: np.ndarray | None = None  # [d] input shift (0 without standardize)
        self.scale: np.ndarray | None = None  # [d] input scale (1 without standardize)
        self.history: list[dict[str, float]] = []  # per-epoch mean losses of the last fit

    def config(self) -> dict[str, Any]:
        return {"levels": len(self.requested_sizes), "codebook_size": list(self.requested_sizes),
                "latent_dim": self.latent_dim, "hidden_dims": list(self.hidden_dims), "beta": self.beta,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "dropout": self.dropout, "kmeans_init": self.kmeans_init,
                "restart_dead": self.restart_dead, "standardize": self.standardize, "seed": self.seed}

    @property
    def residual(self) -> bool:
        return True

    # -- training ------------------------------------------------------------------------------
    def _to_tensor(self, x: np.ndarray) -> Any:
        import torch

        assert self.mean is not None and self.scale is not None
        return torch.from_numpy((x - self.mean) / self.scale).to(self.device)

    def fit(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        import torch

        x = as_embeddings(embeddings, ids)
        n, d = x.shape
        self.dim = self._sizes = None  # unfitted until this fit has trained (a refit that fails included)
        self.fitted_after = None  # a refit's preprocessing is its caller's to record (build_semantic_ids does)
        sizes = tuple(effective_k(k, n, f"rq_vae level {lv}") for lv, k in enumerate(self.requested_sizes))
        if self.standardize:
            self.mean = x.mean(0)
            # A (near-)constant dimension keeps scale 1, as sklearn's StandardScaler does: dividing by
            # a tiny std would blow up a new item that differs there (encode) by ~1e6.
            std = x.std(0)
            self.scale = np.where(std < 1e-6 * max(float(x.std()), 1e-12), 1.0, std).astype(np.float32)
        else:
            self.mean, self.scale = np.zeros(d, np.float32), np.ones(d, np.float32)
        self.mean = self.mean.astype(np.float32)
        # Own RNG stream: the result depends on `seed` only, and the caller's global RNG (CUDA's
        # included, which manual_seed also reseeds) is untouched.
        dev = torch.device(self.device)
        # manual_seed would reseed every GPU too: on the CPU only the CPU generator is seeded; on CUDA
        # every GPU's state is saved and restored
        devices = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if dev.type == "cuda":
                torch.manual_seed(self.seed)
            else:
                torch.default_generator.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.module = _build_modules(d, self.hidden_dims, self.latent_dim, sizes, self.dropout).to(self.device)
            data = self._to_tensor(x)  # [n, d]
            if self.kmeans_init:
                self._kmeans_init(data)
            self._train(data, gen)
        self.module.eval()
        self.dim, self._sizes = d, sizes  # fitted only once trained: a diverged fit leaves it unfitted
        return self._encode(x)

    @staticmethod
    def _no_grad_batches(fn: Any, data: Any, batch: int = 8192) -> list:
        import torch

        with torch.no_grad():
            return [fn(data[i:i + batch]) for i in range(0, len(data), batch)]

    def _kmeans_init(self, data: Any) -> None:
        """Codebooks from residual k-means on the untrained encoder's latents (TIGER's init)."""
        import torch

        self.module.eval()
        z = torch.cat(self._no_grad_batches(self.module.encoder, data)).cpu().numpy().astype(np.float32)
        residual = z.copy()  # [n, latent]
        for level, book in enumerate(self.module.codebooks):
            c = kmeans(residual, book.shape[0], seed=self.seed + level, niter=20)
            residual -= c[nearest(residual, c)]
            with torch.no_grad():
                book.copy_(torch.from_numpy(c))

    def _train(self, data: Any, gen: Any) -> None:
        import torch

        module, n = self.module, len(data)
        opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = max(1, -(-n // self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs * steps_per_epoch),
                                                           eta_min=self.lr * 0.05)
        self.history = []
        # disable=None: a bar on a terminal only, never in logs or pipes
        bar = tqdm(range(self.epochs), desc="rq-vae epochs", leave=False, disable=None)
        for epoch in bar:
            module.train()
            perm = torch.randperm(n, generator=gen).to(self.device)
            usage = [torch.zeros(b.shape[0], dtype=torch.long, device=self.device) for b in module.codebooks]
            sums = np.zeros(3)
            last_residuals: list = []
            for s in range(steps_per_epoch):
                xb = data[perm[s * self.batch_size:(s + 1) * self.batch_size]]
                x_hat, codes, terms, last_residuals = module(xb)
                recon = (x_hat - xb).pow(2).sum(1).mean()
                quant = terms[0].sum() + self.beta * terms[1].sum()
                loss = recon + quant
                if not torch.isfinite(loss):  # never carry NaN weights into the semantic IDs
                    raise TrainingDivergedError(
                        f"rq_vae training diverged: the loss is {loss.item()} at epoch {epoch + 1}, step {s + 1} of "
                        f"{steps_per_epoch}; try a lower lr (now {self.lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                for lv in range(codes.shape[1]):
                    usage[lv] += torch.bincount(codes[:, lv], minlength=usage[lv].shape[0])
                sums += (loss.item(), recon.item(), quant.item())
            dead = [int((u == 0).sum()) for u in usage]
            rec = {"epoch": epoch, "loss": float(sums[0] / steps_per_epoch),
                   "recon": float(sums[1] / steps_per_epoch), "quant": float(sums[2] / steps_per_epoch),
                   "dead_codes": float(sum(dead))}
            self.history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", dead=sum(dead))
            if self.restart_dead and epoch < self.epochs - 1 and sum(dead):
                self._restart(usage, data, gen)
        bar.close()
        if self.history:
            log.info("rq_vae: %d epochs, final loss %.4f (recon %.4f), dead codes in last epoch %d",
                     self.epochs, self.history[-1]["loss"], self.history[-1]["recon"],
                     int(self.history[-1]["dead_codes"]))

    def _restart(self, usage: list, data: Any, gen: Any) -> None:
        """Move codes unused this epoch onto residuals of random training items at their level."""
        import torch

        module = self.module
        pick = torch.randperm(len(data), generator=gen)[: min(len(data), 4096)].to(self.device)
        with torch.no_grad():
            module.eval()
            _, _, _, residuals = module.quantize(module.encoder(data[pick]))
            for lv, (u, book) in enumerate(zip(usage, module.codebooks)):
                dead = torch.nonzero(u == 0).flatten()
                if len(dead) == 0:
                    continue
                src = torch.randint(0, len(pick), (len(dead),), generator=gen).to(self.device)
                book[dead] = residuals[lv][src]
        module.train()

    # -- inference -----------------------------------------------------------------------------
    def _encode(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.module.eval()
        data = self._to_tensor(x)
        with torch.no_grad():
            out = [self.module.quantize(self.module.encoder(data[i:i + 8192]))[1]
                   for i in range(0, len(data), 8192)]
        return torch.cat(out).cpu().numpy().astype(np.int64)

    def latent(self, embeddings: np.ndarray) -> np.ndarray:
        """Encoder output ``float32 [n, latent_dim]`` (before quantization)."""
        import torch

        if not self.fitted:  # no module yet: an AttributeError on None
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        x = as_embeddings(embeddings, dim=self.dim)
        self.module.eval()
        with torch.no_grad():
            return self.module.encoder(self._to_tensor(x)).cpu().numpy()

    def _decode(self, codes: np.ndarray, levels: int) -> np.ndarray:
        import torch

        self.module.eval()
        c = torch.from_numpy(codes).to(self.device)
        with torch.no_grad():
            z_q = torch.zeros(len(codes), self.latent_dim, device=self.device)
            for lv in range(levels):
                z_q += self.module.codebooks[lv][c[:, lv]]
            x_hat = torch.cat([self.module.decoder(z_q[i:i + 8192]) for i in range(0, len(z_q), 8192)])
        assert self.mean is not None and self.scale is not None
        return (x_hat.cpu().numpy() * self.scale + self.mean).astype(np.float32)

    def _state(self) -> dict[str, Any]:
        return {"module": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
                "mean": self.mean, "scale": self.scale, "history": self.history}

    def _set_state(self, state: dict[str, Any]) -> None:
        assert self.dim is not None and self._sizes is not None
        self.module = _build_modules(self.dim, self.hidden_dims, self.latent_dim, self._sizes, self.dropout)
        self.module.load_state_dict(state["module"])
        self.module.to(self.device).eval()
        mean = np.asarray(state["mean"], dtype=np.float32)
        scale = np.asarray(state["scale"], dtype=np.float32)
        # every input is shifted and divided by these: a wrong shape broadcast or failed only at encode time
        for key, a in (("mean", mean), ("scale", scale)):
            if a.shape != (self.dim,) or not np.isfinite(a).all():
                raise ValueError(f"the input {key} is {list(a.shape)}, expected [{self.dim}] finite values")
        if (scale <= 0).any():
            raise ValueError("the input scale must be positive (fit never stores a zero or negative one)")
        self.mean, self.scale = mean, scale
        self.history = list(state.get("history", []))
