"""A plain folder format for users' own multi-camera lines (see ``docs/data-format.md``).

::

    <root>/
    ├── train/
    │   └── good/
    │       ├── 0001/
    │       │   ├── top.png           # one file per view: <view_name>.<ext>
    │       │   ├── left.png
    │       │   └── right.png
    │       └── 0002/...
    ├── test/
    │   ├── good/0101/{top,left,right}.png
    │   └── scratch/                  # any defect name
    │       └── 0001/{top,left,right}.png
    └── masks/                        # optional, parallel tree, PNG, white = defect
        └── test/scratch/0001/{top,left}.png   # views without a mask show no defect

View names and their order come from configuration (``views=["top", "left", "right"]``); the
view graph is built elsewhere from that order. Sample ids may repeat across defect folders: the
sample key is ``"<defect>/<sample_id>"``.

Labels: ``good`` samples are normal; a defect sample's view is anomalous iff its mask exists
and is non-empty; a defect sample without any mask has every view labelled anomalous.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from multiflow.data.images import resolve_inside
from multiflow.data.records import (
    RecordDataset,
    SampleRecord,
    SkippedSample,
    image_file_problem,
    readable_views,
    resolve_flips,
    user_known_labels,
)
from multiflow.errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "check_view_names"]

#: File extensions read as images (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def check_view_names(views: Sequence[str]) -> list[str]:
    """Validate configured view names: non-empty, unique, plain file stems."""
    if isinstance(views, str) or not isinstance(views, Sequence) or len(views) == 0:
        raise ConfigError(f"views must be a non-empty list of view names, got {views!r}")
    names = [str(v) for v in views]
    if len(set(names)) != len(names):
        raise ConfigError(f"views {names} name a view more than once")
    for v in names:
        if v == "" or v.startswith(".") or any(c in v for c in "/\\\x00"):
            raise ConfigError(f"invalid view name {v!r}: must be a plain file name stem")
    return names


def _visible(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return _visible(list(it))
    except OSError as exc:
        raise DataError(f"cannot list folder: {exc.strerror or exc}", path) from exc


class FolderDataset(RecordDataset):
    """Multi-view samples from ``<root>/<split>/<good|defect>/<sample_id>/<view>.<ext>``.

    Args:
        root: data root (every file must resolve inside it; symlinks out of it are errors).
        views: view names in view order (required: order defines the view axis).
        split: split folder name (``"train"``, ``"test"``, ...).
        category: name stored in every sample (default: the root folder's name).
        image_size: resize to a square side or ``(H, W)`` (bilinear images, nearest masks).
        normal_name: folder name of normal samples.
        mask_root: root of the mask tree (default ``<root>/masks``).
        extensions: image file extensions to read; other files are ignored.
        flips: load-time flips ``{view: "lr"|"ud"|"lrud"}``.
        skip_incomplete: skip samples with a missing or duplicated view (listed in ``.skipped``)
            instead of raising a :class:`DataError` that names the sample and view.
        ignore_unknown_views: ignore image files whose stem is not a configured view (default:
            error naming the file).
        load_masks: return masks (labels use masks either way).
        fast_jpeg: decode JPEGs at reduced scale before resizing.
    """

    def __init__(
        self,
        root: str | PathLike,
        *,
        views: Sequence[str],
        split: str = "test",
        category: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        normal_name: str = "good",
        mask_root: str | PathLike | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        flips: Mapping[str, Any] | None = None,
        skip_incomplete: bool = False,
        ignore_unknown_views: bool = False,
        load_masks: bool = True,
        fast_jpeg: bool = False,
    ) -> None:
        view_names = check_view_names(views)
        root_p = Path(root)
        if not root_p.is_dir():
            raise DataError("data root is not a directory", root_p)
        split_dir = root_p / split
        if not split or any(c in split for c in "/\\") or not split_dir.is_dir():
            raise DataError(f"split folder {split!r} not found", root_p)
        masks_p = Path(mask_root) if mask_root is not None else root_p / "masks"
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        category = category if category is not None else root_p.resolve().name

        records: list[SampleRecord] = []
        skipped: list[SkippedSample] = []
        for defect_entry in _scandir(split_dir):
            if not defect_entry.is_dir():
                continue
            defect = defect_entry.name
            for sample_entry in _scandir(Path(defect_entry.path)):
                if not sample_entry.is_dir():
                    continue
                sid = f"{defect}/{sample_entry.name}"
                found: dict[str, list[str]] = {}
                for f in _scandir(Path(sample_entry.path)):
                    stem, ext = os.path.splitext(f.name)
                    if ext.lower() not in exts:
                        continue
                    if stem not in view_names:
                        if ignore_unknown_views:
                            continue
                        raise DataError(
                            f"sample {sid!r}: unknown view {stem!r} (configured views: {view_names}); "
                            "pass ignore_unknown_views=True to ignore such files",
                            f.path,
                        )
                    found.setdefault(stem, []).append(f.path)
                missing = [v for v in view_names if v not in found]
                dups = [v for v in view_names if len(found.get(v, [])) > 1]
                if missing or dups:
                    reason = " and ".join(
                        ([f"missing view(s) {missing}"] if missing else [])
                        + (
                            [f"duplicated view(s) {dups} ({'; '.join(p for v in dups for p in found[v])})"]
                            if dups
                            else []
                        )
                    )
                    if not skip_incomplete:
                        raise DataError(
                            f"sample {sid!r} has {reason}; pass skip_incomplete=True to skip (and list) such samples",
                            sample_entry.path,
                        )
                    usable = () if dups else readable_views(
                        [(v, found[v][0]) for v in view_names if v in found], lambda raw: resolve_inside(root_p, raw))
                    skipped.append(SkippedSample(sid, reason, usable))
                    continue
                image_paths = [str(resolve_inside(root_p, found[v][0])) for v in view_names]
                if skip_incomplete:
                    bad = [f"view {v}: {pr}" for v, pth in zip(view_names, image_paths)
                           if (pr := image_file_problem(pth)) is not None]
                    if bad:
                        usable = readable_views(list(zip(view_names, image_paths)), lambda raw: raw)
                        skipped.append(SkippedSample(sid, "; ".join(bad), usable))
                        continue
                mask_paths: list[str | None] = []
                for v in view_names:
                    mask_paths.append(
                        None
                        if defect == normal_name
                        else self._find_mask(masks_p, split, defect, sample_entry.name, v, exts)
                    )
                records.append(
                    SampleRecord(
                        sample_id=sid,
                        category=category,
                        split=split,
                        defect=defect,
                        view_names=tuple(view_names),
                        image_paths=tuple(image_paths),
                        mask_paths=tuple(mask_paths),
                        known_labels=user_known_labels(defect, normal_name, mask_paths),
                        source=str(root_p),
                    )
                )
        records.sort(key=lambda r: r.sample_id)
        super().__init__(
            samples=records,
            view_names=view_names,
            image_size=image_size,
            flips=resolve_flips(flips, category=category, view_names=view_names),
            load_masks=load_masks,
            fast_jpeg=fast_jpeg,
            skipped=skipped,
        )
        self.root = str(root_p)
        self.split = split
        self.category = category
        self.normal_name = normal_name
        self._warn_skipped(str(split_dir))

    @staticmethod
    def _find_mask(masks: Path, split: str, defect: str, sample: str, view: str, exts: set[str]) -> str | None:
        folder = masks / split / defect / sample
        if not folder.is_dir():
            return None
        hits = [folder / f"{view}{e}" for e in sorted(exts | {".png"})]
        hits = [h for h in hits if h.is_file()]
        if len(hits) > 1:
            raise DataError(f"several masks for view {view!r}: {[h.name for h in hits]}", folder)
        return str(resolve_inside(masks, hits[0])) if hits else None

    def __repr__(self) -> str:
        return f"FolderDataset(root={self.root!r}, split={self.split!r}, samples={len(self)}, views={self.view_names})"
