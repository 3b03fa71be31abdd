"""On-disk cache of per-sample arrays (features, masks): extracted once, resumable, verified.

An *entry* holds arrays with a leading sample axis ``N`` for one data set and one extractor. Its
folder name is a digest of the *key*: everything that changes the arrays (backbone name, weights
digest, layer, input size, the data set's transform such as view flips and image size, and the
list of image files with their sizes and modification times). A different key is a different
entry, so a stale entry is never picked up.

Layout of one entry ``<cache_root>/<kind>-<digest[:20]>/``::

    key.json         the full key (written first, atomically)
    <name>.npy       one preallocated array per output, e.g. features.npy (N, V, C, h, w)
    done.npy         (N,) bool: samples whose rows are written (replaced atomically per batch,
                     after the arrays were flushed)
    manifest.json    written last, atomically: key, shapes, dtypes, sample ids, SHA-256 of
                     every array file. Its presence marks the entry complete.

Extraction can be killed at any moment: rows are marked done only after they are flushed, and
the manifest comes last, so a rerun continues with the samples not yet done and never reads a
half-written entry. A complete entry is checked on open (key, file sizes and, with
``verify=True``, the SHA-256 of every array); a mismatch raises :class:`CheckpointError` (or, with
``on_corrupt="rebuild"``, deletes and rebuilds the entry). Reading is memory-mapped.

Concurrent writers to the same entry are not supported (one process per entry); ranks of one
``torch.distributed`` job share the work through rank 0 (``ctx`` of :func:`build_entry`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow._atomic import write_bytes, write_json
from multiflow.errors import CheckpointError, ConfigError, DataError
from multiflow.ranks import DistContext

CACHE_FORMAT = 1
_DTYPES = {"float16": np.float16, "float32": np.float32}


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue(), fsync=True)


def key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies a data set's pixels: sample ids and files (size, mtime) in order, the view
    names and the load-time transform (``flips``, ``image_size``, ``fast_jpeg`` attributes).

    The data set must expose ``samples``: records with ``sample_id`` and ``image_paths`` (as
    :class:`multiflow.data.records.SampleRecord` does), so nothing is decoded here.

    Raises:
        ConfigError: a data set without ``samples`` records. DataError: a listed file that is
        missing (names it).
    """
    records = getattr(dataset, "samples", None)
    if records is None:
        raise ConfigError(
            f"{type(dataset).__name__} has no .samples records (sample_id, image_paths): cannot key a cache"
        )
    ids: list[str] = []
    files: list[list[Any]] = []
    for rec in records:
        ids.append(str(rec.sample_id))
        for p in rec.image_paths:
            try:
                st = os.stat(p)
            except OSError as exc:
                raise DataError(f"cannot stat image file: {exc.strerror or exc}", p) from exc
            files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    if len(set(ids)) != len(ids):
        raise DataError("sample ids are not unique; cannot key a cache by them")
    image_size = getattr(dataset, "image_size", None)
    flips = getattr(dataset, "flips", None)
    return {
        "sample_ids": ids,
        "files": files,
        "view_names": list(getattr(dataset, "view_names", []) or []),
        "transform": {
            "class": type(dataset).__name__,
            "image_size": list(image_size) if image_size is not None else None,
            "flips": {str(k): str(v) for k, v in dict(flips).items()} if flips else {},
            "fast_jpeg": bool(getattr(dataset, "fast_jpeg", False)),
        },
    }


@dataclass(frozen=True)
class ArraySpec:
    """One cached output: per-sample shape (without the leading ``N``) and numpy dtype."""

    shape: tuple[int, ...]
    dtype: str


@dataclass
class CacheEntry:
    """A complete, verified entry: memory-mapped arrays ``(N, ...)`` (read-only) plus metadata."""

    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    view_names: list[str]
    key: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return len(self.sample_ids)


BatchFn = Callable[[Sequence[int]], Mapping[str, np.ndarray]]


def _check_entry(path: Path, key: dict[str, Any], verify: bool) -> CacheEntry:
    try:
        return _check_entry_unsafe(path, key, verify)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"malformed cache manifest ({exc!r})", path / "manifest.json") from exc


