"""The renderer (multiflow.synth.render) and the in-memory sample API (render_sample)."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.synth import DEFECT_CODES, FAMILIES, render_sample
from multiflow.synth.geometry import camera_rig
from multiflow.synth.render import render_view
from multiflow.synth.defects import Defect, sample_defect
from multiflow.synth.scene import sample_scene

SIZE = 64


def _scene_with_defect(anchor, normal, part=0, code="ZW", size=0.12):
    scene = sample_scene("toy_brick", np.random.default_rng(7))
    scene.yaw, scene.offset = 0.0, np.zeros(2, np.float32)
    n = np.asarray(normal, np.float32)
    t = np.cross(n, [0.3, 0.5, 0.8]).astype(np.float32)
    scene.defect = Defect(code, np.asarray(anchor, np.float32), n, t / np.linalg.norm(t), part, size=size,
                          contrast=1.0, colour=np.array([0.02, 0.02, 0.02], np.float32))
    return scene


def cast_all(scene, origins, directions):
    """Nearest hit distance ``(N,)`` over every visible part (incl. foreign objects), brute force."""
    best = np.full(origins.shape[0], np.inf, np.float32)
    for part in scene.visible_parts():
        t, _ = part.prim.hit(origins.astype(np.float32), directions.astype(np.float32))
        best = np.minimum(best, t)
    return best


def _body_top_z(scene):
    return float(scene.parts[0].prim.hi[2])


def test_defect_on_top_face_shows_in_top_view_and_not_on_a_back_face():
    scene = _scene_with_defect((0, 0, 0), (0, 0, 1))
    scene.defect.anchor[2] = _body_top_z(scene)
    cams = camera_rig(n_views=5, size=SIZE)
    views = [render_view(scene, c, noise_seed=0) for c in cams]
    assert views[0].mask.sum() > 10  # C1 (top) sees a stain in the middle of the top face
    # a stain on the -y side face: C1 (looking straight down) cannot see it, the camera on -y does
    side = _scene_with_defect((0, float(scene.parts[0].prim.lo[1]), 0.15), (0, -1, 0))
    views = [render_view(side, c, noise_seed=0) for c in cams]
    areas = [int(v.mask.sum()) for v in views]
    facing = [i for i, c in enumerate(cams) if c.position[1] < -1.0]
    assert areas[0] == 0
    assert all(areas[i] > 5 for i in facing)
    behind = [i for i, c in enumerate(cams) if c.position[1] > 1.0]
    assert all(areas[i] == 0 for i in behind)


def test_masks_change_pixels_and_match_the_projected_anchor():
    scene = _scene_with_defect((0, 0, 0), (0, 0, 1))
    scene.defect.anchor[2] = _body_top_z(scene)
    clean = sample_scene("toy_brick", np.random.default_rng(7))
    clean.yaw, clean.offset = 0.0, np.zeros(2, np.float32)
    for cam in camera_rig(n_views=5, size=SIZE):
        a = render_view(scene, cam, noise_seed=1)
        b = render_view(clean, cam, noise_seed=1)
        diff = np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2) > 0
        assert np.array_equal(diff, a.mask)  # the mask is exactly where the defect changed pixels
        if a.mask.any():
            u, v = cam.project(scene.defect.anchor[None].astype(np.float64))[0]
            rows, cols = np.nonzero(a.mask)
            assert np.min(np.hypot(cols + 0.5 - u, rows + 0.5 - v)) < 2.0


def test_render_sample_deterministic_and_seed_dependent():
    a = render_sample("brick", defect="HS", size=SIZE, seed=3)
    b = render_sample("toy_brick", defect="HS", size=SIZE, seed=3)
    c = render_sample("toy_brick", defect="HS", size=SIZE, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.timestamps == b.timestamps and a.meta == b.meta
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (5, SIZE, SIZE, 3) and a.images.dtype == np.uint8
    assert a.key == "toy_brick_0001_NG_HS" and a.view_names == ["C1", "C2", "C3", "C4", "C5"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_normal_samples_have_no_masks_and_silhouettes_cover_the_object(family):
    s = render_sample(family, size=SIZE, seed=0, n_views=3)
    assert not s.masks.any() and s.meta["defect"] is None
    for sil in s.silhouettes:
        frac = sil.mean()
        assert 0.03 < frac < 0.6
        assert not sil[0, :].any() and not sil[:, 0].any()  # the object does not touch the border
    # the object is near the image centre in every view (the nut has a hole in its middle)
    c = SIZE // 2
    assert all(sil[c - 8:c + 8, c - 8:c + 8].mean() > 0.3 for sil in s.silhouettes)


@pytest.mark.parametrize("family", ["lock_nut", "plastic_plug"])
def test_silhouette_is_exactly_where_camera_rays_hit_the_object(family):
    """Every 5th pixel: an independent single-ray cast (no culling) agrees with the silhouette."""
    scene = sample_scene(family, np.random.default_rng(5))
    sample_defect(scene, "YW", np.random.default_rng(6))
    Rz = scene.rotation
    T = np.array([*scene.offset, 0.0], np.float32)
    for cam in camera_rig(n_views=5, size=SIZE)[::2]:
        view = render_view(scene, cam, noise_seed=0)
        o, d = cam.rays()
        t = cast_all(scene, (o[::5] - T) @ Rz, d[::5] @ Rz)
        assert np.array_equal(view.silhouette.ravel()[::5], np.isfinite(t))
        assert np.isfinite(t).sum() > 20


@pytest.mark.parametrize("code", sorted(DEFECT_CODES))
def test_defect_masks_are_on_views_that_see_it(code):
    s = render_sample("terminal_block", defect=code, size=SIZE, seed=11)
    areas = s.meta["defect"]["pixel_area"]
    assert [n for n in s.view_names if areas[n] > 0] == s.meta["defect"]["views"]
    assert s.masks.any()
    assert [int(m.sum()) for m in s.masks] == [areas[n] for n in s.view_names]
    if code != "QS":  # a missing part's mask may extend over the tray where the part used to be
        assert not (s.masks & ~s.silhouettes).any()
    # (for YW this also checks that the foreign object belongs to the silhouette)
