"""Results folders of resumable benchmarks: one set of settings per folder, and where a cell's
training state goes while it trains."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from multiflow._atomic import write_json


def check_settings(out: Path, settings: dict[str, Any], *, defaults: dict[str, Any] | None = None) -> None:
    """Finished cells are reused by path, so a results folder holds one set of training and data
    settings: the first run writes ``settings`` to ``<out>/settings.json``; a later run with other
    settings (epochs, patience, lr, image size, ...) is a ConfigError instead of a silent mix.
    ``defaults``: values of keys that folders written before the key existed lack."""
    from multiflow.errors import ConfigError

    path = out / "settings.json"
    mine = dict(settings)
    if not path.is_file():
        write_json(path, mine)
        return
    try:
        theirs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable settings of earlier cells ({exc})") from exc
    for key, value in (defaults or {}).items():
        theirs.setdefault(key, value)
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ConfigError(f"{path}: the finished cells here were computed with other settings ("
                          + ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in diff)
                          + "); use another --out")


def state_root(out: Path, name: str) -> Path:
    """Where a cell's training state goes while it trains (deleted after the cell):
    ``/dev/shm/<name>-<pid>`` when the machine has a writable tmpfs, else ``<out>/tmp``.

    train_flow writes the resume state (~0.5 GB for the paper's flow) at its end and the best weights
    (~0.16 GB) whenever the held-out loss improves, and a cell never resumes from them (the cell is the
    unit of resumption; no interval checkpoints: ``train.checkpoint_minutes=0``). Folders of this
    ``name`` left behind by killed runs (their pid is gone) are deleted to free the memory."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return out / "tmp"
    import shutil

    for stale in shm.glob(f"{name}-*"):  # left behind by a killed run: free the memory
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    return shm / f"{name}-{os.getpid()}"
