"""Per-stage wall-clock times of inference: where an object's latency goes.

The stages of scoring an object (:data:`STAGES`): ``decode`` (read + decode + resize the image
files, in worker threads), ``masks`` (foreground masks), ``backbone`` (features), ``flow`` (the
normalizing flow's NLL), ``scoring`` (maps -> view and sample scores, decision, upsampled maps),
``faults`` (the camera-fault check) and ``write`` (the per-object outputs). On a CUDA device the
device is synchronised at the edges of a stage, so asynchronous kernels are charged to the stage
that launched them.

``decode`` runs in worker threads while the main thread scores the previous batch: its seconds
are the workers' (summed over threads); ``decode_wait`` is the time the main thread waited for
decoded images, the part of decoding that was not hidden behind the other stages. Likewise
``write`` may run in a writer thread (``multiflow predict`` with decoding workers): ``write_wait``
is then the main thread's wait for it; written inline, ``write_wait`` stays 0 and all of
``write`` is on the main thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

STAGES = ("decode", "masks", "backbone", "flow", "scoring", "faults", "write")


class StageTimes:
    """Seconds spent per stage (thread-safe :meth:`add`; :meth:`stage` times a block)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds: dict[str, float] = dict.fromkeys((*STAGES, "decode_wait", "write_wait"), 0.0)
        self._lock = threading.Lock()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, name: str, seconds: float) -> None:
        if name not in self.seconds:
            raise KeyError(f"unknown stage {name!r}; stages are {list(self.seconds)}")
        with self._lock:
            self.seconds[name] += float(seconds)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (device synchronised before and after on CUDA)."""
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.add(name, time.perf_counter() - t0)

    def reset(self) -> None:
        with self._lock:
            for k in self.seconds:
                self.seconds[k] = 0.0

    def report(self, objects: int, wall_s: float) -> dict[str, Any]:
        """``{"objects", "wall_s", "objects_per_s", "stages_s", "ms_per_object", "dominant"}``:
        ``dominant`` is the stage with the most time on the main thread (``decode`` counts with its
        wait only, as the rest ran in parallel; ``write`` too when it ran in a thread)."""
        n = max(int(objects), 1)
        secs = dict(self.seconds)
        critical = {k: secs[k] for k in STAGES if k != "decode"}
        critical["decode"] = secs["decode_wait"]
        if secs["write_wait"] > 0:
            critical["write"] = secs["write_wait"]
        return {
            "objects": int(objects),
            "wall_s": round(float(wall_s), 4),
            "objects_per_s": round(objects / wall_s, 3) if wall_s > 0 else None,
            "stages_s": {k: round(v, 4) for k, v in secs.items()},
            "ms_per_object": {k: round(1e3 * v / n, 2) for k, v in secs.items()},
            "dominant": max(critical, key=critical.get) if objects else None,
        }


def format_report(rep: dict[str, Any]) -> str:
    """One line: objects/s and the per-object milliseconds per stage."""
    per = rep["ms_per_object"]
    stages = ", ".join(f"{k} {per[k]:.1f}" for k in STAGES)
    rate = "-" if rep["objects_per_s"] is None else f"{rep['objects_per_s']:.2f}"
    return (f"{rep['objects']} objects in {rep['wall_s']:.2f} s: {rate} objects/s; ms/object: {stages} "
            f"(main thread waited {per['decode_wait']:.1f} for decoding, {per['write_wait']:.1f} for writing)")
