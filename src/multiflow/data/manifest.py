"""A manifest CSV for users' own multi-camera data: one row per (sample, view) image.

Columns (header row required, order free, extra columns ignored)::

    split,sample_id,view,image_path,mask_path,defect
    train,0001,top,images/0001_top.png,,
    train,0001,left,images/0001_left.png,,
    test,0107,top,images/0107_top.png,masks/0107_top.png,scratch
    test,0107,left,images/0107_left.png,,scratch

Required: ``sample_id``, ``view``, ``image_path``. Optional: ``split`` (absent = one split),
``mask_path`` (empty = no mask), ``defect`` (empty = the normal name, ``good``), ``category``.
Relative paths are resolved against the CSV's folder; every file must stay inside the data root
(the CSV's folder unless given). Labels follow the folder format: normal samples are normal; a
defect sample's view is anomalous iff its mask exists and is non-empty; a defect sample without
any mask has every view anomalous.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from multiflow.data.folder import check_view_names
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
from multiflow.errors import DataError

__all__ = ["MANIFEST_COLUMNS", "ManifestDataset", "ManifestRow", "parse_manifest"]

#: Required and optional manifest columns.
MANIFEST_COLUMNS: dict[str, bool] = {
    "sample_id": True,
    "view": True,
    "image_path": True,
    "split": False,
    "mask_path": False,
    "defect": False,
    "category": False,
}


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row (``line``: 1-based line number in the CSV, for messages)."""

    line: int
    split: str
    sample_id: str
    view: str
    image_path: str
    mask_path: str | None
    defect: str
    category: str


