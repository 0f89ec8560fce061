"""The training loop shared by genrec's models: Adam, early stopping on validation NDCG@10,
atomic checkpoints, exact resume after a kill, and a clear stop when the loss diverges."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from genrec import checkpoint_files, distributed
from genrec.artifacts import save_json
from genrec.errors import CheckpointError, ConfigError, DataFormatError, TrainingDivergedError
from genrec.model_settings import LR_SCHEDULES, autocast, check_nonfinite_loss, check_precision, resolve_device

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the trainers return: the best model and the validation history."""

    model: nn.Module
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    skipped_steps: int = 0  # steps with a non-finite loss left out (``nonfinite_loss="skip"``)


# Settings a run may change on resume (a longer schedule, other threads) without invalidating it.
# ``precision`` is one of them: autocast keeps the weights and the optimiser state in float32 either
# way, so a bf16 run killed on a GPU may resume in fp32 (e.g. on the CPU) and vice versa.
_RESUMABLE = {"max_epochs", "max_minutes", "patience", "min_delta", "eval_batch_size", "num_threads", "eval_beam",
              "device", "eval_users", "nonfinite_loss", "precision", "schedule_epochs"}


def _model_fields(config: dict) -> dict:
    # nested too: fusion.joint's tower configs carry training fields that its loop ignores
    return {k: _model_fields(v) if isinstance(v, dict) else v for k, v in config.items() if k not in _RESUMABLE}


def _with_defaults(saved: dict, config: Any) -> dict:
    """``saved`` (a checkpoint's config dict) with the fields it lacks at their defaults in ``config``'s
    dataclass (nested configs too): a setting added to genrec after the checkpoint was written then
    resumes as long as the run uses its default (which is what the checkpoint was trained with)."""
    if not dataclasses.is_dataclass(config) or not isinstance(saved, dict):
        return saved
    out = dict(saved)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in out:
            out[f.name] = _with_defaults(out[f.name], value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = dataclasses.asdict(d) if dataclasses.is_dataclass(d := f.default_factory()) else d
    return out


def _config_diff(saved: dict, requested: dict, prefix: str = "") -> list[str]:
    """``key: saved -> requested`` for each differing key (dotted for nested configs)."""
    out = []
    for k in list(saved) + [k for k in requested if k not in saved]:
        a, b = saved.get(k, "<absent>"), requested.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def data_digest(split: Any, *extra: Any) -> str:
    """A 16-hex-digit digest of what a trainer reads from ``split`` (the catalogue size, the users, the
    training sequences, the validation instances) and of ``extra`` arrays (a semantic-ID table's codes):
    :func:`fit` refuses to resume a checkpoint written for other data under the same config."""
    h = hashlib.sha256()

    def add(a: Any) -> None:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.int64))
        h.update(np.asarray(a.shape, np.int64).tobytes())
        h.update(a.tobytes())

    add([split.num_items, len(split.train), len(split.valid.targets)])
    add(split.users)
    add([len(s) for s in split.train])
    for seq in split.train:
        add(seq)
    add(split.valid.users)
    add(split.valid.targets)
    add([len(q) for q in split.valid.histories])
    for q in split.valid.histories:
        add(q)
    for a in extra:
        add(a)
    return h.hexdigest()[:16]


