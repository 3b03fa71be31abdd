"""Streaming inference for a line: ``multiflow predict --watch DIR``.

Objects are scored as their last view arrives, and each result is appended to a JSON-lines file.

Layout: one folder per object, as a sample folder of the folder format (``docs/data-format.md``)::

    DIR/
    ├── 0001/            # the object id (the folder's name)
    │   ├── C1.png       # one file per view: <view name>.<ext>, ext one of IMAGE_EXTENSIONS
    │   ├── ...
    │   └── C5.png
    └── 0002/...

Names starting with ``.`` are ignored (files and folders), so a camera may write ``.C1.png.part``
and rename it when done; other files in an object folder are ignored too. An object is *ready*
when each of the model's views has exactly one file and every file has *settled*: its size and
modification time are the same as at the previous scan and it was last modified at least
``settle`` seconds ago (a file still being written changes or is too recent, so a half-written
image is never read). Objects are scored in the order they became ready (then by id), several at
once when several are ready (:meth:`multiflow.engine.predict.Predictor.predict_batch`); an object
whose views never all arrive is never scored (the folder format's rule: every camera).

Output: one line per object, the decision JSON (``docs/deployment.md``), or
``{"sample_id", "decision": null, "skipped": reason}`` for an object that cannot be scored (an
unreadable file, two files for one view, views the model refuses). Each line is written with one
``write`` and ``fsync``-ed before the next object is looked at, so a line in the file is whole.

Stopping: :func:`watch_folder` returns when ``stop`` is set (``multiflow predict --watch`` sets it
on SIGINT / Ctrl-C and on SIGTERM); the batch being scored is finished and written first.
Resuming: the ids already in the output file are not scored again; a last line cut short (the
process was killed while writing) is removed and that object scored again.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow.errors import DataError


def read_done(out_file: str | os.PathLike) -> set[str]:
    """The sample ids already in the JSON-lines ``out_file`` (empty if it does not exist). A last
    line without its newline (a write cut short: the newline is the last byte written) is truncated
    away, with a notice; any other line that is not a result is a :class:`DataError` naming the
    file and line."""
    path = Path(out_file)
    if not path.exists():
        return set()
    data = path.read_bytes()
    done: set[str] = set()
    good = 0  # bytes of whole, valid lines
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if last and line == b"":
            break
        try:
            if last:  # no newline after it: cut short
                raise ValueError("no newline")
            row = json.loads(line)
            sid = row["sample_id"]
        except (ValueError, KeyError, TypeError) as exc:
            if last:
                print(f"multiflow: {path}: the last line was cut short ({len(line)} bytes); it is removed and "
                      "that object is scored again", file=sys.stderr, flush=True)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
                break
            raise DataError(f"line {k + 1} is not a result line ({exc}); not a multiflow --watch output file?",
                            path) from None
        done.add(str(sid))
        good += len(line) + 1
    return done


def append_line(fd: int, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to the open file descriptor ``fd`` (opened with
    ``O_APPEND``) in one write, then ``fsync``."""
    data = (json.dumps(row, allow_nan=False) + "\n").encode("utf-8")
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


@dataclass
class _Seen:
    size: int
    mtime_ns: int