def _check_entry_unsafe(path: Path, key: dict[str, Any], verify: bool) -> CacheEntry:
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable cache manifest: {exc}", manifest_path) from exc
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        raise CheckpointError("cache manifest does not match the requested key (stale or corrupt entry)", manifest_path)
    arrays: dict[str, np.ndarray] = {}
    n = len(manifest["sample_ids"])
    for name, info in manifest["arrays"].items():
        fpath = path / f"{name}.npy"
        shape = (n, *info["shape"])
        try:
            arr = np.load(fpath, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"unreadable cached array: {exc}", fpath) from exc
        if tuple(arr.shape) != shape or str(arr.dtype) != info["dtype"]:
            raise CheckpointError(
                f"cached array has shape {tuple(arr.shape)} {arr.dtype}, manifest says {shape} {info['dtype']}",
                fpath,
            )
        if fpath.stat().st_size != info["file_size"]:
            raise CheckpointError(f"cached array file has {fpath.stat().st_size} bytes, expected {info['file_size']}", fpath)
        if verify and file_sha256(fpath) != info["sha256"]:
            raise CheckpointError("cached array file is corrupt (SHA-256 mismatch)", fpath)
        arrays[name] = arr
    return CacheEntry(arrays, list(manifest["sample_ids"]), list(manifest.get("view_names", [])), key, path)


def build_entry(
    *,
    cache_root: str | os.PathLike,
    kind: str,
    key: dict[str, Any],
    sample_ids: Sequence[str],
    view_names: Sequence[str],
    arrays: Mapping[str, ArraySpec],
    compute: BatchFn,
    batch_size: int,
    verify: bool = True,
    on_corrupt: str = "error",
    progress: bool = True,
    desc: str | None = None,
    plan: Callable[[list[list[int]]], None] | None = None,
    ctx: DistContext | None = None,
) -> CacheEntry:
    """Open the entry for ``key`` if it is complete; otherwise compute (or resume) it.

    ``compute(indices)`` returns, for a batch of sample indices, one array per name in
    ``arrays`` with shape ``(len(indices), *spec.shape)``. Batches of ``batch_size`` samples
    not yet done are computed in order; each batch is written, flushed, then marked done.
    ``plan(batches)``, if given, is told the list of index batches before the first ``compute``
    (so a data loader can prefetch exactly those).

    ``ctx`` (a :class:`multiflow.ranks.DistContext` with more than one rank, under
    ``torchrun``) shards the work: every rank must call this with the same arguments. Rank 0
    alone opens, prepares, writes and finishes the entry; the pending samples go in global
    batches of ``batch_size * world_size``, each rank computes its contiguous share
    (:func:`~multiflow.ranks.shard_range`) and sends the rows to rank 0, which
    writes them in sample order and marks them done, so a killed run resumes like a single
    process (with any number of ranks). An error on any rank stops all of them. The cache root
    must be visible to every rank (one machine, or a shared file system across nodes).

    Raises:
        CheckpointError: a complete entry that fails its checks (``on_corrupt="error"``).
    """
    if on_corrupt not in ("error", "rebuild"):
        raise ConfigError(f"on_corrupt must be 'error' or 'rebuild', got {on_corrupt!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    # normalised through JSON (tuples -> lists) so it compares equal to what the manifest holds
    full_key = json.loads(json.dumps({"format": CACHE_FORMAT, "kind": kind, **key}, sort_keys=True))
    path = Path(cache_root) / f"{kind}-{key_digest(full_key)[:20]}"
    if ctx is not None and ctx.enabled:
        return _build_sharded(path, full_key, sample_ids, view_names, arrays, compute, batch_size, verify,
                              on_corrupt, progress, desc or kind, plan, ctx)
    state = _open_or_prepare(path, full_key, len(sample_ids), arrays, verify, on_corrupt)
    if isinstance(state, CacheEntry):
        return state
    mm, done = state
    pending = [i for i in range(len(sample_ids)) if not done[i]]
    batches = [pending[s : s + batch_size] for s in range(0, len(pending), batch_size)]
    if plan is not None:
        plan(batches)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sample_ids), initial=len(sample_ids) - len(pending), desc=desc or kind, unit="sample",
               disable=not progress)
    try:
        for idx in batches:
            _write_rows(path, mm, done, arrays, idx, _checked_blocks(path, arrays, compute(idx), len(idx)))
            bar.update(len(idx))
    finally:
        bar.close()
    _finish(path, full_key, mm, sample_ids, view_names, arrays)
    return _check_entry(path, full_key, verify=False)