def parse_manifest(data: str | bytes, *, path: str | PathLike, normal_name: str = "good") -> list[ManifestRow]:
    """Parse manifest CSV text (``path`` names the file in messages).

    Raises:
        DataError: undecodable text, no header, missing or repeated columns, a row with the wrong
            number of fields, an empty required field.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"manifest is not UTF-8 text: {exc}", path) from None
    else:
        text = data[1:] if data.startswith("\ufeff") else data
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[ManifestRow] = []
    header: list[str] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(f.strip() == "" for f in fields):
                continue
            if header is None:
                header = [f.strip().lower() for f in fields]
                repeated = sorted({h for h in header if header.count(h) > 1})
                if repeated:
                    raise DataError(f"line {line}: column(s) {repeated} appear more than once in the header", path)
                missing = [c for c, req in MANIFEST_COLUMNS.items() if req and c not in header]
                if missing:
                    raise DataError(
                        f"line {line}: header {header} lacks required column(s) {missing} "
                        f"(columns: {list(MANIFEST_COLUMNS)})",
                        path,
                    )
                continue
            if len(fields) != len(header):
                raise DataError(f"line {line}: {len(fields)} fields, the header has {len(header)}", path)
            rec = {h: f.strip() for h, f in zip(header, fields, strict=False)}
            for col, required in MANIFEST_COLUMNS.items():
                if required and rec[col] == "":
                    raise DataError(f"line {line}: empty {col!r}", path)
            rows.append(
                ManifestRow(
                    line=line,
                    split=rec.get("split", ""),
                    sample_id=rec["sample_id"],
                    view=rec["view"],
                    image_path=rec["image_path"],
                    mask_path=rec.get("mask_path") or None,
                    defect=rec.get("defect") or normal_name,
                    category=rec.get("category", ""),
                )
            )
    except csv.Error as exc:
        raise DataError(f"line {reader.line_num}: malformed CSV: {exc}", path) from None
    if header is None:
        raise DataError("manifest is empty (no header row)", path)
    return rows


def group_manifest_rows(
    rows: Sequence[ManifestRow],
    *,
    views: Sequence[str],
    path: str | PathLike,
    split: str | None = None,
    skip_incomplete: bool = False,
    ignore_unknown_views: bool = False,
) -> tuple[list[tuple[str, dict[str, ManifestRow]]], list[SkippedSample]]:
    """Group the rows of one split into samples ``(sample_id, {view: row})`` sorted by id.

    Raises:
        DataError: unknown view (unless ignored), rows of one sample that disagree on defect or
            category, several splits present without ``split=``, or (without
            ``skip_incomplete``) a sample with a missing or duplicated view, naming sample and view.
    """
    view_names = check_view_names(views)
    if split is None:
        splits = sorted({r.split for r in rows})
        if len(splits) > 1:
            raise DataError(f"the manifest holds several splits {splits}; pass split=", path)
        chosen = rows
    else:
        chosen = [r for r in rows if r.split == split]
        if rows and not chosen:
            raise DataError(f"no rows of split {split!r}; splits present: {sorted({r.split for r in rows})}", path)
    by_id: dict[str, dict[str, list[ManifestRow]]] = {}
    for r in chosen:
        if r.view not in view_names:
            if ignore_unknown_views:
                continue
            raise DataError(
                f"line {r.line}: sample {r.sample_id!r} has unknown view {r.view!r} (configured views: {view_names})",
                path,
            )
        by_id.setdefault(r.sample_id, {}).setdefault(r.view, []).append(r)
    groups: list[tuple[str, dict[str, ManifestRow]]] = []
    skipped: list[SkippedSample] = []
    for sid in sorted(by_id):
        per_view = by_id[sid]
        all_rows = [r for rs in per_view.values() for r in rs]
        for attr in ("defect", "category"):
            values = sorted({getattr(r, attr) for r in all_rows})
            if len(values) > 1:
                lines = sorted(r.line for r in all_rows)
                raise DataError(f"lines {lines}: rows of sample {sid!r} disagree on {attr}: {values}", path)
        missing = [v for v in view_names if v not in per_view]
        dups = [v for v in view_names if len(per_view.get(v, [])) > 1]
        if missing or dups:
            parts = []
            if missing:
                parts.append(f"missing view(s) {missing}")
            if dups:
                parts.append(
                    "duplicated view(s) " + ", ".join(f"{v} (lines {[r.line for r in per_view[v]]})" for v in dups)
                )
            reason = " and ".join(parts)
            if not skip_incomplete:
                raise DataError(
                    f"sample {sid!r} has {reason}; pass skip_incomplete=True to skip (and list) such samples", path
                )
            # the views present, by their manifest path (resolved by the dataset): see SkippedSample.usable
            present = () if dups else tuple((v, per_view[v][0].image_path) for v in view_names if v in per_view)
            skipped.append(SkippedSample(sid, reason, present))
            continue
        groups.append((sid, {v: per_view[v][0] for v in view_names}))
    return groups, skipped


class ManifestDataset(RecordDataset):
    """Multi-view samples listed in a manifest CSV (see the module docstring for the columns).

    Args:
        csv_path: the manifest.
        views: view names in view order (required).
        split: rows of this split only; ``None`` = all rows (the manifest must hold one split).
        data_root: files must resolve inside it (default: the CSV's folder).
        category: stored in every sample when the CSV has no ``category`` column
            (default: the CSV's file stem).
        image_size, flips, skip_incomplete, ignore_unknown_views, load_masks, fast_jpeg,
        normal_name: as for :class:`~multiflow.data.folder.FolderDataset`.
    """

    def __init__(
        self,
        csv_path: str | PathLike,
        *,
        views: Sequence[str],
        split: str | None = None,
        data_root: str | PathLike | None = None,
        category: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        normal_name: str = "good",
        flips: Mapping[str, Any] | None = None,
        skip_incomplete: bool = False,
        ignore_unknown_views: bool = False,
        load_masks: bool = True,
        fast_jpeg: bool = False,
    ) -> None:
        view_names = check_view_names(views)
        cpath = Path(csv_path)
        try:
            data = cpath.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read manifest: {exc.strerror or exc}", cpath) from exc
        rows = parse_manifest(data, path=cpath, normal_name=normal_name)
        groups, skipped = group_manifest_rows(
            rows,
            views=view_names,
            path=cpath,
            split=split,
            skip_incomplete=skip_incomplete,
            ignore_unknown_views=ignore_unknown_views,
        )
        base = cpath.resolve().parent
        root = Path(data_root).resolve() if data_root is not None else base
        default_category = category if category is not None else cpath.stem
        records: list[SampleRecord] = []
        for sid, per_view in groups:
            image_paths: list[str] = []
            mask_paths: list[str | None] = []
            if skip_incomplete:
                bad = []
                for v in view_names:
                    img = resolve_inside(root, os.path.join(base, per_view[v].image_path), source=cpath)
                    problem = image_file_problem(img)
                    if problem is not None:
                        bad.append(f"view {v} (line {per_view[v].line}): {problem}")
                if bad:
                    skipped.append(SkippedSample(sid, "; ".join(bad),
                                                 tuple((v, per_view[v].image_path) for v in view_names)))
                    continue
            for v in view_names:
                r = per_view[v]
                img = resolve_inside(root, os.path.join(base, r.image_path), source=cpath)
                if not img.is_file():
                    raise DataError(f"line {r.line}: image file {img} not found (sample {sid!r}, view {v!r})", cpath)
                image_paths.append(str(img))
                if r.mask_path is None:
                    mask_paths.append(None)
                else:
                    m = resolve_inside(root, os.path.join(base, r.mask_path), source=cpath)
                    if not m.is_file():
                        raise DataError(f"line {r.line}: mask file {m} not found (sample {sid!r}, view {v!r})", cpath)
                    mask_paths.append(str(m))
            first = per_view[view_names[0]]
            defect = first.defect
            if defect == normal_name:
                mask_paths = [None] * len(view_names)
            records.append(
                SampleRecord(
                    sample_id=sid,
                    category=first.category or default_category,
                    split=first.split if split is None else split,
                    defect=defect,
                    view_names=tuple(view_names),
                    image_paths=tuple(image_paths),
                    mask_paths=tuple(mask_paths),
                    known_labels=user_known_labels(defect, normal_name, mask_paths),
                    source=str(cpath),
                )
            )
        # skipped samples: keep only the views whose file resolves inside the root and is readable
        skipped = [SkippedSample(k.sample_id, k.reason, readable_views(
            k.usable, lambda raw: resolve_inside(root, os.path.join(base, raw), source=cpath))) for k in skipped]
        categories = sorted({r.category for r in records}) or [default_category]
        super().__init__(
            samples=records,
            view_names=view_names,
            image_size=image_size,
            flips=resolve_flips(flips, category=categories[0], view_names=view_names),
            load_masks=load_masks,
            fast_jpeg=fast_jpeg,
            skipped=skipped,
        )
        self.csv_path = str(cpath)
        self.split = split
        self.normal_name = normal_name
        self._warn_skipped(str(cpath))

    def __repr__(self) -> str:
        return (
            f"ManifestDataset(csv={self.csv_path!r}, split={self.split!r}, samples={len(self)}, "
            f"views={self.view_names})"
        )
