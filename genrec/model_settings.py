"""The settings every model config shares, checked where the configs are built: ranges of the
training settings, the device, the precision (bf16 autocast on CUDA) and the non-finite-loss policy;
and the autocast context the models run their forward passes in."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from typing import Any

import torch

from genrec.errors import ConfigError

#: values of the configs' ``nonfinite_loss``: stop with :class:`TrainingDivergedError`, or skip the step
NONFINITE_LOSS = ("error", "skip")

#: values of the configs' ``precision``: float32 everywhere, or bfloat16 autocast on CUDA
PRECISIONS = ("fp32", "bf16")

LR_SCHEDULES = ("constant", "cosine")


def check_nonfinite_loss(value: str) -> None:
    """ConfigError unless ``value`` is a valid ``nonfinite_loss`` (the configs check it when built)."""
    if value not in NONFINITE_LOSS:
        raise ConfigError(f"nonfinite_loss must be one of {list(NONFINITE_LOSS)}, got {value!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``
    (a name it does not know is a :class:`~genrec.errors.ConfigError`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1' or 'auto')") from None


def usable_device(name: str) -> torch.device:
    """:func:`resolve_device`, checked against this machine: a CUDA device that torch cannot see (no GPU,
    a CPU-only torch, an index beyond the GPUs) is a :class:`~genrec.errors.ConfigError` naming it, where
    torch would raise an AssertionError or RuntimeError from deep inside the first model move."""
    device = resolve_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                              "use 'cpu' or 'auto'")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            raise ConfigError(f"device {name!r} is not usable here ({str(e).splitlines()[0]})") from None
    return device


#: integer settings of the model configs that must be >= 1 where a config has them
_POSITIVE_INTS = ("max_len", "max_items", "hidden", "d_model", "d_ff", "d_kv", "num_blocks", "num_heads",
                  "num_encoder_layers", "num_decoder_layers", "batch_size", "max_epochs", "patience", "eval_every",
                  "eval_beam", "eval_batch_size", "eval_users", "schedule_epochs", "gate_hidden",
                  "catalogue_max_items")


def check_training_config(config: Any) -> None:
    """ConfigError naming the setting unless ``config``'s training and shape settings (those it has
    among :data:`_POSITIVE_INTS`, ``lr``, ``dropout``, ``max_minutes``, the schedule's, and ``hidden``
    divisible by ``num_heads``) are in range, and its ``nonfinite_loss`` / ``device`` / ``precision``
    valid: every model config calls it when built, so ``genrec sasrec --set hidden=0`` fails at once
    with the key named, as the recipe's checks do, not with a traceback from inside the model."""
    for f in dataclasses.fields(config) if dataclasses.is_dataclass(config) else ():
        value = getattr(config, f.name)  # NumPy numbers as plain ones: checkpoints store the config
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # a NumPy scalar
            setattr(config, f.name, value.item())

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"config key {key!r} {what}, got {getattr(config, key)!r}")

    for key in _POSITIVE_INTS:
        value = getattr(config, key, 1)
        if value is None and key in ("eval_users", "schedule_epochs"):  # None: all users / max_epochs
            continue
        need(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1, key,
             "must be an integer >= 1")
    threads = getattr(config, "num_threads", None)  # None: torch's choice; 0 was ignored, -1 a traceback
    need(threads is None or (isinstance(threads, numbers.Integral) and not isinstance(threads, bool) and threads >= 1),
         "num_threads", "must be an integer >= 1 (or null: torch's choice)")
    need(isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0, "lr", "must be > 0")
    seed = getattr(config, "seed", 0)  # NumPy's generators take no negative seed (a ValueError in training)
    need(isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0, "seed",
         "must be an integer >= 0")
    for key in ("weight_decay", "warmup_epochs", "min_delta"):
        value = getattr(config, key, 0.0)
        need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, key, "must be >= 0")
    for key in ("dropout", "head_dropout"):
        value = getattr(config, key, 0.0)
        need(isinstance(value, (int, float)) and 0 <= value < 1, key, "must be in [0, 1)")
    ratio = getattr(config, "final_lr_ratio", 0.0)  # 1: a cosine schedule that stays at lr
    need(isinstance(ratio, (int, float)) and 0 <= ratio <= 1, "final_lr_ratio", "must be in [0, 1]")
    minutes = config.max_minutes
    need(minutes is None or (isinstance(minutes, (int, float)) and minutes > 0), "max_minutes",
         "must be > 0 or null")  # null: no limit
    need(getattr(config, "lr_schedule", "constant") in LR_SCHEDULES, "lr_schedule",
         f"must be one of {list(LR_SCHEDULES)}")
    if hasattr(config, "hidden"):  # (TIGER's T5 attention is num_heads x d_kv wide, whatever d_model)
        need(config.hidden % config.num_heads == 0, "hidden", f"must be divisible by num_heads ({config.num_heads})")
    check_nonfinite_loss(config.nonfinite_loss)
    resolve_device(config.device)  # a ConfigError naming the device now, not at training time
    check_precision(config.precision, config.device)


#: the device types bf16 autocasts on (CUDA; the tests add the CPU to exercise the bf16 code paths)
AUTOCAST_DEVICES = ("cuda",)


def check_precision(precision: str, device: str, key: str = "precision") -> None:
    """ConfigError (naming ``key``) unless ``precision`` is one of :data:`PRECISIONS` and, for
    ``"bf16"``, ``device`` (a config's device name, ``"auto"`` included) is a CUDA device.

    bf16 is refused on the CPU rather than run with CPU autocast: without bf16 matrix units CPU
    autocast is slower than fp32 and still changes the results, so it would buy nothing."""
    if precision not in PRECISIONS:
        raise ConfigError(f"config key {key!r} must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
        if kind not in AUTOCAST_DEVICES:
            raise ConfigError(f"config key {key!r} is 'bf16' (bfloat16 autocast) but the device is {device!r}"
                              f"{' (no CUDA here)' if device == 'auto' else ''}: bf16 runs on CUDA only; set "
                              f"{key}: fp32 or a CUDA device")


def saved_config(values: Any) -> Any:
    """A saved config's values (nested mappings included) ready to rebuild it on any machine:
    ``device: "auto"`` with ``precision: "bf16"`` trained on CUDA, the only device bf16 runs on, so it
    reads as ``"cuda"``; rebuilt as saved it would be refused where no GPU is (the loaders choose the
    device they load onto, and off CUDA such a model evaluates in fp32, see :func:`autocast`); a
    ``num_threads`` of 0 (ignored by the runs that saved it, refused since) reads as None."""
    if not isinstance(values, dict):
        return values
    out = {k: saved_config(v) for k, v in values.items()}
    if out.get("device") == "auto" and out.get("precision") == "bf16":
        out["device"] = "cuda"
    if out.get("num_threads") == 0 and not isinstance(out["num_threads"], bool):  # saved before 0 was refused:
        out["num_threads"] = None  # it meant torch's choice, as None does
    return out


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context that runs a forward pass at ``precision`` on ``device``: bfloat16 autocast for
    ``"bf16"`` on a CUDA device, else nothing (float32). A bf16 model loaded on the CPU thus
    evaluates in fp32 instead of failing."""
    kind = torch.device(device).type
    if precision == "bf16" and kind in AUTOCAST_DEVICES:
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_precision(model: Any) -> str:
    """The ``precision`` of a model's config (``"fp32"`` for a model without one; a DDP or fusion
    wrapper is looked through via its ``module`` / ``config`` attributes)."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "precision", "fp32")
