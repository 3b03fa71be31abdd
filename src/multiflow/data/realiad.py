"""Real-IAD reader (Wang et al., CVPR 2024): five cameras per object, grouped by the sample key.

On-disk layout (images at one resolution, JSON index files in one of three places)::

    <root>/
    ├── realiad_256/                     # or realiad_512, realiad_1024, realiad_raw, realiad_<int>
    │   ├── audiojack/                   # = meta.prefix of the class JSON
    │   │   ├── OK/S0001/audiojack_0001_OK_C1_20231021132441.jpg
    │   │   │            ...            _C5_...
    │   │   └── NG/BX/S0001/audiojack_0001_NG_BX_C2_20231023111538.jpg
    │   │                   audiojack_0001_NG_BX_C2_20231023111538_mask.png
    │   └── audiojack.json               # layout 3: JSON next to the class folder
    ├── realiad_jsons/audiojack.json     # layout 1: flat
    ├── realiad_jsons/realiad_jsons/audiojack.json    # layout 2: nested (as unzipped)
    ├── realiad_jsons_sv/...             # single view (C1 only)
    └── realiad_jsons_fuiad_0.1/...      # fully-unsupervised variants (0.0, 0.1, 0.2, 0.4)

``root`` may also be the resolution folder itself (the one holding ``audiojack/``).

JSON schema (checked; the official loader asserts it)::

    {"meta": {"prefix": "audiojack", "normal_class": "OK"},
     "train": [{"category": "audiojack", "anomaly_class": "OK",
                "image_path": "OK/S0001/audiojack_0001_OK_C1_....jpg", "mask_path": null}, ...],
     "test":  [...]}

Paths are relative to ``<image root>/<prefix>``. Images are grouped into samples by the
official sample key ``([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_`` of the file
name (the 4-digit id repeats across ``OK`` and each defect folder, so the key includes
``OK`` / ``NG_<CODE>``) and views are ordered by camera number, never by JSON position.

Labels (official rule): an image is anomalous iff it has a mask path, its class is not the
normal class, and its mask is non-empty; the sample label is the max over its views.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
)
from multiflow.errors import ConfigError, DataError

__all__ = [
    "JSON_VARIANTS",
    "REALIAD_CLASSES",
    "SAMPLE_KEY_PATTERN",
    "RealIADDataset",
    "RealIADEntry",
    "RealIADIndex",
    "find_realiad_json",
    "group_realiad_entries",
    "list_categories",
    "parse_realiad_json",
]

#: The 30 Real-IAD object classes.
REALIAD_CLASSES: tuple[str, ...] = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts",
    "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator",
    "rolled_strip_base", "sim_card_set", "switch", "tape", "terminal_block", "toothbrush", "toy",
    "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads",
    "woodstick", "zipper",
)  # fmt: skip

#: The official JSON variants (folder names). Any other name is accepted if its folder exists.
JSON_VARIANTS: tuple[str, ...] = (
    "realiad_jsons",
    "realiad_jsons_sv",
    "realiad_jsons_fuiad_0.0",
    "realiad_jsons_fuiad_0.1",
    "realiad_jsons_fuiad_0.2",
    "realiad_jsons_fuiad_0.4",
)

#: The official sample-key regex, extended by a group capturing the camera name.
SAMPLE_KEY_PATTERN = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_(C[0-9])_")

_ENTRY_KEYS = frozenset({"category", "anomaly_class", "image_path", "mask_path"})
_RESOLUTION = re.compile(r"^(raw|[0-9]+)$")


@dataclass(frozen=True)
class RealIADEntry:
    """One image entry of a Real-IAD JSON (``index`` = position in its split list)."""

    category: str
    anomaly_class: str
    image_path: str
    mask_path: str | None
    index: int


@dataclass(frozen=True)
class RealIADIndex:
    """A parsed and validated Real-IAD class JSON."""

    prefix: str
    normal_class: str
    train: tuple[RealIADEntry, ...]
    test: tuple[RealIADEntry, ...]
    path: str


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def load_json_strict(data: str | bytes, path: str | PathLike) -> Any:
    """``json.loads`` that rejects duplicate object keys and NaN/Infinity, raising :class:`DataError`."""
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise DataError(f"malformed JSON: duplicate key {exc.key!r} in one object", path) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", path) from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"malformed JSON: {exc}", path) from None


def _entry(raw: Any, where: str, index: int, path: str | PathLike) -> RealIADEntry:
    if not isinstance(raw, dict):
        raise DataError(f"{where}[{index}] must be an object, got {type(raw).__name__}", path)
    keys = set(raw)
    if keys != _ENTRY_KEYS:
        missing, extra = sorted(_ENTRY_KEYS - keys), sorted(keys - _ENTRY_KEYS)
        raise DataError(
            f"{where}[{index}] must have exactly the keys {sorted(_ENTRY_KEYS)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else ""),
            path,
        )
    for key in ("category", "anomaly_class", "image_path"):
        if not isinstance(raw[key], str) or raw[key] == "":
            raise DataError(f"{where}[{index}].{key} must be a non-empty string, got {raw[key]!r}", path)
    mask = raw["mask_path"]
    if mask is not None and (not isinstance(mask, str) or mask == ""):
        raise DataError(f"{where}[{index}].mask_path must be a non-empty string or null, got {mask!r}", path)
    return RealIADEntry(raw["category"], raw["anomaly_class"], raw["image_path"], mask, index)


def parse_realiad_json(data: str | bytes, *, path: str | PathLike) -> RealIADIndex:
    """Parse and validate the text of one Real-IAD class JSON (``path`` is for messages only).

    Raises:
        DataError: malformed JSON, duplicate keys, or any deviation from the official schema.
    """
    obj = load_json_strict(data, path)
    if not isinstance(obj, dict):
        raise DataError(f"top level must be an object with meta/train/test, got {type(obj).__name__}", path)
    missing = [k for k in ("meta", "train", "test") if k not in obj]
    if missing:
        raise DataError(f"missing top-level key(s) {missing} (expected meta, train, test)", path)
    meta = obj["meta"]
    if not isinstance(meta, dict):
        raise DataError(f"meta must be an object, got {type(meta).__name__}", path)
    for key in ("prefix", "normal_class"):
        if not isinstance(meta.get(key), str) or meta[key] == "":
            raise DataError(f"meta.{key} must be a non-empty string, got {meta.get(key)!r}", path)
    splits: dict[str, tuple[RealIADEntry, ...]] = {}
    for split in ("train", "test"):
        entries = obj[split]
        if not isinstance(entries, list):
            raise DataError(f"{split} must be a list of entries, got {type(entries).__name__}", path)
        splits[split] = tuple(_entry(e, split, i, path) for i, e in enumerate(entries))
    return RealIADIndex(meta["prefix"], meta["normal_class"], splits["train"], splits["test"], str(path))


def _camera_number(view: str) -> int:
    return int(view[1:])


def group_realiad_entries(
    entries: Sequence[RealIADEntry],
    *,
    normal_class: str,
    path: str | PathLike,
    split: str = "test",
    category: str | None = None,
    views: Sequence[str] | None = None,
    skip_incomplete: bool = False,
) -> tuple[list[tuple[str, str, dict[str, RealIADEntry]]], list[str], list[SkippedSample]]:
    """Group JSON entries into multi-view samples by the official sample key.

    Args:
        entries: one split of a parsed JSON, in any order.
        normal_class: ``meta.normal_class``.
        path: the JSON file (for messages).
        split: split name (for messages).
        category: if given, every entry's ``category`` must equal it.
        views: cameras to load, in this order; ``None`` = every camera in the split, by number.
        skip_incomplete: skip samples with a missing or duplicated view (listed in the third
            return value) instead of raising.

    Returns:
        ``(groups, view_names, skipped)``: ``groups`` is a list of ``(sample_key, defect,
        {camera: entry})`` sorted by key, each with exactly the cameras ``view_names``.

    Raises:
        DataError: a file name without a sample key, a sample whose views disagree on the
            anomaly class, an unknown view, or (without ``skip_incomplete``) a missing or
            duplicated view.
    """
    by_key: dict[str, dict[str, list[RealIADEntry]]] = {}
    for e in entries:
        if category is not None and e.category != category:
            raise DataError(
                f"{split}[{e.index}] has category {e.category!r}, expected {category!r} ({e.image_path})", path
            )
        name = re.split(r"[/\\]", e.image_path)[-1]
        m = SAMPLE_KEY_PATTERN.search(name)
        if m is None:
            raise DataError(
                f"{split}[{e.index}]: file name {name!r} has no Real-IAD sample key "
                "(<class>_<4 digits>_<OK|NG_CODE>_C<k>_...)",
                path,
            )
        by_key.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(e)

    present = sorted({cam for cams in by_key.values() for cam in cams}, key=_camera_number)
    if views is None:
        view_names = present
    else:
        if isinstance(views, str) or not isinstance(views, Sequence):
            raise ConfigError(f"views must be a list of camera names such as ['C1', 'C2'], got {views!r}")
        view_names = [str(v) for v in views]
        if len(set(view_names)) != len(view_names):
            raise ConfigError(f"views {view_names} name a camera more than once")
        unknown = [v for v in view_names if v not in present]
        if unknown:
            raise DataError(f"unknown view(s) {unknown} for split {split!r}; cameras present: {present}", path)

    groups: list[tuple[str, str, dict[str, RealIADEntry]]] = []
    skipped: list[SkippedSample] = []
    for key in sorted(by_key):
        cams = by_key[key]
        classes = sorted({e.anomaly_class for es in cams.values() for e in es})
        if len(classes) != 1:
            raise DataError(f"{split}: views of sample {key!r} disagree on anomaly_class: {classes}", path)
        problems = []
        missing = [v for v in view_names if v not in cams]
        if missing:
            problems.append(f"missing view(s) {missing}")
        dups = [v for v in view_names if len(cams.get(v, [])) > 1]
        if dups:
            detail = "; ".join(f"{v}: " + ", ".join(e.image_path for e in cams[v]) for v in dups)
            problems.append(f"duplicated view(s) {dups} ({detail})")
        if problems:
            reason = " and ".join(problems)
            if not skip_incomplete:
                raise DataError(
                    f"{split}: sample {key!r} has {reason}; pass skip_incomplete=True to skip such samples",
                    path,
                )
            # the views present, by their JSON path (resolved by the dataset): see SkippedSample.usable
            present = () if dups else tuple((v, cams[v][0].image_path) for v in view_names if v in cams)
            skipped.append(SkippedSample(key, reason, present))
            continue
        groups.append((key, classes[0], {v: cams[v][0] for v in view_names}))
    return groups, view_names, skipped


def _resolution_folder(resolution: str | int) -> str:
    text = str(resolution)
    if text.startswith("realiad_"):
        text = text[len("realiad_") :]
    if not _RESOLUTION.match(text):
        raise ConfigError(f"resolution must be 'raw' or an integer such as 256, got {resolution!r}")
    return f"realiad_{text}"


def _image_root(root: Path, resolution: str | int | None, category: str) -> Path:
    """The folder holding ``<prefix>/`` class folders."""
    if resolution is not None:
        folder = root / _resolution_folder(resolution)
        if folder.is_dir():
            return folder
        if root.name == folder.name or (root / category).is_dir():
            return root
        raise DataError(f"image folder {folder.name}/ not found (nor {category}/ directly in the root)", root)
    if (root / category).is_dir():
        return root
    found = sorted(p for p in root.glob("realiad_*") if p.is_dir() and _RESOLUTION.match(p.name[8:]))
    with_class = [p for p in found if (p / category).is_dir()]
    if len(with_class) == 1:
        return with_class[0]
    if not with_class:
        raise DataError(
            f"no image folder for class {category!r}: expected {category}/ here or in realiad_<resolution>/", root
        )
    raise DataError(
        f"several resolutions hold class {category!r} ({[p.name for p in with_class]}); pass resolution=", root
    )


def _json_candidates(root: Path, category: str, json_variant: str, image_root: Path | None) -> list[Path]:
    out = [root / json_variant / f"{category}.json", root / json_variant / json_variant / f"{category}.json"]
    if json_variant == "realiad_jsons":
        if image_root is not None:
            out.append(image_root / f"{category}.json")
        out.append(root / f"{category}.json")
    return out


def find_realiad_json(
    root: str | PathLike,
    category: str,
    *,
    json_variant: str = "realiad_jsons",
    resolution: str | int | None = None,
) -> Path:
    """Locate ``<category>.json`` of ``json_variant`` in one of the three official layouts.

    Looked up in this order: ``<root>/<variant>/<category>.json`` (flat),
    ``<root>/<variant>/<variant>/<category>.json`` (nested), and, for the default variant
    ``realiad_jsons`` only, ``<image root>/<category>.json`` next to ``<image root>/<category>/``.

    Raises:
        DataError: no JSON found (lists where it looked).
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError("data root is not a directory", root_p)
    try:
        image_root: Path | None = _image_root(root_p, resolution, category)
    except DataError:
        image_root = None
    candidates = _json_candidates(root_p, category, json_variant, image_root)
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c.relative_to(root_p)) if c.is_relative_to(root_p) else str(c) for c in candidates)
    raise DataError(f"no JSON for class {category!r} (variant {json_variant!r}); looked for {looked}", root_p)


