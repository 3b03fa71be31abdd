"""The camera rig side file: the generator writes it, load_camera_rig reads it, and a 3D point projected
with the stored cameras lands where the renderer put it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from multiflow.data import load_camera_rig
from multiflow.errors import DataError
from multiflow.synth import generate_dataset
from multiflow.synth.geometry import camera_rig

SIZE = 96


@pytest.fixture(scope="module")
def brick_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, classes=["toy_brick"], n_train=3, n_test_good=0, n_test_defect=0, size=SIZE,
                     n_views=5, progress=False, variation="realistic")
    return out


def test_the_stored_cameras_project_tray_points_to_the_pixels_the_renderer_cast_them_from(brick_set):
    rig = load_camera_rig(brick_set / f"realiad_{SIZE}" / "toy_brick" / "cameras.json")
    assert rig.view_names == ["C1", "C2", "C3", "C4", "C5"]
    rng = np.random.default_rng(0)
    for cam in camera_rig(n_views=5, size=SIZE):  # the renderer's own rays
        view = rig.view(cam.name)
        assert (view.width, view.height) == (SIZE, SIZE)
        assert np.allclose(view.centre, cam.position, atol=1e-6)
        o, d = cam.rays()
        pix = rng.integers(0, SIZE * SIZE, 50)
        pix = pix[d[pix, 2] < -0.05]  # rays that reach the tray in front of the camera
        t = -o[pix, 2] / d[pix, 2]
        tray = o[pix].astype(np.float64) + t[:, None] * d[pix]
        expected = np.stack([pix % SIZE + 0.5, pix // SIZE + 0.5], axis=1)  # column, row of the pixel centre
        assert np.abs(view.project(tray) - expected).max() < 1e-3


def test_the_object_placement_puts_the_brick_where_the_top_camera_saw_it(brick_set):
    rig = load_camera_rig(brick_set / f"realiad_{SIZE}" / "toy_brick" / "cameras.json")
    meta = json.loads((brick_set / "synth_meta" / "toy_brick.json").read_text())
    assert set(rig.objects) == {r["key"] for r in meta["samples"]}
    top = rig.view("C1")
    for rec in meta["samples"]:
        pose = rig.objects[rec["key"]]
        inst = rec["instance"]
        hz, half_len = inst["half_height"], inst["studs"][0] * inst["pitch"] / 2
        # centre of the body's top face and a point along the object's long (x) axis, object frame
        centre, along = pose.to_world(np.array([[0.0, 0.0, 2 * hz], [half_len, 0.0, 2 * hz]]))
        uv = top.project(np.stack([centre, along]))
        sils = {}
        for e in rec["entries"]:
            view = e["image_path"].split("_")[-2]
            path = brick_set / f"silhouettes_{SIZE}" / "toy_brick" / (e["image_path"][:-4] + ".png")
            sils[view] = np.asarray(Image.open(path)) > 127
        rows, cols = np.nonzero(sils["C1"])
        # the top camera looks straight down on a symmetric brick: the silhouette's centroid is the
        # projected centre of the top face, its long axis the projected object x axis
        assert np.hypot(cols.mean() + 0.5 - uv[0, 0], rows.mean() + 0.5 - uv[0, 1]) < 0.5
        cov = np.cov(np.stack([cols, rows]))
        w, vecs = np.linalg.eigh(cov)
        axis = vecs[:, 1]
        proj = (uv[1] - uv[0]) / np.linalg.norm(uv[1] - uv[0])
        assert abs(float(axis @ proj)) > np.cos(np.radians(2.0))
        # every side camera sees the top face's centre on the object
        for name in rig.view_names[1:]:
            u, v = rig.view(name).project(centre[None])[0]
            assert sils[name][int(v), int(u)], (rec["key"], name)


def _write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


GOOD_VIEW = {"name": "C1", "width": 8, "height": 6, "fx": 10.0, "fy": 10.0, "cx": 4.0, "cy": 3.0,
             "R": np.eye(3).tolist(), "t": [0.0, 0.0, 2.0]}


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ({"format": "something", "version": 1, "views": [GOOD_VIEW]}, "not a camera rig file"),
    ({"format": "multiflow.camera_rig", "version": 2, "views": [GOOD_VIEW]}, "version 2 is not supported"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": []}, "non-empty list"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": [GOOD_VIEW | {"fx": -1}]}, "'fx' must be a finite positive"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": [GOOD_VIEW | {"R": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]}]},
     "not a rotation"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": [GOOD_VIEW | {"t": [0, 0]}]}, "shape \\[3\\]"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": [GOOD_VIEW, GOOD_VIEW]}, "names repeat"),
    ({"format": "multiflow.camera_rig", "version": 1, "views": [GOOD_VIEW], "objects": {"a": {"R": np.eye(3).tolist()}}},
     "object 'a': 't'"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, content, message):
    path = _write(tmp_path / "cameras.json", content)
    with pytest.raises(DataError, match=message) as info:
        load_camera_rig(path)
    assert info.value.path == path


def test_missing_file_and_a_hand_written_rig(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_camera_rig(tmp_path / "nope.json")
    rig = load_camera_rig(_write(tmp_path / "rig.json", {"format": "multiflow.camera_rig", "version": 1,
                                                          "views": [GOOD_VIEW]}))
    # a point on the optical axis lands on the principal point; one 0.2 to the right 1 px further
    assert np.allclose(rig.view("C1").project(np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]])), [[4, 3], [5, 3]])
    assert np.isnan(rig.view("C1").project(np.array([[0.0, 0.0, -3.0]]))).all()  # behind the camera
    assert rig.objects == {}
    with pytest.raises(KeyError, match="no camera 'C9'"):
        rig.view("C9")
