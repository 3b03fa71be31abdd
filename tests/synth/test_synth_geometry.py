"""Ray-primitive intersections and the camera rig of multiflow.synth.geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multiflow.synth.geometry import Cylinder, Drilled, Sphere, box, camera_rig, hex_prism, sphere_hit_mask


def _rays(origins, dirs):
    o = np.asarray(origins, dtype=np.float32)
    d = np.asarray(dirs, dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return o, d


def test_box_hit_distance_and_normal():
    b = box((0, 0, 1), (1, 2, 0.5))
    o, d = _rays([[0, 0, 5], [5, 0.5, 1], [0, 0, 5], [3, 3, 3]], [[0, 0, -1], [-1, 0, 0], [0, 0, 1], [0, 0, -1]])
    t, n = b.hit(o, d)
    assert t[0] == pytest.approx(3.5) and np.allclose(n[0], [0, 0, 1])
    assert t[1] == pytest.approx(4.0) and np.allclose(n[1], [1, 0, 0])
    assert np.isinf(t[2]) and np.isinf(t[3])  # pointing away / passing beside


def test_cylinder_side_and_cap_hits_for_every_axis():
    for axis in range(3):
        c = Cylinder((0, 0, 0), 0.5, 1.0, axis=axis)
        along = np.eye(3)[axis]
        perp = np.eye(3)[(axis + 1) % 3]
        o, d = _rays([3 * perp, 3 * along, 3 * perp + 2 * along], [-perp, -along, -perp])
        t, n = c.hit(o, d)
        assert t[0] == pytest.approx(2.5, abs=1e-5) and np.allclose(n[0], perp, atol=1e-5)
        assert t[1] == pytest.approx(2.0, abs=1e-5) and np.allclose(n[1], along, atol=1e-5)
        assert np.isinf(t[2])  # beyond the cap


def test_sphere_and_hex_prism_hits():
    s = Sphere((1, 1, 1), 0.5)
    o, d = _rays([[1, 1, 4], [1, 3, 1]], [[0, 0, -1], [0, 0, -1]])
    t, n = s.hit(o, d)
    assert t[0] == pytest.approx(2.5) and np.allclose(n[0], [0, 0, 1], atol=1e-6) and np.isinf(t[1])
    h = hex_prism((0, 0, 0), apothem=1.0, half_height=0.5)
    o, d = _rays([[5, 0, 0], [0, 5, 0]], [[-1, 0, 0], [0, -1, 0]])
    t, _ = h.hit(o, d)
    assert t[0] == pytest.approx(4.0)  # a face (apothem) along x
    assert t[1] == pytest.approx(5 - 1 / math.cos(math.pi / 6), abs=1e-5)  # a corner along y


def test_hit_points_lie_on_surface_random_rays():
    rng = np.random.default_rng(0)
    o = rng.uniform(-3, 3, (500, 3)).astype(np.float32) + np.array([0, 0, 4], np.float32)
    d = (rng.uniform(-1, 1, (500, 3)).astype(np.float32) - o)  # aimed near the cylinder
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    c = Cylinder((0.2, -0.1, 0.3), 0.7, 0.4, axis=2)
    t, n = c.hit(o, d)
    ok = np.isfinite(t)
    assert 50 < ok.sum() < 500
    p = o[ok] + t[ok, None] * d[ok] - c.center
    radial = np.hypot(p[:, 0], p[:, 1])
    on_side = np.isclose(radial, 0.7, atol=1e-4) & (np.abs(p[:, 2]) <= 0.4 + 1e-4)
    on_cap = np.isclose(np.abs(p[:, 2]), 0.4, atol=1e-4) & (radial <= 0.7 + 1e-4)
    assert np.all(on_side | on_cap)
    assert np.all(np.einsum("ij,ij->i", n[ok], d[ok]) < 0)  # normals face the incoming ray
    assert np.all(sphere_hit_mask(o, d, *c.bounds())[ok])  # the culling sphere never drops a hit


def test_camera_rig_geometry_and_projection_round_trip():
    cams = camera_rig(n_views=5, size=64)
    assert [c.name for c in cams] == ["C1", "C2", "C3", "C4", "C5"]
    assert np.allclose(cams[0].R[2], [0, 0, -1])  # C1 looks straight down
    for cam in cams[1:]:
        fwd = cam.R[2]
        assert 30 < math.degrees(math.asin(-fwd[2])) < 45  # side cameras look down at 30-45 deg
    for cam in cams:
        assert np.allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-6)
        o, d = cam.rays()
        pts = o[:: 97] + 2.0 * d[:: 97]
        uv = cam.project(pts.astype(np.float64))
        idx = np.arange(0, 64 * 64, 97)
        expect = np.stack([idx % 64 + 0.5, idx // 64 + 0.5], axis=1)
        assert np.allclose(uv, expect, atol=1e-3)
    with pytest.raises(ValueError):
        camera_rig(n_views=10, size=64)


def test_drilled_solid_hole_and_inner_wall():
    nut = Drilled(hex_prism((0, 0, 0.5), apothem=1.0, half_height=0.5), Cylinder((0, 0, 0.5), 0.4, 0.6))
    # straight down the hole: passes through; on the ring: hits the top face at z = 1
    o, d = _rays([[0, 0, 5], [0.7, 0, 5]], [[0, 0, -1], [0, 0, -1]])
    t, n = nut.hit(o, d)
    assert np.isinf(t[0]) and t[1] == pytest.approx(4.0) and np.allclose(n[1], [0, 0, 1])
    # a slanted ray entering the hole from above hits the far inner wall, normal towards the axis
    o, d = _rays([[0, 0, 3]], [[0.4, 0, -2.5]])
    t, n = nut.hit(o, d)
    p = o[0] + t[0] * d[0]
    assert np.hypot(p[0], p[1]) == pytest.approx(0.4, abs=1e-4) and 0 < p[2] < 1
    assert np.allclose(n[0], [-1, 0, 0], atol=1e-4)
    # from outside the hull through the side face
    o, d = _rays([[5, 0, 0.5]], [[-1, 0, 0]])
    t, n = nut.hit(o, d)
    assert t[0] == pytest.approx(4.0) and np.allclose(n[0], [1, 0, 0])
    ti, to, _ = nut.interval(o, d)
    assert ti[0] == to[0] == t[0]