def list_categories(
    root: str | PathLike, *, json_variant: str = "realiad_jsons", resolution: str | int | None = None
) -> list[str]:
    """Class names that have a JSON of ``json_variant`` under ``root`` (any layout), sorted."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError("data root is not a directory", root_p)
    names: set[str] = set()
    for folder in (root_p / json_variant, root_p / json_variant / json_variant):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json") if p.is_file())
    if json_variant == "realiad_jsons":
        folders = [root_p]
        if resolution is not None:
            folders.append(root_p / _resolution_folder(resolution))
        else:
            folders += [p for p in root_p.glob("realiad_*") if p.is_dir() and _RESOLUTION.match(p.name[8:])]
        for folder in folders:
            names.update(p.stem for p in folder.glob("*.json") if p.is_file() and (folder / p.stem).is_dir())
    return sorted(names)


class RealIADDataset(RecordDataset):
    """Real-IAD samples of one class and split: ``dataset[i]`` is a ``MultiViewSample``.

    ``images (V, 3, H, W)`` float32 in ``[0, 1]`` with views ordered by camera (C1..C5, or as
    given in ``views``), ``masks (V, H, W)`` bool, ``image_labels (V,)`` by the official rule,
    ``label = max(image_labels)``, ``defect`` = the anomaly class code (``"OK"`` for normal).

    Args:
        root: data set root (holding ``realiad_<res>/`` and the JSON folders) or the
            resolution folder itself.
        category: class name, e.g. ``"audiojack"``.
        split: ``"train"`` or ``"test"``.
        json_variant: ``"realiad_jsons"``, ``"realiad_jsons_sv"``, ``"realiad_jsons_fuiad_0.1"``, ...
        resolution: ``256``, ``512``, ``1024``, ``"raw"`` or any int (folder ``realiad_<res>``);
            ``None`` = ``root`` itself or the only ``realiad_<res>`` folder holding the class.
        image_size: resize to ``image_size x image_size`` (or ``(H, W)``): bilinear for images,
            nearest for masks. ``None`` keeps the file size.
        views: cameras to load, in this order (e.g. ``["C1", "C2"]``); ``None`` = all, by number.
        flips: load-time flips, ``{"C2": "lr"}`` or per class ``{"audiojack": {"C2": "lr"}}``
            (modes ``"lr"``, ``"ud"``, ``"lrud"``); files are never rewritten.
        skip_incomplete: skip samples with a missing or duplicated view (see ``.skipped`` and
            the warning) instead of raising :class:`DataError`.
        load_masks: return masks (labels are computed from masks either way).
        json_path: use this JSON file instead of looking it up.
        fast_jpeg: decode JPEGs at reduced scale before resizing (faster, slightly different).

    Attributes:
        samples: :class:`SampleRecord` list sorted by sample key (no images decoded).
        view_names: camera names in view order.
        skipped: :class:`SkippedSample` list (with ``skip_incomplete=True``).
        json_path: the JSON file read.  normal_class: ``meta.normal_class``.
    """

    def __init__(
        self,
        root: str | PathLike,
        category: str,
        *,
        split: str = "train",
        json_variant: str = "realiad_jsons",
        resolution: str | int | None = None,
        image_size: int | tuple[int, int] | None = None,
        views: Sequence[str] | None = None,
        flips: Mapping[str, Any] | None = None,
        skip_incomplete: bool = False,
        load_masks: bool = True,
        json_path: str | PathLike | None = None,
        fast_jpeg: bool = False,
    ) -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        root_p = Path(root)
        if json_path is None:
            jpath = find_realiad_json(root_p, category, json_variant=json_variant, resolution=resolution)
        else:
            jpath = Path(json_path)
        try:
            data = jpath.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read JSON: {exc.strerror or exc}", jpath) from exc
        index = parse_realiad_json(data, path=jpath)
        image_root = _image_root(root_p, resolution, index.prefix)
        class_dir = resolve_inside(image_root, index.prefix, source=jpath)
        if not class_dir.is_dir():
            raise DataError(f"class folder {index.prefix!r} (meta.prefix) not found in {image_root}", jpath)
        entries = index.train if split == "train" else index.test
        groups, view_names, skipped = group_realiad_entries(
            entries,
            normal_class=index.normal_class,
            path=jpath,
            split=split,
            category=category,
            views=views,
            skip_incomplete=skip_incomplete,
        )
        records = []
        for key, defect, cams in groups:
            image_paths, mask_paths, known = [], [], []
            if skip_incomplete:
                # files missing or unreadable on disk: skip the whole object (never shift views)
                bad = []
                for v in view_names:
                    problem = image_file_problem(resolve_inside(class_dir, cams[v].image_path, source=jpath))
                    if problem is not None:
                        bad.append(f"view {v}: {problem}")
                if bad:
                    skipped.append(SkippedSample(key, "; ".join(bad), tuple((v, cams[v].image_path) for v in view_names)))
                    continue
            for v in view_names:
                e = cams[v]
                img = resolve_inside(class_dir, e.image_path, source=jpath)
                if not img.is_file():
                    raise DataError(
                        f"{split}[{e.index}]: image file {img} not found (sample {key!r}, view {v!r}); "
                        "pass skip_incomplete=True to skip such samples",
                        jpath,
                    )
                image_paths.append(str(img))
                if e.mask_path is None:
                    mask_paths.append(None)
                else:
                    mask = resolve_inside(class_dir, e.mask_path, source=jpath)
                    if not mask.is_file():
                        raise DataError(f"{split}[{e.index}]: mask file {mask} not found", jpath)
                    mask_paths.append(str(mask))
                anomalous_class = e.anomaly_class != index.normal_class
                known.append(None if (anomalous_class and e.mask_path is not None) else 0)
            records.append(
                SampleRecord(
                    sample_id=key,
                    category=category,
                    split=split,
                    defect=defect,
                    view_names=tuple(view_names),
                    image_paths=tuple(image_paths),
                    mask_paths=tuple(mask_paths),
                    known_labels=tuple(known),
                    source=str(jpath),
                )
            )
        # skipped samples: keep only the views whose file resolves inside the class folder and is readable
        skipped = [SkippedSample(k.sample_id, k.reason, readable_views(
            k.usable, lambda raw: resolve_inside(class_dir, raw, source=jpath))) for k in skipped]
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
        self.category = category
        self.split = split
        self.json_path = str(jpath)
        self.normal_class = index.normal_class
        self.image_root = str(image_root)
        self._warn_skipped(str(jpath))

    def __repr__(self) -> str:
        return (
            f"RealIADDataset(category={self.category!r}, split={self.split!r}, samples={len(self)}, "
            f"views={self.view_names}, json={os.path.basename(self.json_path)!r})"
        )
