"""Generate a synthetic multi-view inspection data set in Real-IAD's on-disk format.

On-disk tree written by :func:`generate_dataset` (``<size>`` e.g. 256, ``<cls>`` e.g. ``toy_brick``)::

    <out>/
      realiad_jsons/<cls>.json                     Real-IAD schema (train: normal only; test: all)
      realiad_<size>/<cls>/
        OK/S0001/<cls>_0001_OK_C1_<timestamp>.jpg  normal sample 0001, views C1..C<V>
        NG/<CODE>/S0001/<cls>_0001_NG_<CODE>_C3_<timestamp>.jpg
        NG/<CODE>/S0001/<cls>_0001_NG_<CODE>_C3_<timestamp>_mask.png   (0/255; only views seeing it)
        cameras.json                               camera rig + per-sample object placement (below)
      silhouettes_<size>/<cls>/<same relative path as the image, .png>  (0/255 object incl. foreign)
      synth_meta/<cls>.json                        parameters, seed, cameras, per-sample instances
      synth_meta/.parts/<cls>/...                  per-sample records (resume bookkeeping)

Sample ids: normal samples are numbered ``0001..`` over train then test-good (they share the ``OK``
folder); defective samples are numbered ``0001..`` within each defect code. Every sample's randomness
comes from ``SeedSequence([seed, crc32(class), split, code, id])``, so the output does not depend on
the number of workers, the order of execution, or on which other classes are generated.
A sample is complete once its record in ``.parts`` exists (written last, atomically); a rerun with
the same configuration skips complete samples, and the JSON files are written at the end.

``cameras.json`` (:func:`camera_rig_record`, format ``multiflow.camera_rig`` version 1, read by
:func:`multiflow.data.cameras.load_camera_rig`, documented in ``docs/data-format.md``): per view the
intrinsics ``fx, fy, cx, cy`` at the image size and the world-to-camera extrinsics ``R, t``; per
sample key the object's placement on the tray (object-to-world ``R, t``: a yaw about ``z`` and an
offset in the tray plane ``z = 0``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiflow._atomic import write_bytes, write_json
from multiflow.errors import ConfigError
from multiflow.synth.geometry import camera_rig
from multiflow.synth.render import render_view
from multiflow.synth.defects import ALL_DEFECT_CODES, DEFECT_CODES, sample_defect
from multiflow.synth.families import FAMILIES, canonical_class, label_of
from multiflow.synth.scene import sample_scene
from multiflow.synth.variation import Lot, apply_lot, apply_pose_jitter, lot_variation

GENERATOR_VERSION = "1"
DEFAULT_CLASSES: tuple[str, ...] = tuple(FAMILIES)
DEFAULT_DEFECTS: tuple[str, ...] = tuple(DEFECT_CODES)
_SPLIT_CODE = {"train": 0, "test": 1}
_LOT_TAG = 0x4C4F54  # "LOT": seed-sequence tag of the per-lot parameters
#: ``variation`` presets: (lots, pose_jitter). "default" is the original generator, byte for byte.
VARIATIONS: dict[str, tuple[int, float]] = {"default": (0, 1.0), "realistic": (4, 2.5)}
_BASE_TIME = _dt.datetime(2024, 3, 4, 8, 0, 0)


@dataclass
class RenderedSample:
    """One object seen by ``V`` cameras, in memory.

    ``images (V, H, W, 3) uint8``, ``masks (V, H, W) bool`` (all False for normal samples and for
    views that do not see the defect), ``silhouettes (V, H, W) bool``, ``view_names`` ``["C1", ...]``,
    ``timestamps`` one 14-digit string per view, ``meta`` the JSON-able instance/defect record.
    """

    class_name: str
    anomaly_class: str
    sample_id: int
    images: np.ndarray
    masks: np.ndarray
    silhouettes: np.ndarray
    view_names: list[str]
    timestamps: list[str]
    meta: dict

    @property
    def key(self) -> str:
        """Real-IAD sample key, e.g. ``toy_brick_0001_NG_HS`` / ``toy_brick_0001_OK``."""
        tag = "OK" if self.anomaly_class == "OK" else f"NG_{self.anomaly_class}"
        return f"{self.class_name}_{self.sample_id:04d}_{tag}"


def _seed_sequence(seed: int, class_name: str, split: str, code: str, sample_id: int) -> np.random.SeedSequence:
    code_num = int.from_bytes(code.encode(), "big")
    return np.random.SeedSequence([int(seed), zlib.crc32(class_name.encode()), _SPLIT_CODE[split], code_num, sample_id])


def lot_of(seed: int, class_name: str, split: str, code: str, sample_id: int, lots: int) -> int:
    """The production lot (``0..lots-1``) of one sample; its own seed-sequence child, so turning lots
    on does not change any other random draw of the sample."""
    ss = _seed_sequence(seed, class_name, split, code, sample_id).spawn(4)[3]
    return int(np.random.default_rng(ss).integers(lots))


def _lot(seed: int, class_name: str, index: int) -> Lot:
    """Lot ``index``'s parameters: shared by every object of that lot, train and test alike."""
    lot_ss = np.random.SeedSequence([int(seed), zlib.crc32(class_name.encode()), _LOT_TAG, index])
    return lot_variation(np.random.default_rng(lot_ss), index)