def _open_or_prepare(
    path: Path, full_key: dict[str, Any], n: int, arrays: Mapping[str, ArraySpec], verify: bool, on_corrupt: str
) -> CacheEntry | tuple[dict[str, np.ndarray], np.ndarray]:
    """The complete entry at ``path``, else its writable arrays and ``done`` flags (resumed or new)."""
    if (path / "manifest.json").exists():
        try:
            return _check_entry(path, full_key, verify)
        except CheckpointError:
            if on_corrupt == "error":
                raise
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    key_path = path / "key.json"
    if key_path.exists():
        try:
            same = json.loads(key_path.read_text()) == full_key
        except (OSError, ValueError):
            same = False
        if not same:  # a partial entry from something else: start over
            shutil.rmtree(path)
            path.mkdir(parents=True)
    if not key_path.exists():
        write_json(key_path, full_key, indent=1, sort_keys=True, fsync=True)

    done_path = path / "done.npy"
    mm: dict[str, np.ndarray] = {}
    fresh = False
    for name, spec in arrays.items():
        fpath = path / f"{name}.npy"
        shape = (n, *spec.shape)
        arr = None
        if fpath.exists():
            try:
                arr = np.load(fpath, mmap_mode="r+")
                if tuple(arr.shape) != shape or str(arr.dtype) != spec.dtype:
                    arr = None
            except (OSError, ValueError):
                arr = None
        if arr is None:
            arr = np.lib.format.open_memmap(fpath, mode="w+", dtype=spec.dtype, shape=shape)
            fresh = True
        mm[name] = arr
    done = np.zeros(n, dtype=bool)
    if not fresh and done_path.exists():
        try:
            loaded = np.load(done_path)
            if loaded.shape == (n,) and loaded.dtype == bool:
                done = loaded.copy()
        except (OSError, ValueError):
            pass
    return mm, done


def _checked_blocks(
    path: Path, arrays: Mapping[str, ArraySpec], out: Mapping[str, np.ndarray], rows: int
) -> dict[str, np.ndarray]:
    """``compute``'s output for ``rows`` samples, shape-checked and cast to the stored dtypes."""
    blocks = {}
    for name, spec in arrays.items():
        block = np.asarray(out[name])
        want = (rows, *spec.shape)
        if tuple(block.shape) != want:
            raise CheckpointError(f"computed {name} has shape {tuple(block.shape)}, expected {want}", path)
        blocks[name] = block.astype(spec.dtype, copy=False)
    return blocks


def _write_rows(
    path: Path, mm: dict[str, np.ndarray], done: np.ndarray, arrays: Mapping[str, ArraySpec],
    idx: Sequence[int], blocks: Mapping[str, np.ndarray],
) -> None:
    """Store rows ``idx``, flush them, then mark them done (in that order: resumable at any kill)."""
    for name in arrays:
        mm[name][idx] = blocks[name]
    for arr in mm.values():
        arr.flush()
    done[idx] = True
    _atomic_save_npy(path / "done.npy", done)