class FolderWatch:
    """Finds ready objects under ``watch_dir`` (module docstring): :meth:`scan` returns
    ``[(object id, [view files in the model's view order]) or (object id, DataError)]``."""

    def __init__(self, watch_dir: str | os.PathLike, view_names: list[str], *, settle: float) -> None:
        from multiflow.data.folder import IMAGE_EXTENSIONS

        self.root = Path(watch_dir)
        if not self.root.is_dir():
            raise DataError("the folder to watch does not exist or is not a folder", self.root)
        self.view_names = list(view_names)
        self.extensions = {e.lower() for e in IMAGE_EXTENSIONS}
        self.settle = float(settle)
        self._seen: dict[str, _Seen] = {}

    def _files(self, folder: Path) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(".") or not e.is_file():
                    continue
                p = Path(e.path)
                if p.suffix.lower() in self.extensions and p.stem in self.view_names:
                    out.setdefault(p.stem, []).append(p)
        return out

    def _settled(self, path: Path, now: float) -> bool:
        st = path.stat()
        prev = self._seen.get(str(path))
        self._seen[str(path)] = _Seen(st.st_size, st.st_mtime_ns)
        return (prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns
                and now - st.st_mtime_ns / 1e9 >= self.settle)

    def scan(self, done: set[str]) -> list[tuple[str, list[Path] | DataError]]:
        ready: list[tuple[str, list[Path] | DataError]] = []
        now = time.time()
        try:
            entries = sorted((e for e in os.scandir(self.root) if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot list the watched folder: {exc.strerror or exc}", self.root) from exc
        for e in entries:
            if e.name in done or not e.is_dir():
                continue
            try:
                files = self._files(Path(e.path))
                if any(v not in files for v in self.view_names):
                    continue
                paths = [files[v] for v in self.view_names]
                if not all([self._settled(p, now) for group in paths for p in group]):
                    continue  # every file's state is recorded; wait for all to settle
            except FileNotFoundError:
                continue  # renamed or removed while looking: the next scan sees it again
            twice = {v: [p.name for p in files[v]] for v in self.view_names if len(files[v]) > 1}
            if twice:
                ready.append((e.name, DataError(f"object {e.name!r}: several files for one view: {twice}",
                                                e.path)))
            else:
                ready.append((e.name, [g[0] for g in paths]))
        for sid, _ in ready:  # forget the scored objects' files
            prefix = str(self.root / sid) + os.sep
            for k in [k for k in self._seen if k.startswith(prefix)]:
                del self._seen[k]
        return ready


def watch_folder(
    predictor, watch_dir: str | os.PathLike, out_file: str | os.PathLike, *, settle: float = 1.0,
    poll: float = 0.25, batch_size: int = 4, stop: threading.Event | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score the objects arriving under ``watch_dir`` until ``stop`` is set (module docstring);
    results are appended to ``out_file``. Returns the timing report
    (:meth:`multiflow.engine.timing.StageTimes.report`) of the objects scored in this call, with
    ``"resumed"``: how many were already in the output.

    Args:
        predictor: a loaded :class:`multiflow.engine.predict.Predictor`.
        settle: seconds a file must be unchanged before it is read (> 0).
        poll: seconds between scans of the folder.
        batch_size: at most this many ready objects are scored together.
        stop: set it to stop (the current batch is finished and written first).
        on_result: called with each written line (the command prints it).
    """
    from multiflow.data.images import read_image_array
    from multiflow.engine.predict import ObjectImages
    from multiflow.numbers import check_number

    check_number(settle, "settle", gt=0)
    check_number(poll, "poll", gt=0)
    check_number(batch_size, "batch_size", integer=True, gt=0)
    stop = stop or threading.Event()
    watch = FolderWatch(watch_dir, predictor.view_names, settle=settle)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out)
    resumed = len(done)
    flips = dict(predictor.bundle.flips or {})
    times = predictor.times
    times.reset()
    scored = 0
    busy = 0.0  # seconds spent decoding, scoring and writing (objects/s while busy)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while not stop.is_set():
            ready = watch.scan(done)
            if not ready:
                stop.wait(poll)
                continue
            for start in range(0, len(ready), batch_size):
                t0 = time.perf_counter()
                batch = ready[start:start + batch_size]
                objects, lines = [], {}
                for sid, found in batch:
                    if isinstance(found, DataError):
                        lines[sid] = {"sample_id": sid, "decision": None, "skipped": str(found)}
                        continue
                    try:
                        with times.stage("decode"):
                            images = [read_image_array(p, size=predictor.input_size, flip=flips.get(v))[0]
                                      for v, p in zip(predictor.view_names, found)]
                        objects.append(ObjectImages(torch.from_numpy(np.stack(images)), list(predictor.view_names),
                                                    sid, image_paths=[str(p) for p in found],
                                                    image_root=str(watch.root)))
                    except DataError as exc:
                        lines[sid] = {"sample_id": sid, "decision": None, "skipped": str(exc)}
                lines.update(_score(predictor, objects))
                with times.stage("write"):
                    for sid, _ in batch:  # in the order they became ready
                        append_line(fd, lines[sid])
                        done.add(sid)
                        if on_result is not None:
                            on_result(lines[sid])
                scored += sum(1 for sid, _ in batch if lines[sid].get("decision") is not None)
                busy += time.perf_counter() - t0
                if stop.is_set():
                    break
    finally:
        os.close(fd)
    times.add("decode_wait", times.seconds["decode"])  # decoded inline: all of it on the critical path
    report = times.report(scored, busy)
    report["resumed"] = resumed
    return report


def _score(predictor, objects: list) -> dict[str, dict[str, Any]]:
    """``{sample id: result line}`` of ``objects`` scored together (one by one when one of them is
    refused, so that the others are still scored)."""
    if not objects:
        return {}
    try:
        return {p.sample_id: p.as_dict() for p in predictor.predict_batch(objects)}
    except DataError as exc:
        if len(objects) == 1:
            return {objects[0].sample_id: {"sample_id": objects[0].sample_id, "decision": None, "skipped": str(exc)}}
    out: dict[str, dict[str, Any]] = {}
    for obj in objects:
        out.update(_score(predictor, [obj]))
    return out
