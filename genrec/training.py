"""The training loop shared by genrec's models: Adam, early stopping on validation NDCG@10,
atomic checkpoints and exact resume after a kill."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from genrec.artifacts import save_json, torch_save

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the trainers return: the best model and the validation history."""

    model: nn.Module
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation


# Settings a run may change on resume (a longer schedule, other threads) without invalidating it.
_RESUMABLE = {"max_epochs", "max_minutes", "patience", "min_delta", "eval_batch_size", "num_threads", "eval_beam",
              "device", "eval_users"}


def _model_fields(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _RESUMABLE}


def fit(model: nn.Module, config: Any, batches: Callable[[np.random.Generator], Iterable[Any]], num_batches: int,
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
        evaluate_fn: Callable[[nn.Module], dict[str, float]], out_dir: str | Path | None = None,
        progress: bool = True, on_eval: Callable[[dict[str, float]], None] | None = None,
        checkpoint_extra: dict[str, Any] | None = None, name: str = "generative") -> TrainResult:
    """Adam training loop with early stopping on validation ``ndcg@10``, atomic ``best.pt`` /
    ``last.pt`` checkpoints in ``out_dir`` and exact resume from ``last.pt``.

    ``max_minutes`` (training + validation time, summed over resumes; optional) may cut the last
    epoch short. ``min_delta`` (optional): the relative validation gain that counts as progress for
    the patience. Batches are moved to the model's device by ``loss_fn``.
    ``config`` (a dataclass) needs ``lr, weight_decay, max_epochs, patience, eval_every, seed``;
    optional ``lr_schedule`` (``"constant"`` or ``"cosine"``: decay to ``final_lr_ratio * lr`` over
    ``schedule_epochs``, default ``max_epochs``) and ``warmup_epochs`` (linear warm-up), stepped
    per batch, so the schedule is a function of the step count only (deterministic, exact on resume).
    ``batches(rng)`` yields one epoch; ``loss_fn(model, batch) -> (mean loss, count)``.
    """
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    state = {"epoch": 0, "best_ndcg": -1.0, "best_epoch": 0, "bad_evals": 0, "history": [], "seconds": 0.0}
    out = Path(out_dir) if out_dir else None
    best_state = None
    if out and (out / "last.pt").exists():
        # On the CPU: RNG states must stay CPU byte tensors; weights and optimizer state are copied
        # to the model's device by load_state_dict.
        ckpt = torch.load(out / "last.pt", weights_only=False, map_location="cpu")
        if _model_fields(ckpt["config"]) != _model_fields(asdict(config)):
            raise ValueError(f"{out / 'last.pt'}: checkpoint config differs from the requested config; "
                             "use another out_dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        state = ckpt["state"]
        best_state = torch.load(out / "best.pt", weights_only=False, map_location=device)["model"] \
            if (out / "best.pt").exists() else None
        log.info("resumed %s from %s at epoch %d", name, out / "last.pt", state["epoch"])

    max_minutes = getattr(config, "max_minutes", None)
    min_delta = getattr(config, "min_delta", 0.0)
    lr_at = lr_schedule(config, num_batches)
    state.setdefault("step", state["epoch"] * num_batches)  # checkpoints from before the schedule existed

    def out_of_time() -> bool:
        return max_minutes is not None and state["seconds"] >= 60 * max_minutes

    while state["epoch"] < config.max_epochs and state["bad_evals"] < config.patience and not out_of_time():
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        # disable=None: progress bars on a terminal only, never in log files
        for batch in tqdm(batches(rng), total=num_batches, disable=None if progress else True,
                          desc=f"{name} epoch {state['epoch'] + 1}", leave=False):
            if max_minutes is not None and state["seconds"] + time.perf_counter() - t0 >= 60 * max_minutes:
                break  # out of time: the epoch ends early (and is evaluated and saved as usual)
            step = state["step"]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss, n = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] = step + 1
            total += loss.item() * n
            count += n
        state["epoch"] += 1
        last = state["epoch"] >= config.max_epochs
        if state["epoch"] % config.eval_every and not last:
            state["seconds"] += time.perf_counter() - t0
            if not out_of_time():
                continue
        metrics = evaluate_fn(model)
        state["seconds"] += time.perf_counter() - t0
        row = {"epoch": state["epoch"], "train_loss": total / max(count, 1), "minutes": state["seconds"] / 60,
               **metrics}
        state["history"].append(row)
        improved = metrics["ndcg@10"] > state["best_ndcg"]
        if improved:  # the best checkpoint follows any improvement ...
            state.update(best_ndcg=metrics["ndcg@10"], best_epoch=state["epoch"])
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        # ... but only a relative gain of min_delta over the last reference resets the patience, so
        # a plateau that creeps up by noise-sized steps still ends
        if metrics["ndcg@10"] > state.get("ref_ndcg", -1.0) * (1 + min_delta):
            state.update(ref_ndcg=metrics["ndcg@10"], bad_evals=0)
        else:
            state["bad_evals"] += 1
        log.info("%s epoch %d loss %.4f valid N@10 %.4f R@10 %.4f (%.1f min)%s", name, state["epoch"],
                 row["train_loss"], metrics["ndcg@10"], metrics["recall@10"], row["minutes"], " *" if improved else "")
        if on_eval:
            on_eval(row)
        if out:
            extra = checkpoint_extra or {}
            if improved:
                torch_save(out / "best.pt", {"model": best_state, "config": asdict(config),
                                             "epoch": state["epoch"], **extra})
            torch_save(out / "last.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                         "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                                         "state": state, "config": asdict(config), **extra})
            save_json(out / "history.json", state["history"])
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    return TrainResult(model=model, best_epoch=state["best_epoch"], best_valid=best, history=state["history"])


LR_SCHEDULES = ("constant", "cosine")


def lr_schedule(config: Any, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each optimiser step (0-based) for ``config``'s ``lr``, ``lr_schedule``,
    ``warmup_epochs``, ``schedule_epochs`` and ``final_lr_ratio`` (see :func:`fit`)."""
    kind = getattr(config, "lr_schedule", "constant")
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    warmup = max(0.0, float(getattr(config, "warmup_epochs", 0.0) or 0.0)) * steps_per_epoch
    horizon = max(1, (getattr(config, "schedule_epochs", None) or config.max_epochs) * steps_per_epoch)
    final = float(getattr(config, "final_lr_ratio", 0.0) or 0.0)

    def lr_at(step: int) -> float:
        factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if kind == "cosine":
            factor *= final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon)))
        return config.lr * factor

    return lr_at


def setup(config: Any) -> None:
    """Threads, flush-denormal and the torch seed, before a model is built."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.set_flush_denormal(True)  # denormals make CPU matmuls crawl late in training
    torch.manual_seed(config.seed)