def is_labelled(seed: int, class_name: str, split: str, code: str, sample_id: int) -> bool:
    """Whether a sample is of the labelled variant (half of them, when the line has label variants);
    its own seed-sequence child, so turning variants on does not change any other random draw."""
    ss = _seed_sequence(seed, class_name, split, code, sample_id).spawn(5)[4]
    return bool(np.random.default_rng(ss).random() < 0.5)


def render_sample(
    class_name: str, *, defect: str | None = None, size: int = 64, n_views: int = 5, seed: int = 0,
    sample_id: int = 1, split: str = "test", lots: int = 0, pose_jitter: float = 1.0, labels: bool = False,
) -> RenderedSample:
    """Render one sample of ``class_name`` from all ``n_views`` cameras, in memory.

    ``defect``: a code of :data:`multiflow.synth.defects.ALL_DEFECT_CODES` or ``None`` for a normal
    object. A defect is redrawn (deterministically) until at least one view sees it.
    ``lots > 0``: the object belongs to one of ``lots`` production lots (:func:`lot_of`), whose colour
    and gloss shift (:func:`multiflow.synth.variation.lot_variation`) is shared by every object of that
    lot, train and test alike. ``pose_jitter``: scale of the yaw / tray-offset deviation (1 = default).
    ``lots=0, pose_jitter=1`` renders exactly what earlier versions rendered.
    ``labels``: the line makes a labelled and an unlabelled variant (:func:`is_labelled`,
    :func:`~multiflow.synth.families.label_of`); needed by the LB defect. ML needs ``lots >= 2``.
    """
    class_name = canonical_class(class_name)
    code = "OK" if defect is None else defect
    if code != "OK" and code not in ALL_DEFECT_CODES:
        raise ValueError(f"unknown defect code {code!r}; known: {sorted(ALL_DEFECT_CODES)}")
    if code == "ML" and lots < 2:
        raise ValueError("ML (mixed lot) needs production lots: lots >= 2 (variation='realistic')")
    if code == "LB" and not labels:
        raise ValueError("LB (one-sided label) needs the label variants: labels=True")
    ss_scene, ss_defect, ss_noise = _seed_sequence(seed, class_name, split, code, sample_id).spawn(3)
    scene = sample_scene(class_name, np.random.default_rng(ss_scene))
    if lots > 0:
        apply_lot(scene, _lot(seed, class_name, lot_of(seed, class_name, split, code, sample_id, lots)))
    apply_pose_jitter(scene, float(pose_jitter))
    if labels and (code == "LB" or is_labelled(seed, class_name, split, code, sample_id)):
        scene.label = label_of(class_name, scene.parts, scene.params)
        scene.params["label"] = scene.label.to_dict()
    all_lots = [_lot(seed, class_name, i) for i in range(lots)] if code == "ML" else []
    cams = camera_rig(n_views=n_views, size=size)
    rays = [cam.rays() for cam in cams]
    noise_rng = np.random.default_rng(ss_noise)
    noise_seeds = [int(s) for s in noise_rng.integers(0, 2**31 - 1, n_views)]
    t0 = _BASE_TIME + _dt.timedelta(seconds=int(noise_rng.integers(0, 120 * 86400)))
    timestamps = [(t0 + _dt.timedelta(seconds=2 * k)).strftime("%Y%m%d%H%M%S") for k in range(n_views)]
    defect_rng = np.random.default_rng(ss_defect)
    attempts = 0
    while True:
        if code != "OK":
            d = sample_defect(scene, code, defect_rng, lots=all_lots)
            if d.width:  # keep thin defects at least ~1.2 px wide at this resolution
                d.width = max(d.width, 2.4 / size)
        views = [render_view(scene, cam, noise_seed=s, rays=r) for cam, s, r in zip(cams, noise_seeds, rays)]
        attempts += 1
        if code == "OK" or any(v.mask.any() for v in views) or attempts >= 20:
            break
    masks = np.stack([v.mask for v in views])
    if code != "OK" and not masks.any():
        raise RuntimeError(f"{class_name}: no view sees the {code} defect after {attempts} attempts")  # pragma: no cover
    names = [c.name for c in cams]
    meta = {
        "instance": scene.params,
        "defect": None,
    }
    if scene.defect is not None:
        meta["defect"] = scene.defect.to_dict() | {
            "views": [n for n, m in zip(names, masks) if m.any()],
            "pixel_area": {n: int(m.sum()) for n, m in zip(names, masks)},
            "attempts": attempts,
        }
        if scene.removed >= 0:
            meta["defect"]["removed_part"] = scene.parts[scene.removed].name
        meta["defect"]["part_name"] = scene.parts[scene.defect.part].name
    return RenderedSample(
        class_name=class_name, anomaly_class=code, sample_id=sample_id,
        images=np.stack([v.image for v in views]), masks=masks,
        silhouettes=np.stack([v.silhouette for v in views]), view_names=names, timestamps=timestamps, meta=meta,
    )


