"""Distributed data parallel helpers: genrec's trainers run under ``torchrun`` (torch.distributed,
env:// rendezvous) and fall back to one process when no process group is running.

Under ``torchrun --nproc_per_node N``, :func:`genrec.training.setup` calls :func:`init_from_env`
(gloo on the CPU, nccl with CUDA; each process on ``cuda:LOCAL_RANK``), and
:func:`genrec.training.fit` then shards the training batches and the validation instances across
the ranks. Every helper here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from genrec.errors import ConfigError

log = logging.getLogger(__name__)

# True only inside sharded_evaluation() while a process group runs: the evaluators then score
# their rank's rows and gather the rest (see evaluation_rows / gather_rows).
_SHARDING = {"active": False}


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes training together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (the one that writes checkpoints and logs), and in a single process."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


# How long a rank waits in a collective: the recipe's other ranks wait while rank 0 alone runs a stage
# that does not train (embedding a large catalogue, the fusion, the analyses), which can take longer
# than torch's 30-minute default. A failing rank ends the others through torchrun, not this timeout.
TIMEOUT_ENV = "GENREC_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 360.0


def collective_timeout() -> datetime.timedelta:
    """The process group's timeout: ``$GENREC_DIST_TIMEOUT_MIN`` minutes (default 360)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return datetime.timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = float("nan")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={raw!r} must be a number of minutes > 0")
    return datetime.timedelta(minutes=minutes)


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` /
    ``MASTER_ADDR`` / ``MASTER_PORT`` (env:// rendezvous) unless one already runs; True when the run is
    distributed. ``backend``: None picks nccl when CUDA is available, else gloo. With CUDA each
    process is pinned to ``cuda:LOCAL_RANK``, so a model placed on ``"cuda"`` lands on its own GPU.
    Collectives wait up to :func:`collective_timeout` (``$GENREC_DIST_TIMEOUT_MIN``, default 6 h)."""
    if is_distributed():
        return True
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or "RANK" not in os.environ:
        return False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} asks for distributed training but {' and '.join(missing)} "
                          "is not set; launch with torchrun (which sets them) or set them yourself")
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size} asks for distributed training, but this torch build has no "
                          "torch.distributed")
    timeout = collective_timeout()  # a bad value is named before any rendezvous
    cuda = torch.cuda.is_available()
    if cuda:  # before the process group: nccl binds each rank to its current device
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), init_method="env://", timeout=timeout)
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    return is_distributed()


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """The element-wise sum of ``values`` over all ranks (float64; ``device``: one the backend
    serves, the model's under nccl)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)  # [len(values)]
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def sharded_evaluation() -> Iterator[None]:
    """Within this block (every rank enters it together) the evaluators that support sharding
    (``genrec.sasrec.evaluate``, ``genrec.generative.evaluate``, ``fusion.joint.evaluate_joint``)
    score only their rank's instances and gather the per-instance results, so the metrics are
    computed once over all instances and equal the single-process ones up to float rounding (a rank's
    batches hold other rows, and a score can move by ~1e-6 with the batch's padding). Outside it they score
    everything on each rank: an evaluator called by one rank alone never waits for the others."""
    before = _SHARDING["active"]
    _SHARDING["active"] = is_distributed()
    try:
        yield
    finally:
        _SHARDING["active"] = before


def evaluation_rows(n: int) -> np.ndarray:
    """The instance rows ``[m]`` this rank evaluates: every ``world_size``-th from its rank inside
    :func:`sharded_evaluation`, else all ``n``."""
    if not (_SHARDING["active"] and is_distributed()):
        return np.arange(n)
    return np.arange(rank(), n, world_size())


def shard_instances(instances: Any) -> Any:
    """``instances.subset(evaluation_rows(len(instances)))`` when sharding, else ``instances``
    itself (no copy): anything with ``__len__`` and ``subset(rows)``, e.g. :class:`genrec.splits.Instances`."""
    rows = evaluation_rows(len(instances))
    return instances if len(rows) == len(instances) else instances.subset(rows)


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
    """The full ``[n, ...]`` array from each rank's ``local`` values ``[m, ...]`` for its
    :func:`evaluation_rows`; ``local`` itself when not sharding."""
    if not (_SHARDING["active"] and is_distributed()):
        return local
    parts = all_gather_object(np.ascontiguousarray(local))
    out = np.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[np.arange(r, n, world_size())] = part
    return out


__all__ = ["is_distributed", "rank", "world_size", "local_rank", "is_main", "barrier", "init_from_env", "collective_timeout",
           "all_reduce_sum", "all_gather_object", "broadcast_object", "sharded_evaluation", "evaluation_rows",
           "shard_instances", "gather_rows"]


# ----------------------------------------------------------------------------------------------
# One training step under DistributedDataParallel (used by genrec.training.fit)


def rank_batches(epoch: Iterable[Any], world: int, rank: int) -> Iterable[tuple[Any, bool]]:
    """``(batch, own)`` per optimiser step: this rank's batch of each group of ``world`` consecutive
    batches. Every rank runs through the whole epoch, so the seeded generator stays in step on all
    of them. When the last group is short, a rank without a batch gets the group's first one with
    ``own=False`` (a zero-weight pass: DDP needs every rank in every all-reduce)."""
    group: list[Any] = []
    for batch in epoch:
        group.append(batch)
        if len(group) == world:
            yield group[rank], True
            group = []
    if group:
        yield (group[rank], True) if rank < len(group) else (group[0], False)


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, so that DDP can wrap it."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self.loss_fn(self.model, batch)


def ddp_loss_step(model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
              device: torch.device) -> Callable[[Any, bool, Callable[[], Any]], tuple[float, int]]:
    """One DDP forward + backward on this rank's batch; returns the all-ranks mean loss and example
    count (a non-finite mean when any rank's loss is: every rank then skips or stops together)."""
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: some models leave parameters out of a loss (a joint model's single
    # tower, an unused repeat head); DDP would otherwise wait for their gradients forever
    module = _LossModule(model, loss_fn)
    # constant buffers, the same on every rank (a content-aware SASRec's item text, [items, dim]), are
    # not re-sent from rank 0 before every forward as DDP does with buffers (BatchNorm statistics still are)
    constant = [name for name, _ in module.named_buffers() if name.rpartition(".")[2] == "item_text"]
    if constant and hasattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model"):
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, constant)
    ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=True)
    world = world_size()
    reduce_on = reduce_device(device)

    def step(batch: Any, own: bool, amp: Callable[[], Any]) -> tuple[float, int]:
        with amp():  # the forward under autocast; the backward below outside it, as torch advises
            loss, n = ddp(batch)
        n = int(n) if own else 0
        value = loss.item()
        bad = 0.0 if math.isfinite(value) else 1.0  # also for a zero-weight pass: 0 * NaN is NaN
        total_n, weighted, bad_ranks = all_reduce_sum([n, value * n if not bad else 0.0, bad], reduce_on)
        # DDP averages the gradients over the ranks: weighting rank r's mean loss by
        # n_r * world / total makes the average the gradient of the mean over all examples
        (loss * (n * world / max(total_n, 1.0))).backward()
        mean = math.nan if bad_ranks else weighted / max(total_n, 1.0)
        return mean, int(total_n)

    return step


def reduce_device(device: torch.device) -> torch.device:
    """Where to put tensors for a collective: nccl reduces CUDA tensors only, gloo CPU ones."""
    # nccl reduces CUDA tensors only; gloo CPU ones
    return device if device.type == "cuda" and is_distributed() and \
        dist.get_backend() == "nccl" else torch.device("cpu")


def rank_rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's torch random states (CPU, and its CUDA device), for a DDP checkpoint."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rank_rng_state(saved: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rank_rng_state` saved."""
    torch.set_rng_state(saved["torch"])
    if saved.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], device)