def fit(model: nn.Module, config: Any, batches: Callable[[np.random.Generator], Iterable[Any]], num_batches: int,
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
        evaluate_fn: Callable[[nn.Module], dict[str, float]], out_dir: str | Path | None = None,
        progress: bool = True, on_eval: Callable[[dict[str, float]], None] | None = None,
        checkpoint_extra: dict[str, Any] | None = None, name: str = "generative",
        data: str | None = None) -> TrainResult:
    """Adam training loop with early stopping on validation ``ndcg@10``, atomic ``best.pt`` /
    ``last.pt`` checkpoints in ``out_dir`` and exact resume from ``last.pt``.

    ``max_minutes`` (training + validation time, summed over resumes; optional) may cut the last
    epoch short. ``min_delta`` (optional): the relative validation gain that counts as progress for
    the patience. Batches are moved to the model's device by ``loss_fn``.
    ``config`` (a dataclass) needs ``lr, weight_decay, max_epochs, patience, eval_every, seed``;
    optional ``lr_schedule`` (``"constant"`` or ``"cosine"``: decay to ``final_lr_ratio * lr`` over
    ``schedule_epochs``, default the ``max_epochs`` the run started with, kept on resume) and
    ``warmup_epochs`` (a linear warm-up over the first steps, times the decay: :func:`lr_factor`),
    stepped per batch, so the schedule is a function of the step count only (deterministic, exact
    on resume).
    ``batches(rng)`` yields one epoch; ``loss_fn(model, batch) -> (mean loss, count)``.

    Divergence: a NaN or infinite training loss raises :class:`TrainingDivergedError` (model name,
    epoch, step, last finite loss) before the optimiser applies it. With ``nonfinite_loss="skip"``
    (optional config field) such a step is left out instead (no update; the step still counts for
    the schedule), the number skipped is logged at WARNING after each epoch, kept in the state and
    in each history row (``skipped_steps``, the run's total so far) and in the result; an epoch
    whose every step is skipped raises anyway. A validation ``ndcg@10`` that is not finite is never
    an improvement: it never becomes ``best.pt`` and counts against the patience.

    ``data`` (:func:`data_digest` of what the trainer reads): kept in the checkpoints; a resume from a
    checkpoint of other data is a :class:`~genrec.errors.CheckpointError` (a directory reused for
    another dataset of the same catalogue size resumed its model silently).

    Checkpoints: each evaluation writes ``best.pt`` (when improved) and then ``last.pt``, each
    atomically after renaming the file it replaces to ``best.prev.pt`` / ``last.prev.pt``. Resume
    loads ``last.pt`` and, when that is missing or cannot be loaded (a WARNING names it), the
    evaluation before it from ``last.prev.pt``; when neither loads it raises
    :class:`~genrec.errors.CheckpointError`. The best weights come from the resumed checkpoint when
    its best epoch is its own epoch, else from whichever of ``best.pt`` / ``best.prev.pt`` loads and
    holds that epoch; none does: :class:`~genrec.errors.CheckpointError` (nothing is recomputed).

    Precision: ``config.precision`` (optional, default ``"fp32"``) ``"bf16"`` runs each forward and
    loss, and the validation, under ``torch.autocast(device_type="cuda", dtype=torch.bfloat16)``; the
    weights, gradients and optimiser state stay float32. It needs a CUDA model (else ConfigError).

    Distributed (a process group of N > 1 ranks, e.g. under ``torchrun``; see
    :mod:`genrec.distributed`): the model is wrapped in ``DistributedDataParallel``; every rank draws
    the same seeded epoch order and takes every N-th batch of it from its rank on (the union is the
    single-process epoch, so an optimiser step sees N batches and an epoch has ``ceil(num_batches / N)``
    steps); each rank's loss is weighted by its share of the step's examples, so DDP's gradient
    average is the mean over all of them. A rank left without a batch in an epoch's last step
    contributes a zero-weight pass. Validation runs inside
    :func:`genrec.distributed.sharded_evaluation` and rank 0's metrics are used everywhere. Rank 0
    alone writes the checkpoints (the others wait at a barrier); on resume every rank loads
    ``last.pt`` (the directory must be shared by all machines) and its own saved RNG state; a run
    resumes only with the world size it was started with. ``on_eval`` and the per-evaluation log
    line run on rank 0 only; every rank returns the same result.
    """
    if num_batches < 1:  # else every epoch trains nothing and an untrained model is returned as trained
        raise DataFormatError(f"{name}: no training batch: the training sequences hold no transition (every "
                              f"one has fewer than 2 items)")
    nonfinite = getattr(config, "nonfinite_loss", "error")
    check_nonfinite_loss(nonfinite)
    device = next(model.parameters()).device
    precision = getattr(config, "precision", "fp32")
    check_precision(precision, str(device))
    # the forward and the loss in bf16 on CUDA (precision="bf16"); backward and the optimiser stay fp32
    amp = lambda: autocast(precision, device)  # noqa: E731 (a fresh context per use)
    world = distributed.world_size()
    main = distributed.is_main()
    steps_per_epoch = math.ceil(num_batches / world)  # N batches per optimiser step under DDP
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)  # the batch order: the same on every rank, which shard it
    if world > 1:  # each rank its own dropout masks, as one process draws new ones for each of the N batches
        torch.manual_seed(config.seed + distributed.rank())  # (the weights came from one seed, then DDP's broadcast)
    state = {"epoch": 0, "best_ndcg": -1.0, "best_epoch": 0, "bad_evals": 0, "history": [], "seconds": 0.0}
    out = Path(out_dir) if out_dir else None
    if out is not None and out.exists() and not out.is_dir():  # fail before training, not at the first save
        raise ConfigError(f"{out}: the output directory is an existing file")
    best_state = None
    unreadable: set[Path] = set()  # checkpoints that failed to load: never kept as the ".prev" copy
    if out:
        resumed = checkpoint_files.resume_checkpoint(out, name, unreadable)
        if resumed is not None:
            ckpt, path = resumed
            saved = _model_fields(_with_defaults(ckpt["config"], config))
            if saved != _model_fields(asdict(config)):
                changed = ", ".join(_config_diff(saved, _model_fields(asdict(config))))
                raise CheckpointError(f"{path}: checkpoint config differs from the requested config ({changed}); "
                                      "use another out_dir or delete it")
            # On the CPU: RNG states must stay CPU byte tensors; weights and optimizer state are
            # copied to the model's device by load_state_dict.
            saved_data = ckpt["state"].get("data_digest")  # None: a checkpoint from before the digest
            if data is not None and saved_data is not None and saved_data != data:
                raise CheckpointError(f"{path}: checkpoint of a run on other data (its training sequences, validation "
                                      f"instances or semantic IDs differ: {name}'s data digest {saved_data}, this "
                                      f"data's {data}); use another out_dir or delete it")
            saved_world = ckpt["state"].get("world_size", 1)
            if saved_world != world:
                raise CheckpointError(f"{path}: checkpoint written by a run of world_size {saved_world}, resumed with "
                                      f"world_size {world}; resume with the same number of processes "
                                      f"(torchrun --nproc_per_node) or use another out_dir")
            try:
                model.load_state_dict(ckpt["model"])
            except (CheckpointError, RuntimeError) as e:  # e.g. another catalogue or semantic-ID table
                raise CheckpointError(f"{path}: cannot resume from it: {e}; use another out_dir or delete it") from None
            opt.load_state_dict(ckpt["optimizer"])
            rng.bit_generator.state = ckpt["numpy_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            if ckpt.get("cuda_rng") is not None and device.type == "cuda":
                saved = ckpt["cuda_rng"]  # the model GPU's state (a list of every GPU's: older checkpoints)
                if isinstance(saved, (list, tuple)):
                    saved = saved[device.index or 0] if len(saved) > (device.index or 0) else None
                if saved is not None:
                    torch.cuda.set_rng_state(saved, device)
                else:  # resumed on a machine with fewer GPUs: a fresh stream, not a crash
                    log.warning("%s: no saved CUDA random state for %s; the resumed run draws fresh ones", path, device)
            if world > 1:  # each rank's own random streams (dropout, sampled negatives) at the checkpoint
                distributed.set_rank_rng_state(ckpt["rank_rng"][distributed.rank()], device)
            state = ckpt["state"]
            best_state = checkpoint_files.best_weights(out, state, ckpt["model"], device, name, unreadable)
            log.info("resumed %s from %s at epoch %d", name, path, state["epoch"])
    if data is not None:
        state["data_digest"] = data  # saved in every checkpoint's state

    max_minutes = getattr(config, "max_minutes", None)
    min_delta = getattr(config, "min_delta", 0.0)
    state.setdefault("step", state["epoch"] * steps_per_epoch)  # checkpoints from before the schedule existed
    state.setdefault("skipped_steps", 0)
    if world > 1:
        state["world_size"] = world
    # torch's LambdaLR with genrec's factor; positioned from the step count, so resume is exact
    for group in opt.param_groups:
        group.setdefault("initial_lr", config.lr)
    # the cosine horizon is fixed when the run starts: a run resumed with a larger max_epochs (allowed)
    # would otherwise restart its decay half way (the lr jumping from its floor back up); a
    # schedule_epochs given on the resume is the caller's choice and replaces it
    explicit = getattr(config, "schedule_epochs", None)
    if explicit is not None:
        state["schedule_epochs"] = explicit
    elif state.setdefault("schedule_epochs", config.max_epochs) != config.max_epochs and \
            getattr(config, "lr_schedule", "") == "cosine":
        log.warning("%s: resumed with max_epochs %d; the cosine schedule keeps the horizon of %d epochs it started "
                    "with (epochs past it run at final_lr_ratio x lr); give schedule_epochs to set another",
                    name, config.max_epochs, state["schedule_epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_factor(config, steps_per_epoch, schedule_epochs=state["schedule_epochs"]), last_epoch=state["step"] - 1)
    # DDP calls loss_fn through its own forward, so the gradients of every step are all-reduced
    step_loss = distributed.ddp_loss_step(model, loss_fn, device) if world > 1 else None
    distributed.barrier()  # every rank has read its checkpoints before rank 0 may replace them
    if out and main and out / "best.pt" in unreadable and best_state is not None:
        # best.pt does not hold the resumed best epoch (a later epoch written just before a kill, or a
        # damaged file): it gets the best weights now, so that every later improvement rotates a
        # confirmed best.pt to best.prev.pt and two more kills still find the best epoch
        checkpoint_files.save_keeping_previous(out / "best.pt", {"model": best_state, "config": asdict(config),
                                                 "epoch": state["best_epoch"], **(checkpoint_extra or {})}, unreadable)

    def out_of_time() -> bool:
        return max_minutes is not None and state["seconds"] >= 60 * max_minutes

    def add_time(seconds: float) -> None:
        state["seconds"] += seconds
        if world > 1:  # rank 0's clock everywhere: every rank must stop at the same epoch, or DDP hangs
            state["seconds"] = distributed.broadcast_object(state["seconds"])

    norm_buffers = _norm_buffers(model) if nonfinite == "skip" else []
    while state["epoch"] < config.max_epochs and state["bad_evals"] < config.patience and not out_of_time():
        t0 = time.perf_counter()
        model.train()
        total, count, steps, skipped = 0.0, 0, 0, 0
        # disable=None: progress bars on a terminal only, never in log files
        epoch_batches = batches(rng) if world == 1 else distributed.rank_batches(batches(rng), world, distributed.rank())
        for batch in tqdm(epoch_batches, total=steps_per_epoch, disable=None if progress and main else True,
                          desc=f"{name} epoch {state['epoch'] + 1}", leave=False):
            late = max_minutes is not None and state["seconds"] + time.perf_counter() - t0 >= 60 * max_minutes
            if world > 1 and max_minutes is not None:  # every rank stops at the same step, or DDP hangs
                late = distributed.all_reduce_sum([float(late)], distributed.reduce_device(device))[0] > 0
            if late:
                break  # out of time: the epoch ends early (and is evaluated and saved as usual)
            step = state["step"]
            norm_stats = [(b, b.clone()) for b in norm_buffers]  # restored if this step is skipped
            if step_loss is None:
                with amp():
                    loss, n = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                value = loss.item()  # checked before the update, so a NaN never reaches the weights
            else:
                opt.zero_grad(set_to_none=True)
                value, n = step_loss(*batch, amp)  # the all-ranks mean loss and example count
            state["step"] = step + 1
            steps += 1
            if not math.isfinite(value):
                if nonfinite == "error":
                    raise TrainingDivergedError(
                        f"{name} training diverged: the loss is {value} at epoch {state['epoch'] + 1}, step "
                        f"{steps} of {steps_per_epoch} (optimiser step {step + 1}); {_last_loss(state)}. "
                        f"{_divergence_advice(config)}")
                skipped += 1
                for buffer, before in norm_stats:  # the forward of a skipped step must leave no trace
                    buffer.copy_(before)
                with warnings.catch_warnings():  # "scheduler stepped before the optimizer": on purpose here
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()  # the step still counts for the schedule
                continue
            opt.step()
            scheduler.step()
            state["last_loss"] = value
            total += value * n
            count += n
        if skipped:
            state["skipped_steps"] += skipped
            log.warning("%s epoch %d: skipped %d of %d steps with a non-finite loss (nonfinite_loss='skip'; "
                        "%d in all)", name, state["epoch"] + 1, skipped, steps, state["skipped_steps"])
            if skipped == steps:
                raise TrainingDivergedError(
                    f"{name} training diverged: the loss was NaN or infinite at every one of the {steps} steps of "
                    f"epoch {state['epoch'] + 1} (all skipped, nonfinite_loss='skip'); {_last_loss(state)}. "
                    f"{_divergence_advice(config, skipping=True)}")
        if steps > skipped and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # an update from a finite loss (an infinite gradient, say) made a weight NaN: the next step's
            # loss would say so, but after the epoch's last step the ruined model would be validated
            # (every target a miss: NDCG 0, a finite number), saved and maybe kept as the best model
            raise TrainingDivergedError(
                f"{name} training diverged: a weight is NaN or infinite after the last update of epoch "
                f"{state['epoch'] + 1} (optimiser step {state['step']}); {_last_loss(state)}. "
                f"{_divergence_advice(config, skipping=True)}")
        state["epoch"] += 1
        last = state["epoch"] >= config.max_epochs
        if state["epoch"] % config.eval_every and not last:
            add_time(time.perf_counter() - t0)
            t0 = time.perf_counter()  # counted: out of time, the evaluation below adds its own time only
            if not out_of_time():
                continue
        trim_heap()  # between the training batches' and the evaluation's many tensor shapes
        with distributed.sharded_evaluation(), amp():
            metrics = evaluate_fn(model)
        trim_heap()
        # rank 0's numbers everywhere: the early-stopping decisions must agree on every rank
        metrics = distributed.broadcast_object(metrics)
        add_time(time.perf_counter() - t0)
        # an epoch cut by max_minutes before its first step trained nothing: no loss, not 0
        row = {"epoch": state["epoch"], "train_loss": total / count if count else math.nan,
               "minutes": state["seconds"] / 60,
               **metrics}
        if nonfinite == "skip":
            row["skipped_steps"] = state["skipped_steps"]
        state["history"].append(row)
        ndcg = metrics["ndcg@10"]
        finite = math.isfinite(ndcg)  # NaN compares False but inf would win: neither is a model to keep
        if not finite:
            log.warning("%s epoch %d: validation ndcg@10 is %s; not an improvement (no best.pt from this epoch)",
                        name, state["epoch"], ndcg)
        improved = finite and ndcg > state["best_ndcg"]
        if improved:  # the best checkpoint follows any improvement ...
            state.update(best_ndcg=ndcg, best_epoch=state["epoch"])
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        # ... but only a relative gain of min_delta over the last reference resets the patience, so
        # a plateau that creeps up by noise-sized steps still ends
        if finite and ndcg > state.get("ref_ndcg", -1.0) * (1 + min_delta):
            state.update(ref_ndcg=ndcg, bad_evals=0)
        else:
            state["bad_evals"] += 1
        if main:  # one line per evaluation, not one per rank
            log.info("%s epoch %d loss %.4f valid N@10 %.4f R@10 %.4f (%.1f min)%s", name, state["epoch"],
                     row["train_loss"], ndcg, metrics["recall@10"], row["minutes"], " *" if improved else "")
        if on_eval and main:  # callbacks write progress files: rank 0's only
            on_eval(row)
        rank_rng = distributed.all_gather_object(distributed.rank_rng_state(device)) if out and world > 1 else None
        if out and main:
            extra = checkpoint_extra or {}
            if improved:
                checkpoint_files.save_keeping_previous(out / "best.pt", {"model": best_state, "config": asdict(config),
                                                         "epoch": state["epoch"], **extra}, unreadable)
            checkpoint_files.save_keeping_previous(out / "last.pt", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "state": state, "config": asdict(config), **extra,
                **({"rank_rng": rank_rng} if world > 1 else {})}, unreadable)
            save_json(out / "history.json", state["history"])
        if out:
            distributed.barrier()  # rank 0's checkpoint is complete before any rank can stop or be killed
    if out and main:
        # once more: a run killed between its last checkpoint and this file resumes with no epoch
        # left to run, and must not keep a history one evaluation short
        save_json(out / "history.json", state["history"])
    distributed.barrier()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    return TrainResult(model=model, best_epoch=state["best_epoch"], best_valid=best, history=state["history"],
                       skipped_steps=state["skipped_steps"])


def trim_heap() -> None:
    """Give the C heap's free memory back to the operating system (glibc's ``malloc_trim``; a no-op
    where there is none). Training and evaluation batches come in many shapes, and glibc keeps what
    they freed in fragments it cannot reuse for the next shapes: on Beauty the generative model's
    resident memory grew by ~0.6 GiB per epoch with validation (10 GiB after 36 epochs) without this,
    and returns to ~0.5 GiB after each evaluation with it."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):  # not glibc (macOS, musl, Windows)
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _last_loss(state: dict) -> str:
    last = state.get("last_loss")
    return "no finite loss yet" if last is None else f"the last finite loss was {last:.6g}"


def _norm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The batch-norm running statistics: a training-mode forward updates them, and one over NaN
    features would leave them NaN for every later evaluation."""
    return [b for name, b in model.named_buffers()
            if name.rpartition(".")[2] in ("running_mean", "running_var", "num_batches_tracked")]


def _divergence_advice(config: Any, skipping: bool = False) -> str:
    advice = f"Try a lower learning rate (lr is {config.lr:g}, in a new out_dir)"
    if not skipping:
        advice += ", or nonfinite_loss='skip' to leave such steps out"
    return advice + "."


def lr_schedule(config: Any, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each optimiser step (0-based) for ``config``'s ``lr``, ``lr_schedule``,
    ``warmup_epochs``, ``schedule_epochs`` and ``final_lr_ratio`` (see :func:`fit`)."""
    factor = lr_factor(config, steps_per_epoch)
    return lambda step: config.lr * factor(step)


def lr_factor(config: Any, steps_per_epoch: int, schedule_epochs: int | None = None) -> Callable[[int], float]:
    """The multiplier of ``config.lr`` at each optimiser step (0-based): constant, or a cosine decay
    from step 0 to ``final_lr_ratio`` over ``schedule_epochs`` (the argument, else the config's, else
    ``max_epochs``), times a linear warm-up over the first ``warmup_epochs`` (the two overlap: the
    decay has begun when the warm-up ends); :func:`fit` hands it to ``torch.optim.lr_scheduler.LambdaLR``."""
    kind = getattr(config, "lr_schedule", "constant")
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    warmup = max(0.0, float(getattr(config, "warmup_epochs", 0.0) or 0.0)) * steps_per_epoch
    horizon = max(1, (schedule_epochs or getattr(config, "schedule_epochs", None) or config.max_epochs) * steps_per_epoch)
    final = float(getattr(config, "final_lr_ratio", 0.0) or 0.0)

    def factor_at(step: int) -> float:
        factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if kind == "cosine":
            factor *= final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon)))
        return factor

    return factor_at


def setup(config: Any) -> None:
    """Threads, flush-denormal and the torch seed, before a model is built; under ``torchrun``
    also joins the process group (:func:`genrec.distributed.init_from_env`), which pins each rank
    to its own GPU; the backend follows the config's device (nccl for CUDA, gloo for a CPU model even
    on a GPU machine: nccl cannot reduce CPU tensors). The first model a process trains sets it: the
    models of one distributed run share a device kind (the recipe's ``device`` key)."""
    distributed.init_from_env("nccl" if resolve_device(getattr(config, "device", "cpu")).type == "cuda" else "gloo")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.set_flush_denormal(True)  # denormals make CPU matmuls crawl late in training
    torch.manual_seed(config.seed)
