"""Opt-in realism of the generator: production lots, pose jitter and the cross-view FM defect."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from multiflow.errors import ConfigError
from multiflow.synth import generate_dataset, render_sample
from multiflow.synth.geometry import camera_rig
from multiflow.synth.defects import FACE_PALETTES

SIZE = 40


def test_realistic_samples_are_deterministic_per_seed():
    kw = dict(defect="FM", size=SIZE, sample_id=3, lots=4, pose_jitter=2.5)
    a, b = render_sample("toy_brick", seed=7, **kw), render_sample("toy_brick", seed=7, **kw)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.meta == b.meta
    c = render_sample("toy_brick", seed=8, **kw)
    assert not np.array_equal(a.images, c.images)


def test_defaults_do_not_draw_lots_or_move_poses():
    plain = render_sample("plastic_plug", size=SIZE, seed=1, sample_id=2)
    explicit = render_sample("plastic_plug", size=SIZE, seed=1, sample_id=2, lots=0, pose_jitter=1.0)
    assert np.array_equal(plain.images, explicit.images)
    assert "lot" not in plain.meta["instance"] and "pose_jitter" not in plain.meta["instance"]


def _pairwise(vectors: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(a - b)) for a, b in itertools.combinations(vectors, 2)]


def test_objects_of_one_lot_are_closer_in_colour_than_objects_of_different_lots():
    # the plug's housing colour is drawn per object (black / white / grey): compare within one colour
    by_lot: dict[tuple[str, int], list[np.ndarray]] = {}
    for sid in range(1, 61):
        s = render_sample("plastic_plug", size=16, n_views=1, seed=0, sample_id=sid, split="train", lots=3)
        inst = s.meta["instance"]
        albedo = np.log(np.asarray(inst["parts"]["housing"]["albedo"]))
        by_lot.setdefault((inst["colour"], inst["lot"]["lot"]), []).append(albedo)
    within = [d for v in by_lot.values() for d in _pairwise(v)]
    between = [float(np.linalg.norm(a - b)) for (k1, v1), (k2, v2) in itertools.combinations(by_lot.items(), 2)
               if k1[0] == k2[0] for a in v1 for b in v2]
    assert len({k[1] for k in by_lot}) == 3  # every lot drawn
    assert len(within) > 20 and len(between) > 20
    assert np.mean(between) > 1.5 * np.mean(within)
    # the lot's parameters are shared: the same lot index always has the same gain
    gains: dict[int, list] = {}
    for sid in (1, 2, 3, 4, 5, 6):
        lot = render_sample("toy_brick", size=16, n_views=1, seed=0, sample_id=sid, lots=2).meta["instance"]["lot"]
        gains.setdefault(lot["lot"], []).append(lot["gain"])
    assert all(all(g == v[0] for g in v) for v in gains.values())


def test_lots_change_rendered_colour_statistics():
    """Image-level: the mean object colour (top view, silhouette) clusters by lot."""
    stats: dict[int, list[np.ndarray]] = {}
    for sid in range(1, 25):
        s = render_sample("lock_nut", size=32, n_views=1, seed=4, sample_id=sid, split="train", lots=2)
        if s.meta["instance"]["metal"] != "nickel":
            continue
        rgb = s.images[0][s.silhouettes[0]].astype(float).mean(axis=0)
        stats.setdefault(s.meta["instance"]["lot"]["lot"], []).append(rgb / rgb.sum())  # chromaticity
    assert len(stats) == 2 and min(len(v) for v in stats.values()) >= 3
    within = np.mean([d for v in stats.values() for d in _pairwise(v)])
    between = np.mean([float(np.linalg.norm(a - b)) for a in stats[0] for b in stats[1]])
    assert between > 1.5 * within


def test_pose_jitter_moves_the_silhouette():
    def centroids(jitter: float) -> np.ndarray:
        out = []
        for sid in range(1, 13):
            sil = render_sample("toy_brick", size=SIZE, n_views=1, seed=2, sample_id=sid, pose_jitter=jitter).silhouettes[0]
            ys, xs = np.nonzero(sil)
            out.append((xs.mean(), ys.mean()))
        return np.asarray(out)

    one = render_sample("toy_brick", size=SIZE, n_views=1, seed=2, sample_id=1).silhouettes[0]
    three = render_sample("toy_brick", size=SIZE, n_views=1, seed=2, sample_id=1, pose_jitter=3.0).silhouettes[0]
    assert (one != three).sum() > 10  # the same object, placed differently
    c1, c3 = centroids(1.0), centroids(3.0)
    assert c3.std(axis=0).sum() > 2.0 * c1.std(axis=0).sum()


@pytest.mark.parametrize("family", sorted(FACE_PALETTES))
def test_face_mismatch_is_seen_only_from_its_side(family):
    cams = camera_rig(n_views=5, size=SIZE)
    opposite_seen = 0
    for seed in range(4):
        s = render_sample(family, defect="FM", size=SIZE, seed=seed, lots=3, pose_jitter=2.0)
        d, inst = s.meta["defect"], s.meta["instance"]
        area = np.array([int(m.sum()) for m in s.masks])
        assert area.max() > 0 and d["views"] == [n for n, a in zip(s.view_names, area) if a > 0]
        assert not (s.masks & ~s.silhouettes).any()
        # the top camera sees (almost) none of a side face (only what perspective shows at the rim)
        assert area[0] <= 0.1 * area.max()
        # a camera on the far side of the mismatched face sees none of it
        yaw = inst["yaw"]
        u_local = np.asarray(d["normal"])
        u = np.array([math.cos(yaw) * u_local[0] - math.sin(yaw) * u_local[1],
                      math.sin(yaw) * u_local[0] + math.cos(yaw) * u_local[1]])
        for cam, a in zip(cams[1:], area[1:]):
            w = cam.position[:2] - np.asarray(inst["offset"])
            w /= np.linalg.norm(w)
            if w @ u < -0.85:
                opposite_seen += 1
                assert a == 0, (family, seed, cam.name)
        assert (area > 0).sum() < len(cams)  # visibility differs between cameras
        # locally plausible: the face has a colour that normal objects of this lot have
        gain = np.asarray(inst["lot"]["gain"])
        palette = [np.asarray(c) * gain for c in FACE_PALETTES[family][1]]
        colour = np.asarray(d["colour"])
        assert min(np.abs(colour / p - 1).max() for p in palette) <= 0.041
        body = np.asarray(inst["parts"][FACE_PALETTES[family][0][0]]["albedo"])
        assert np.abs(colour - body).max() > 0.08
    assert opposite_seen >= 1  # the far-side check ran at least once


def test_generate_dataset_records_variation_and_refuses_to_mix(tmp_path):
    out = tmp_path / "ds"
    kw = dict(classes=["cap"], n_train=2, n_test_good=0, n_test_defect=2, size=24, n_views=3,
              defects=["FM", "CI"], progress=False)
    generate_dataset(out, variation="realistic", **kw)
    cfg = json.loads((out / "synth_meta" / ".parts" / "bottle_cap" / "config.json").read_text())
    assert cfg["lots"] == 4 and cfg["pose_jitter"] == 2.5
    meta = json.loads((out / "synth_meta" / "bottle_cap.json").read_text())
    assert meta["defect_codes"]["FM"] == "face_colour_mismatch"
    assert all("lot" in r["instance"] for r in meta["samples"])
    fm = [r for r in meta["samples"] if r["anomaly_class"] == "FM"]
    assert fm and all(e["mask_path"] is None or "NG/FM/" in e["mask_path"] for r in fm for e in r["entries"])
    generate_dataset(out, variation="realistic", **kw)  # resumes: same configuration
    with pytest.raises(ConfigError, match="another configuration"):
        generate_dataset(out, **kw)
    with pytest.raises(ConfigError, match="unknown variation"):
        generate_dataset(tmp_path / "x", variation="wild", **kw)
    with pytest.raises(ConfigError, match="lots"):
        generate_dataset(tmp_path / "y", lots=-1, **kw)


def test_cli_variation_options(tmp_path):
    from multiflow.cli import main

    out = tmp_path / "ds"
    rc = main(["synth", "--out", str(out), "--classes", "brick", "--train", "2", "--test-good", "0",
               "--test-defect", "1", "--defects", "FM", "--size", "24", "--views", "3", "--workers", "1",
               "--variation", "realistic", "--lots", "2", "--pose-jitter", "1.5"])
    assert rc == 0
    cfg = json.loads((out / "synth_meta" / ".parts" / "toy_brick" / "config.json").read_text())
    assert (cfg["lots"], cfg["pose_jitter"]) == (2, 1.5)