# ----------------------------------------------------------------------------------- writing


def camera_rig_record(class_name: str, cameras: Sequence, records: Sequence[dict]) -> dict:
    """The ``cameras.json`` side file of one class (format in ``docs/data-format.md``): ``cameras``
    the rig (:func:`~multiflow.synth.geometry.camera_rig`), ``records`` the samples' records (``key``
    and ``instance`` with ``yaw`` and ``offset``)."""
    views = []
    for cam in cameras:
        K = cam.K
        views.append({"name": cam.name, "width": int(cam.size), "height": int(cam.size),
                      "fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                      "R": (cam.R.round(10) + 0.0).tolist(),  # + 0.0: no -0.0 in the file
                      "t": (cam.t.round(10) + 0.0).tolist()})
    objects = {}
    for r in records:
        yaw = float(r["instance"]["yaw"])
        ox, oy = (float(v) for v in r["instance"]["offset"])
        c, s = np.cos(yaw), np.sin(yaw)
        objects[r["key"]] = {"yaw": yaw, "R": [[float(c), float(-s), 0.0], [float(s), float(c), 0.0], [0.0, 0.0, 1.0]],
                             "t": [ox, oy, 0.0]}
    return {
        "format": "multiflow.camera_rig", "version": 1, "class": class_name,
        "frames": "world: z up, support plane z = 0; camera: x right, y down, z forward; "
                  "x_cam = R x_world + t; u = fx x/z + cx (column), v = fy y/z + cy (row), pixel (i, j) "
                  "covers [i, i + 1) x [j, j + 1); object: x_world = R x_object + t",
        "views": views,
        "objects": objects,
    }


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _jpg(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def image_relpath(class_name: str, anomaly_class: str, sample_id: int, view: str, timestamp: str) -> str:
    """Image path relative to ``realiad_<size>/<class>/`` (Real-IAD layout)."""
    sid = f"{sample_id:04d}"
    if anomaly_class == "OK":
        return f"OK/S{sid}/{class_name}_{sid}_OK_{view}_{timestamp}.jpg"
    return f"NG/{anomaly_class}/S{sid}/{class_name}_{sid}_NG_{anomaly_class}_{view}_{timestamp}.jpg"


@dataclass(frozen=True)
class _Job:
    out: str
    class_name: str
    split: str
    code: str
    sample_id: int
    size: int
    n_views: int
    seed: int
    lots: int = 0
    pose_jitter: float = 1.0
    labels: bool = False

    @property
    def record_path(self) -> Path:
        tag = "OK" if self.code == "OK" else f"NG_{self.code}"
        return Path(self.out) / "synth_meta" / ".parts" / self.class_name / f"{self.class_name}_{self.sample_id:04d}_{tag}.json"


def _run_job(job: _Job) -> dict:
    """Render and write one sample (images, masks, silhouettes), then its record; skip if done."""
    rec_path = job.record_path
    if rec_path.exists():
        try:
            return json.loads(rec_path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged record: render the sample again
    s = render_sample(job.class_name, defect=None if job.code == "OK" else job.code, size=job.size,
                      n_views=job.n_views, seed=job.seed, sample_id=job.sample_id, split=job.split,
                      lots=job.lots, pose_jitter=job.pose_jitter, labels=job.labels)
    out = Path(job.out)
    img_root = out / f"realiad_{job.size}" / job.class_name
    sil_root = out / f"silhouettes_{job.size}" / job.class_name
    entries = []
    for v, view in enumerate(s.view_names):
        rel = image_relpath(job.class_name, s.anomaly_class, job.sample_id, view, s.timestamps[v])
        write_bytes(img_root / rel, _jpg(s.images[v]))
        write_bytes(sil_root / (rel[:-4] + ".png"), _png(s.silhouettes[v].astype(np.uint8) * 255))
        mask_rel = None
        if s.masks[v].any():
            mask_rel = rel[:-4] + "_mask.png"
            write_bytes(img_root / mask_rel, _png(s.masks[v].astype(np.uint8) * 255))
        entries.append({"category": job.class_name, "anomaly_class": s.anomaly_class,
                        "image_path": rel, "mask_path": mask_rel})
    record = {
        "key": s.key, "split": job.split, "sample_id": job.sample_id, "anomaly_class": s.anomaly_class,
        "entries": entries, **s.meta,
    }
    write_json(rec_path, record, indent=1)
    return record


def _plan(class_name: str, out: str, n_train: int, n_test_good: int, n_test_defect: int,
          defects: Sequence[str], size: int, n_views: int, seed: int, lots: int = 0,
          pose_jitter: float = 1.0, labels: bool = False) -> list[_Job]:
    var = (lots, pose_jitter, labels)
    jobs = [_Job(out, class_name, "train", "OK", i + 1, size, n_views, seed, *var) for i in range(n_train)]
    jobs += [_Job(out, class_name, "test", "OK", n_train + i + 1, size, n_views, seed, *var)
             for i in range(n_test_good)]
    counts: dict[str, int] = {}
    for i in range(n_test_defect):
        code = defects[i % len(defects)]
        counts[code] = counts.get(code, 0) + 1
        jobs.append(_Job(out, class_name, "test", code, counts[code], size, n_views, seed, *var))
    return jobs


def generate_dataset(
    out: str | os.PathLike,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    n_train: int = 20,
    n_test_good: int = 10,
    n_test_defect: int = 18,
    size: int = 256,
    n_views: int = 5,
    seed: int = 0,
    workers: int = 1,
    defects: Sequence[str] = DEFAULT_DEFECTS,
    progress: bool = True,
    variation: str = "default",
    lots: int | None = None,
    pose_jitter: float | None = None,
) -> dict:
    """Write a synthetic multi-view data set in Real-IAD's format under ``out`` (see module docstring).

    Test defects cycle through ``defects`` (so 18 defective samples = 2 of each of the 9 codes).
    ``workers > 1`` renders samples in that many ``spawn`` processes (a script calling this must use
    the ``if __name__ == "__main__":`` guard); the output is byte-identical for any ``workers``.
    Returns a summary ``{"classes": {cls: {"train": n_images, "test": n_images, "json": path}}}``.
    Raises :class:`ConfigError` for invalid arguments or when ``out`` already holds a data set made
    with another configuration.

    ``variation``: a preset of :data:`VARIATIONS` (``"default"``: the original generator, byte for
    byte; ``"realistic"``: 4 production lots and 2.5x pose jitter); ``lots`` / ``pose_jitter``
    override the preset's values (see :func:`render_sample`). Cross-view defect codes
    (:data:`multiflow.synth.defects.CROSS_VIEW_CODES`: ``FM``, ``ML``, ``LB``) may be listed in
    ``defects``; ``ML`` needs at least 2 lots, ``LB`` turns the label variants on for every sample of
    the data set (normal ones too: half of them are labelled).
    """
    from tqdm import tqdm

    try:
        classes = [canonical_class(c) for c in classes]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError(f"classes must be a non-empty list without repeats, got {classes}")
    bad = [c for c in defects if c not in ALL_DEFECT_CODES]
    if bad or not defects:
        raise ConfigError(f"unknown defect codes {bad}; known: {sorted(ALL_DEFECT_CODES)}")
    if variation not in VARIATIONS:
        raise ConfigError(f"unknown variation {variation!r}; known: {sorted(VARIATIONS)}")
    lots = VARIATIONS[variation][0] if lots is None else int(lots)
    pose_jitter = VARIATIONS[variation][1] if pose_jitter is None else float(pose_jitter)
    if not 0 <= lots <= 1000:
        raise ConfigError(f"lots must be in 0..1000 (0: no lots), got {lots}")
    if not 0.0 <= pose_jitter <= 5.0:
        raise ConfigError(f"pose_jitter must be in 0..5, got {pose_jitter}")
    if "ML" in defects and lots < 2:
        raise ConfigError(f"defect ML (mixed lot) needs production lots: variation 'realistic' or lots >= 2, "
                          f"got lots={lots}")
    labels = "LB" in defects
    if min(n_train, n_test_good, n_test_defect) < 0:
        raise ConfigError("sample counts must be >= 0")
    if n_train + n_test_good > 9999 or n_test_defect > 9999:
        raise ConfigError("Real-IAD sample ids have 4 digits: at most 9999 samples per folder")
    if not 16 <= size <= 4096:
        raise ConfigError(f"size must be in 16..4096, got {size}")
    if not 1 <= n_views <= 9:
        raise ConfigError(f"views must be in 1..9, got {n_views}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    config = {
        "generator": "multiflow.synth", "version": GENERATOR_VERSION, "seed": int(seed), "size": int(size),
        "n_views": int(n_views), "n_train": int(n_train), "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect), "defects": list(defects),
    }
    if (lots, pose_jitter) != VARIATIONS["default"]:  # absent for default data: older folders still resume
        config |= {"lots": lots, "pose_jitter": pose_jitter}
    jobs: list[_Job] = []
    for cls in classes:
        cfg_path = out / "synth_meta" / ".parts" / cls / "config.json"
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{cfg_path}: unreadable generator config ({exc}); delete {out} and rerun") from None
            if old != config:
                diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
                raise ConfigError(f"{cfg_path}: {out} holds {cls} generated with another configuration "
                                  f"(old, new): {diff}; use another --out or the same options")
        else:
            write_json(cfg_path, config, indent=1)
        jobs += _plan(cls, str(out), n_train, n_test_good, n_test_defect, defects, size, n_views, seed,
                      lots, pose_jitter, labels)

    records: list[dict] = []
    bar = tqdm(total=len(jobs), unit="sample", desc="synth", disable=not progress)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            records.append(_run_job(job))
            bar.update()
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for rec in pool.imap(_run_job, jobs, chunksize=1):
                records.append(rec)
                bar.update()
    bar.close()

    cams = [c.to_dict() for c in camera_rig(n_views=n_views, size=size)]
    summary: dict = {"classes": {}}
    for cls in classes:
        recs = [r for j, r in zip(jobs, records) if j.class_name == cls]
        train = [e for r in recs if r["split"] == "train" for e in r["entries"]]
        test = [e for r in recs if r["split"] == "test" for e in r["entries"]]
        meta = {
            "config": config | {"class": cls},
            "seed": int(seed),
            "coordinate_frame": "world z up, tray z=0; x_cam = R x_world + t; pixel ~ K x_cam",
            "cameras": cams,
            "defect_codes": {c: ALL_DEFECT_CODES[c] for c in dict.fromkeys([*DEFECT_CODES, *defects])},
            "image_root": f"realiad_{size}/{cls}",
            "silhouette_root": f"silhouettes_{size}/{cls}",
            "samples": [{k: v for k, v in r.items()} for r in recs],
        }
        write_json(out / "synth_meta" / f"{cls}.json", meta, indent=1)
        write_json(out / f"realiad_{size}" / cls / "cameras.json",
                   camera_rig_record(cls, camera_rig(n_views=n_views, size=size), recs), indent=1)
        json_path = out / "realiad_jsons" / f"{cls}.json"
        write_json(json_path, {"meta": {"prefix": cls, "normal_class": "OK"}, "train": train, "test": test}, indent=1)
        summary["classes"][cls] = {"train": len(train), "test": len(test), "json": str(json_path)}
    return summary
