"""Where tensors live and in which precision the st-networks compute: resolved once per run.

A run names its device with one setting (``train.device``):

* ``auto``: ``cuda`` when ``torch.cuda.is_available()``, else the CPU;
* ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``.

Under ``torchrun`` with CUDA every rank uses ``cuda:<LOCAL_RANK>`` (one GPU per process), whatever
index was configured; on the CPU all ranks use the CPU.

Precision (``train.precision``): ``fp32``, or ``bf16``, where the st-network convolutions run under
``torch.autocast(dtype=torch.bfloat16)`` while the coupling's scale/shift, the log-det and the NLL stay
in float32 (:class:`multiflow.flow.transforms.AffineCoupling` casts the st-network output back to
the dtype of its input before the soft clamp). Where bf16 is not supported (a CUDA device without
bf16, a CPU without oneDNN bf16 kernels) :func:`resolve_precision` falls back to ``fp32`` and prints
one line saying so. ``auto`` (the default of ``train.precision``) is ``bf16`` where the device
computes bf16 natively (:func:`native_bf16`: CUDA with bf16 support; a CPU with AVX-512 BF16 or
AMX), ``fp32`` elsewhere. bf16 is a training-step setting: everything scored after training
(the threshold's calibration maps, ``test``, ``predict``, ``serve``, the ONNX graph) computes in
fp32 unless asked otherwise, so they agree with each other whatever the model was trained in.

This module sits at the bottom of the package: it imports nothing from multiflow but the errors.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

from multiflow.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
#: /proc/cpuinfo flags of CPUs that compute bf16 natively (AVX-512 BF16 dot products, AMX tiles)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_noticed: set[str] = set()  # devices whose bf16 fallback was already reported (one line per process)


def resolve_device(spec: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` a run uses.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a device).
        local_rank: this process's rank on its node under ``torchrun`` (default: ``$LOCAL_RANK``
            when ``$WORLD_SIZE`` > 1); with CUDA it picks ``cuda:<local_rank>``.

    Raises:
        ConfigError: an unknown spec, CUDA requested but unavailable, or an index past the last GPU.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text != "cuda" and not text.startswith("cuda:"):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    index: int | None = None
    if text.startswith("cuda:"):
        try:
            index = int(text[5:])
        except ValueError:
            raise ConfigError(f"device {spec!r}: the CUDA index must be an integer") from None
        if index < 0:
            raise ConfigError(f"device {spec!r}: the CUDA index must be >= 0")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device=cpu or auto"
        )
    if local_rank is None and env_int("WORLD_SIZE", 1) > 1:
        local_rank = env_int("LOCAL_RANK", 0)
    if local_rank is not None:
        index = int(local_rank)
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(f"device cuda:{index} requested but only {count} CUDA device(s) are visible")
    return torch.device("cuda", index if index is not None else torch.cuda.current_device())


def env_int(name: str, default: int) -> int:
    """Integer environment variable ``name`` (``default`` when unset or empty)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast convolutions are supported (and fast) on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (or of the given text); empty where it cannot be
    read (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(device: torch.device, *, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` computes bf16 natively, so bf16 is faster than fp32 there: CUDA with
    ``torch.cuda.is_bf16_supported()``; a CPU with AVX-512 BF16 or AMX-BF16 (``/proc/cpuinfo``
    flags :data:`NATIVE_BF16_CPU_FLAGS`) whose oneDNN has bf16 kernels. A CPU that only emulates
    bf16 (AVX-512 without BF16, AVX2) is not native: bf16 is slower than fp32 there."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported())
        except (RuntimeError, AssertionError):  # the driver cannot be asked: assume not
            return False
    if device.type == "cpu":
        return bool(set(NATIVE_BF16_CPU_FLAGS) & cpu_flags(cpuinfo)) and bf16_supported(device)
    return False


def resolve_precision(precision: str, device: torch.device, *, notice: bool = True) -> str:
    """``precision`` if ``device`` supports it, else ``"fp32"`` (with a one-line notice on stderr).
    ``"auto"``: ``"bf16"`` where the device computes it natively (:func:`native_bf16`), else
    ``"fp32"`` (silently)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        if notice and str(device) not in _noticed:
            _noticed.add(str(device))
            print(f"multiflow: bf16 is not supported on {device}; computing in fp32", file=sys.stderr, flush=True)
        return "fp32"
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision == "bf16"``, else nothing.

    Only eligible ops (convolutions, matmuls) run in bf16; the flow keeps its coupling
    arithmetic in the dtype of its input (float32).
    """
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a whole batch at once (pinned, non-blocking when the target is CUDA)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
