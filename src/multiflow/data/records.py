"""Lightweight sample records and the dataset base class every multi-view source shares.

A :class:`SampleRecord` describes one multi-view sample *without decoding any image*: its id,
defect, files per view (in view order) and how each view's label is decided. Other code keys
caches by ``record.files`` (the image paths in view order).

Label rule (official Real-IAD rule, generalised): view ``v`` is anomalous iff
``known_labels[v] == 1``, or ``known_labels[v] is None`` and its mask is non-empty. Sources set
``known_labels[v] = 0`` for normal views and for views without a mask path (Real-IAD), and
``None`` where the mask decides. The sample label is the max over its views.

:class:`RecordDataset` turns records into :class:`~multiflow.data.sample.MultiViewSample`
objects (``images (V, 3, H, W)``, ``masks (V, H, W)``), applying resize and flips on load.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from multiflow.data.images import check_flip_mode, flips_for, read_image_array, read_mask_array
from multiflow.data.sample import MultiViewSample
from multiflow.errors import ConfigError, DataError

__all__ = ["RecordDataset", "SampleRecord", "SkippedSample", "image_file_problem", "readable_views", "resolve_flips"]


@dataclass(frozen=True)
class SampleRecord:
    """One multi-view sample on disk (no pixels).

    Attributes:
        sample_id: unique key of the sample inside its split (Real-IAD: the official sample key,
            e.g. ``"audiojack_0001_NG_BX"``; folder/manifest: ``"<defect>/<sample_id>"``).
        category: object class (Real-IAD class, or the folder/manifest's category name).
        split: ``"train"``, ``"test"`` or a user split name.
        defect: defect code/name; the normal class name (``"OK"`` / ``"good"``) for normal samples.
        view_names: camera names in view order, length ``V``.
        image_paths: absolute image file per view, length ``V``.
        mask_paths: absolute mask file per view or ``None``, length ``V``.
        known_labels: per view ``0``/``1`` when the label does not depend on the mask, ``None``
            when it is ``1`` iff the mask is non-empty.
        source: the file or folder that listed this sample (for error messages).
    """

    sample_id: str
    category: str
    split: str
    defect: str
    view_names: tuple[str, ...]
    image_paths: tuple[str, ...]
    mask_paths: tuple[str | None, ...]
    known_labels: tuple[int | None, ...]
    source: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        """The image files in view order (a stable cache key)."""
        return self.image_paths

    @property
    def num_views(self) -> int:
        return len(self.view_names)


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out with ``skip_incomplete=True``: its id and why.

    ``usable``: the views of a sample with missing or unreadable view files that can still be
    read, as ``(view name, image file)`` pairs in view order; a model trained for missing views
    scores the object on them (``multiflow predict``). Empty when a view is duplicated (which file
    is the view is ambiguous) or when no view is readable.
    """

    sample_id: str
    reason: str
    usable: tuple[tuple[str, str], ...] = ()


def readable_views(candidates: Sequence[tuple[str, object]], resolve) -> tuple[tuple[str, str], ...]:
    """The ``(view, file)`` pairs of ``candidates`` (``(view, raw path)``) whose file ``resolve(raw)``
    gives inside the data root and :func:`image_file_problem` finds readable."""
    out = []
    for view, raw in candidates:
        try:
            path = resolve(raw)
        except DataError:
            continue  # outside the data root: not a usable view
        if image_file_problem(path) is None:
            out.append((view, str(path)))
    return tuple(out)


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why an image file cannot be used, or None: missing, not a file, or a header PIL cannot read.

    Only the header is parsed (no pixels are decoded), so this is cheap enough for index time.
    """
    from PIL import Image, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.exists(p):
        return f"image file {p} not found"
    if not os.path.isfile(p):
        return f"image file {p} is not a regular file"
    try:
        with Image.open(p) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"image file {p} unreadable ({type(exc).__name__}: {exc})"
    if w < 1 or h < 1:
        return f"image file {p} has an empty size {w}x{h}"
    return None


def resolve_flips(flips: Mapping[str, object] | None, *, category: str, view_names: Sequence[str]) -> dict[str, str]:
    """Normalise a flip specification to ``{view: mode}`` for one category.

    ``flips`` is either a per-view table ``{"C2": "lr"}`` (applies to every category) or a
    per-category table ``{"audiojack": {"C2": "lr"}, ...}`` (categories not listed get no flips).
    Modes are those of :data:`multiflow.data.images.FLIP_MODES`.

    Raises:
        ConfigError: a mode that is not a string flip mode, or a view that is not loaded.
    """
    if not flips:
        return {}
    if not isinstance(flips, Mapping):
        raise ConfigError(f"flips must be a mapping, got {type(flips).__name__}")
    values = list(flips.values())
    if all(isinstance(v, Mapping) for v in values):
        table = flips.get(category, {}) or {}
    elif all(isinstance(v, str) for v in values):
        table = flips
    else:
        raise ConfigError(
            f"flips must be {{view: mode}} or {{category: {{view: mode}}}}, not a mix of both: {dict(flips)!r}"
        )
    out: dict[str, str] = {}
    for view, mode in table.items():  # type: ignore[union-attr]
        if not isinstance(mode, str):
            raise ConfigError(f"flip mode for view {view!r} must be a string, got {mode!r}")
        if view not in view_names:
            raise ConfigError(f"flips name view {view!r}, which is not among the loaded views {list(view_names)}")
        out[str(view)] = check_flip_mode(mode)
    return out


def check_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``None``, a square side or ``(H, W)`` -> ``(H, W)`` or ``None``; :class:`ConfigError` if invalid."""
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        raise ConfigError(f"image_size must be an int or (H, W), got {image_size!r}")
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        try:
            h, w = image_size
            hw = (int(h), int(w))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"image_size must be an int or (H, W), got {image_size!r}") from exc
    if hw[0] <= 0 or hw[1] <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return hw