def _finish(
    path: Path, full_key: dict[str, Any], mm: dict[str, np.ndarray], sample_ids: Sequence[str],
    view_names: Sequence[str], arrays: Mapping[str, ArraySpec],
) -> None:
    """Write the manifest (digests of every array file): the entry is complete from then on."""
    info = {}
    for name, spec in arrays.items():
        mm[name].flush()
        fpath = path / f"{name}.npy"
        info[name] = {
            "shape": list(spec.shape),
            "dtype": spec.dtype,
            "file_size": fpath.stat().st_size,
            "sha256": file_sha256(fpath),
        }
    manifest = {
        "format": CACHE_FORMAT,
        "key": full_key,
        "sample_ids": list(sample_ids),
        "view_names": list(view_names),
        "arrays": info,
    }
    write_json(path / "manifest.json", manifest, indent=1, sort_keys=True, fsync=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _build_sharded(
    path: Path, full_key: dict[str, Any], sample_ids: Sequence[str], view_names: Sequence[str],
    arrays: Mapping[str, ArraySpec], compute: BatchFn, batch_size: int, verify: bool, on_corrupt: str,
    progress: bool, desc: str, plan: Callable[[list[list[int]]], None] | None, ctx: DistContext,
) -> CacheEntry:
    """:func:`build_entry` over the ranks of ``ctx`` (see there)."""
    from multiflow.ranks import all_gather_objects, broadcast_from_main, gather_objects_to_main, shard_range

    def agree(failure: BaseException | None, what: str) -> None:
        """Collective: every rank learns whether any rank failed; all of them raise if one did."""
        reports = all_gather_objects(None if failure is None else _describe(failure), ctx)
        if failure is not None:
            raise failure
        bad = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
        if bad:
            r, msg = bad[0]
            raise CheckpointError(f"{what} failed on rank {r}: {msg}", path)

    # 1. rank 0 opens or prepares the entry and tells the others what is pending
    state: Any = None
    failure: BaseException | None = None
    pending: list[int] | None = None
    if ctx.is_main:
        try:
            state = _open_or_prepare(path, full_key, len(sample_ids), arrays, verify, on_corrupt)
            if not isinstance(state, CacheEntry):
                pending = [i for i in range(len(sample_ids)) if not state[1][i]]
        except Exception as exc:  # re-raised below, after the other ranks learnt of it
            failure = exc
    agree(failure, "opening the cache entry")
    pending = broadcast_from_main(pending, ctx)
    if pending is None:  # complete: rank 0 has checked it; the others only open it
        return state if ctx.is_main else _check_entry(path, full_key, verify=False)

    # 2. global batches; each rank computes its share, rank 0 writes in sample order
    step = batch_size * ctx.world_size
    global_batches = [pending[s : s + step] for s in range(0, len(pending), step)]
    local = []
    for gb in global_batches:
        a, b = shard_range(len(gb), ctx.rank, ctx.world_size)
        local.append(gb[a:b])
    if plan is not None:
        plan([idx for idx in local if idx])
    from tqdm.auto import tqdm

    n = len(sample_ids)
    bar = tqdm(total=n, initial=n - len(pending), desc=desc, unit="sample", disable=not (progress and ctx.is_main))
    try:
        for gb, idx in zip(global_batches, local):
            blocks: dict[str, np.ndarray] | None = None
            failure = None
            try:
                if idx:
                    blocks = _checked_blocks(path, arrays, compute(idx), len(idx))
            except Exception as exc:
                failure = exc
            parts = gather_objects_to_main(("failed", None) if failure is not None else ("ok", blocks), ctx)
            if ctx.is_main and failure is None and all(status == "ok" for status, _ in parts):
                try:  # the shards are contiguous and in rank order: concatenated, they are rows gb
                    merged = {name: np.concatenate([blk[name] for _, blk in parts if blk is not None])
                              for name in arrays}
                    rows = len(next(iter(merged.values())))
                    if rows != len(gb):
                        raise CheckpointError(f"ranks returned {rows} rows for a batch of {len(gb)}", path)
                    _write_rows(path, state[0], state[1], arrays, gb, merged)
                except Exception as exc:
                    failure = exc
            agree(failure, f"computing {desc}")
            bar.update(len(gb))
    finally:
        bar.close()

    # 3. rank 0 writes the manifest; then every rank opens the complete entry
    failure = None
    if ctx.is_main:
        try:
            _finish(path, full_key, state[0], sample_ids, view_names, arrays)
        except Exception as exc:
            failure = exc
    agree(failure, "finishing the cache entry")
    return _check_entry(path, full_key, verify=False)


class BatchSource:
    """Loads batches of samples of ``dataset`` as :class:`~multiflow.data.sample.MultiViewBatch`.

    With ``num_workers > 0``, :meth:`plan` starts one ``DataLoader`` whose batch sampler is the
    planned list of index batches (workers prefetch them); :meth:`get` must then be called with
    those batches in order. ``get`` checks that the batch holds the expected sample ids.
    """

    def __init__(self, dataset: Any, sample_ids: Sequence[str], num_workers: int = 0) -> None:
        self.dataset = dataset
        self.sample_ids = list(sample_ids)
        self.num_workers = int(num_workers)
        self._iter: Any = None

    def plan(self, batches: list[list[int]]) -> None:
        if self.num_workers > 0 and batches:
            from torch.utils.data import DataLoader

            from multiflow.data.sample import collate_samples

            loader = DataLoader(
                self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate_samples
            )
            self._iter = iter(loader)

    def get(self, indices: Sequence[int]):
        from multiflow.data.sample import collate_samples

        if self._iter is not None:
            batch = next(self._iter)
        else:
            batch = collate_samples([self.dataset[i] for i in indices])
        want = [self.sample_ids[i] for i in indices]
        if list(batch.sample_ids) != want:
            raise DataError(f"data set returned samples {batch.sample_ids}, expected {want} (order changed?)")
        return batch


@dataclass
class CachedFeatures:
    """Cached features of one data set: ``features`` is a read-only memmap ``(N, V, C, h, w)``
    in sample order ``sample_ids``; ``key`` says what produced them, ``path`` where they are."""

    features: np.ndarray
    sample_ids: list[str]
    view_names: list[str]
    key: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def tensor(self, index: int | Sequence[int] | slice, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``index`` as a float tensor (copied out of the memmap)."""
        return torch.from_numpy(np.array(self.features[index])).to(dtype)


def extract_features(
    dataset: Any,
    extractor: Any,
    cache_root: str | os.PathLike,
    *,
    batch_size: int = 4,
    dtype: str = "float16",
    num_workers: int = 0,
    verify: bool = True,
    on_corrupt: str = "error",
    progress: bool = True,
    ctx: DistContext | None = None,
) -> CachedFeatures:
    """Extract (or reuse) the features of every sample of ``dataset``.

    Each sample's images ``(V, 3, H, W)`` in ``[0, 1]`` go through ``extractor``
    (:class:`~multiflow.features.backbones.FeatureExtractor`), giving ``(V, C, h, w)``; the
    result ``(N, V, C, h, w)`` is stored as ``dtype`` (``"float16"`` halves the disk space; the
    features of a frozen CNN lose < 1e-3 relative precision). ``batch_size`` counts samples
    (``batch_size * V`` images per forward pass). ``ctx`` shares the samples among the ranks of a
    ``torch.distributed`` job (see :func:`build_entry`); every rank gets the whole result.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    fp = dataset_fingerprint(dataset)
    v = len(fp["view_names"]) or len(dataset.samples[0].image_paths)
    c = extractor.channels
    h, w = extractor.feature_size(extractor.input_size)
    key = {"extractor": extractor.describe(), "dtype": dtype, "data": fp}

    source = BatchSource(dataset, fp["sample_ids"], num_workers)

    def compute(indices: Sequence[int]) -> dict[str, np.ndarray]:
        batch = source.get(indices)
        feats = extractor.forward_views(batch.images)
        return {"features": feats.float().cpu().numpy()}

    entry = build_entry(
        cache_root=cache_root, kind="features", key=key, sample_ids=fp["sample_ids"],
        view_names=fp["view_names"], arrays={"features": ArraySpec((v, c, h, w), dtype)},
        compute=compute, batch_size=batch_size, verify=verify, on_corrupt=on_corrupt,
        progress=progress, desc=f"features {extractor.name}@{extractor.input_size}", plan=source.plan, ctx=ctx,
    )
    return CachedFeatures(entry.arrays["features"], entry.sample_ids, entry.view_names, entry.key, entry.path)