class RecordDataset(Dataset):
    """A torch ``Dataset`` over :class:`SampleRecord` objects; subclasses build the records.

    ``dataset[i]`` decodes the ``V`` images of record ``i`` and returns a
    :class:`~multiflow.data.sample.MultiViewSample` with ``images (V, 3, H, W)`` float32 in
    ``[0, 1]``, ``masks (V, H, W)`` bool (all-False for views without a mask; ``None`` when
    ``load_masks=False``), ``image_labels (V,)`` int64 and ``label = max(image_labels)``.

    Attributes:
        samples: the records, in a deterministic order (sorted by ``sample_id``).
        view_names: camera names in view order (the order of the view axis ``V``).
        skipped: samples left out by ``skip_incomplete=True`` (empty otherwise).
    """

    def __init__(
        self,
        *,
        samples: Sequence[SampleRecord],
        view_names: Sequence[str],
        image_size: int | tuple[int, int] | None = None,
        flips: Mapping[str, str] | None = None,
        load_masks: bool = True,
        fast_jpeg: bool = False,
        skipped: Sequence[SkippedSample] = (),
    ) -> None:
        self.samples: list[SampleRecord] = list(samples)
        self.view_names: list[str] = list(view_names)
        self.image_size = check_image_size(image_size)
        self.flips: dict[str, str] = dict(flips or {})
        self.load_masks = bool(load_masks)
        self.fast_jpeg = bool(fast_jpeg)
        self.skipped: list[SkippedSample] = list(skipped)
        self._label_cache: dict[int, tuple[int, ...]] = {}

    def _warn_skipped(self, where: str) -> None:
        if self.skipped:
            shown = ", ".join(f"{s.sample_id} ({s.reason})" for s in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"{where}: skipped {len(self.skipped)} incomplete/duplicated sample(s): {shown}{more}; "
                "see the dataset's .skipped list",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.samples)

    def image_labels(self, index: int) -> tuple[int, ...]:
        """Per-view labels of sample ``index`` (reads only the masks that decide it; cached)."""
        if index in self._label_cache:
            return self._label_cache[index]
        rec = self.samples[index]
        labels = []
        for known, mpath in zip(rec.known_labels, rec.mask_paths, strict=True):
            if known is not None:
                labels.append(int(known))
            elif mpath is None:
                labels.append(0)
            else:
                _, nonempty = read_mask_array(mpath)
                labels.append(int(nonempty))
        out = tuple(labels)
        self._label_cache[index] = out
        return out

    def labels(self) -> torch.Tensor:
        """Sample labels ``(N,)`` int64 (max over views), reading masks only where needed."""
        return torch.tensor([max(self.image_labels(i)) for i in range(len(self))], dtype=torch.int64)

    def __getitem__(self, index: int) -> MultiViewSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        index = index % len(self)
        rec = self.samples[index]
        flips = flips_for(self.flips, rec.view_names)
        # Assembled in numpy: small multi-threaded torch ops (stack, zeros) cost more than the
        # decoding when the cores are shared; torch.from_numpy at the end does not copy.
        images: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        labels: list[int] = []
        for v in range(rec.num_views):
            img, native = read_image_array(
                rec.image_paths[v], size=self.image_size, flip=flips[v], fast_jpeg=self.fast_jpeg
            )
            images.append(img)
            known, mpath = rec.known_labels[v], rec.mask_paths[v]
            mask = None
            nonempty = False
            if mpath is not None and (self.load_masks or known is None):
                mask, nonempty = read_mask_array(mpath, expected_size=native, size=self.image_size, flip=flips[v])
            labels.append(int(known) if known is not None else int(nonempty))
            if self.load_masks:
                masks.append(mask if mask is not None else np.zeros(img.shape[-2:], dtype=bool))
        sizes = {t.shape for t in images}
        if len(sizes) > 1:
            raise DataError(
                f"sample {rec.sample_id!r}: views have different image sizes {sorted(sizes)}; "
                "pass image_size to resize them to one size",
                rec.image_paths[0],
            )
        self._label_cache.setdefault(index, tuple(labels))
        image_labels = torch.tensor(labels, dtype=torch.int64)
        return MultiViewSample(
            images=torch.from_numpy(np.stack(images)),
            image_labels=image_labels,
            label=max(labels) if labels else 0,
            defect=rec.defect,
            sample_id=rec.sample_id,
            view_names=list(rec.view_names),
            image_paths=list(rec.image_paths),
            masks=torch.from_numpy(np.stack(masks)) if self.load_masks else None,
            mask_paths=list(rec.mask_paths),
            category=rec.category,
        )


def user_known_labels(defect: str, normal_name: str, mask_paths: Sequence[str | None]) -> tuple[int | None, ...]:
    """Label rule for the folder and manifest formats (users' own lines).

    * normal sample (``defect == normal_name``): every view 0;
    * defect sample with at least one mask: a view is anomalous iff its mask exists and is
      non-empty (the Real-IAD rule; a view without a mask does not show the defect);
    * defect sample without any mask: the defect cannot be located, so every view is labelled 1
      (the sample label, max over views, is then 1 as the folder says).
    """
    if defect == normal_name:
        return tuple(0 for _ in mask_paths)
    if all(m is None for m in mask_paths):
        return tuple(1 for _ in mask_paths)
    return tuple(None if m is not None else 0 for m in mask_paths)
