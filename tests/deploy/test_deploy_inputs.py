"""Inputs from outside (issue 20): numbers checked at every entry point, incomplete objects in
``multiflow predict``, output folders from sample ids, and the service's error bodies."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_helpers import VIEWS
from multiflow import api
from multiflow.cli import main
from multiflow.engine.predict import Prediction, Predictor, save_prediction
from multiflow.errors import ConfigError, DataError

SIZE = 80
BAD_NUMBERS = ["nan", "inf", "-inf", "NaN"]


def _png_bytes(seed: int, size: int = SIZE) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder_data(root: Path, samples: dict[str, dict[str, bytes | None]]) -> Path:
    """``<root>/test/good/<sample>/<view>.png``; a view given as ``None`` is left out."""
    for sample, views in samples.items():
        d = root / "test" / "good" / sample
        d.mkdir(parents=True)
        for view, data in views.items():
            if data is not None:
                (d / f"{view}.png").write_bytes(data)
    return root


def _complete(seed: int) -> dict[str, bytes | None]:
    return {v: _png_bytes(10 * seed + i) for i, v in enumerate(VIEWS)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Five objects: two complete, one without C2, one whose C3 is no image, one whose C1 is cut off
    after its header (readable header, undecodable pixels)."""
    truncated = _png_bytes(41)[:80]
    samples = {
        "s1": _complete(1),
        "s2": _complete(2) | {"C2": None},
        "s3": _complete(3) | {"C3": b"not an image at all"},
        "s4": _complete(4),
        "s5": _complete(5) | {"C1": truncated},
    }
    return _folder_data(tmp_path_factory.mktemp("parts"), samples)


@pytest.fixture(scope="module")
def dropout_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model, marked as trained with view dropout (the flow takes a ``present`` mask)."""
    folder = tmp_path_factory.mktemp("dropout") / "tiny"
    shutil.copytree(tiny_model, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["supports_missing_views"], meta["view_dropout"] = True, 0.3
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


# ---------------------------------------------------------------- numbers: every entry point


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_predict_cli_refuses_a_non_finite_threshold(tiny_model, data, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o"),
              "--quiet", f"--threshold={bad}"])  # = so that argparse takes -inf as a value
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --threshold: must be a finite number" in err and bad.lower() in err.lower()
    assert not (tmp_path / "o").exists()  # nothing was scored or written


@pytest.mark.parametrize("argv, words", [
    (["--threshold", "nan"], "argument --threshold: must be a finite number, got nan"),
    (["--threshold", "inf"], "argument --threshold: must be a finite number, got inf"),
    (["--max-request-mb", "nan"], "argument --max-request-mb: must be a finite number"),
    (["--max-request-mb", "inf"], "argument --max-request-mb: must be a finite number"),
    (["--max-request-mb", "0"], "argument --max-request-mb: must be in (0, inf)"),
    (["--port", "70000"], "argument --port: must be in [1, 65535]"),
])
def test_serve_cli_refuses_bad_numbers(tiny_model, monkeypatch, capsys, argv, words):
    import multiflow.deploy.serve as serve_mod

    def never(*args, **kwargs):  # the old code reached the server with these values
        raise AssertionError(f"serve started with {args} {kwargs}")

    monkeypatch.setattr(serve_mod, "serve", never)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(tiny_model), *argv])
    assert exc.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_export_cli_refuses_a_non_finite_threshold(tiny_model, tmp_path, monkeypatch, capsys, bad):
    pytest.importorskip("onnx")
    import multiflow.deploy.onnx_export as onnx_mod

    def never(*args, **kwargs):
        raise AssertionError(f"export ran with {kwargs}")

    monkeypatch.setattr(onnx_mod, "export_onnx", never)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "m.onnx"), "--threshold", bad])
    assert exc.value.code == 2 and f"argument --threshold: must be a finite number, got {bad}" in capsys.readouterr().err


def test_fit_cli_refuses_a_nan_override(tmp_path, capsys):
    assert main(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "results"), "--set", "train.lr=.nan"]) == 1
    err = capsys.readouterr().err
    assert "train.lr must be a finite number, got nan" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_python_api_refuses_a_non_finite_threshold(tiny_model, data, tmp_path, bad):
    with pytest.raises(ConfigError, match=f"threshold must be a finite number, got {bad!r}"):
        api.predict(tiny_model, data_root=data, out_dir=tmp_path / "o", threshold=bad, progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        Predictor(tiny_model, threshold=bad)
    assert Predictor(tiny_model, threshold=np.float32(2.5)).threshold == 2.5


# ---------------------------------------------------------------- predict: incomplete objects


def test_predict_lists_incomplete_objects_and_scores_the_rest(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 2 and sum(summary["decisions"].values()) == 2
    reasons = {k["sample_id"]: k["reason"] for k in summary["skipped"]}
    assert sorted(reasons) == ["good/s2", "good/s3", "good/s5"]
    assert "missing view(s) ['C2']" in reasons["good/s2"]
    assert "view C3" in reasons["good/s3"] and "C3.png" in reasons["good/s3"]
    assert "view C1" in reasons["good/s5"] and "C1.png" in reasons["good/s5"]
    for sid in reasons:
        assert f"{sid}: SKIPPED (" in printed
        assert not (out / sid.replace("/", "_")).exists()
    assert "2 samples" in printed and "3 skipped" in printed
    rows = (out / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["good/s1", "good/s4"]
    for sid in ("good_s1", "good_s4"):
        assert json.loads((out / sid / "result.json").read_text())["missing_views"] == []


def test_predict_scores_incomplete_objects_on_the_views_present(dropout_model, data, tmp_path):
    out = tmp_path / "out"
    rows = api.predict(dropout_model, data_root=data, out_dir=out, progress=False)
    by_id = {r["sample_id"]: r for r in rows}
    assert sorted(by_id) == ["good/s1", "good/s2", "good/s3", "good/s4", "good/s5"] and rows.skipped == []
    assert [by_id[f"good/s{i}"]["missing_views"] for i in range(1, 6)] == [[], ["C2"], ["C3"], [], ["C1"]]
    result = json.loads((out / "good_s2" / "result.json").read_text())
    assert result["missing_views"] == ["C2"] and result["view_scores"]["C2"] is None
    assert not (out / "good_s2" / "C2.npy").exists() and (out / "good_s2" / "C1.npy").exists()
    # the same score as the predictor given the two views present
    ref = Predictor(dropout_model, frozen_check=False)
    views = ["C1", "C3"]
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(data / "test/good/s2" / f"{v}.png").convert("RGB")).copy())
                        .permute(2, 0, 1).float() / 255 for v in views])
    expect = ref.predict(imgs, views, "good/s2")
    assert result["sample_score"] == pytest.approx(expect.sample_score, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [] and summary["scored"] == 5
    incomplete = {k["sample_id"]: k for k in summary["incomplete"]}
    assert sorted(incomplete) == ["good/s2", "good/s3", "good/s5"]
    assert incomplete["good/s5"]["missing_views"] == ["C1"] and "C1.png" in incomplete["good/s5"]["reason"]


def test_predict_with_no_usable_view_lists_the_object(dropout_model, tmp_path):
    data = _folder_data(tmp_path / "d", {"a": _complete(1), "b": {v: b"junk" for v in VIEWS}})
    rows = api.predict(dropout_model, data_root=data, out_dir=tmp_path / "o", progress=False)
    assert [r["sample_id"] for r in rows] == ["good/a"]
    assert [k["sample_id"] for k in rows.skipped] == ["good/b"] and "no view is usable" in rows.skipped[0]["reason"]


# ---------------------------------------------------------------- output folders from sample ids


def _prediction(sample_id: str) -> Prediction:
    maps = np.random.default_rng(0).random((3, 3, 3)).astype(np.float32)
    return Prediction(sample_id=sample_id, decision="OK", sample_score=1.0, view_scores=[1.0, 1.0, 1.0],
                      view_names=VIEWS, threshold=2.0, maps=maps, maps_full=np.repeat(np.repeat(maps, 4, 1), 4, 2))


@pytest.mark.parametrize("sample_id", ["../x", "/abs", "a/../../b", "..\\win", "./.", "..."])
def test_sample_ids_cannot_write_outside_the_output_folder(tmp_path, sample_id):
    out = tmp_path / "deep" / "out"
    save_prediction(_prediction(sample_id), np.zeros((3, 12, 12, 3), np.float32), out)
    (folder,) = list(out.iterdir())
    assert folder.parent == out and folder.name not in (".", "..")
    assert json.loads((folder / "result.json").read_text())["sample_id"] == sample_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"] and sorted(p.name for p in out.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("sample_id", ["..", ".", "", "a\nb"])
def test_sample_ids_naming_the_output_folder_or_its_parent_are_refused(tmp_path, sample_id):
    out = tmp_path / "deep" / "out"
    with pytest.raises(DataError, match=f"sample id {sample_id!r}".replace("\\", "\\\\")):
        save_prediction(_prediction(sample_id), np.zeros((3, 12, 12, 3), np.float32), out)
    assert not (tmp_path / "deep" / "result.json").exists() and not (tmp_path / "result.json").exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_manifest_id_dotdot_is_listed_and_the_rest_scored(tiny_model, tmp_path):
    root = tmp_path / "m"
    rows = ["split,sample_id,view,image_path"]
    for sid in ["..", "ok"]:
        for i, v in enumerate(VIEWS):
            f = root / "img" / f"{'dots' if sid == '..' else sid}_{v}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(_png_bytes(i))
            rows.append(f"test,{sid},{v},img/{f.name}")
    (root / "parts.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "deep" / "out"
    preds = api.predict(tiny_model, data_root=root / "parts.csv", data_format="manifest", out_dir=out, progress=False)
    assert [r["sample_id"] for r in preds] == ["ok"]
    assert [k["sample_id"] for k in preds.skipped] == [".."] and "cannot name an output folder" in preds.skipped[0]["reason"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


# ---------------------------------------------------------------- the service


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG header announcing ``width x height`` pixels over a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def app_parts(tiny_model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from multiflow.deploy.serve import ServiceLimits, create_app

    predictor = Predictor(tiny_model)
    return predictor, create_app(predictor, limits=ServiceLimits(max_request_bytes=400_000, max_image_pixels=10**6))


def _upload(bomb_view: str | None = None):
    return [(v, (f"{v}.png", _bomb_png() if v == bomb_view else _png_bytes(i), "image/png")) for i, v in enumerate(VIEWS)]


def test_service_answers_413_to_a_decompression_bomb(app_parts):
    from fastapi.testclient import TestClient

    _, app = app_parts
    with TestClient(app) as client:
        r = client.post("/predict", files=_upload("C2"))
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "view 'C2'" in detail and "more than" in detail and "pixels" in detail
    assert "decompression bomb DOS" not in detail  # our limit, not Pillow's wording


def test_service_errors_carry_no_absolute_server_paths(app_parts, tiny_model, monkeypatch):
    from fastapi.testclient import TestClient

    predictor, app = app_parts
    secret = str(Path(tiny_model).resolve())

    def bad_input(*args, **kwargs):
        raise DataError("mask file not found", Path(tiny_model) / "masks" / "C1.png")

    def crash(*args, **kwargs):
        raise RuntimeError(f"cannot open {secret}/model.safetensors")

    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(predictor, "predict", bad_input)
        r = client.post("/predict", files=_upload())
        assert r.status_code == 400 and r.json()["detail"] == "C1.png: mask file not found"
        monkeypatch.setattr(predictor, "predict", crash)
        r = client.post("/predict", files=_upload())
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        for body in (r.text,):
            assert secret not in body and "/model.safetensors" not in body


def test_public_message_keeps_names_and_drops_folders():
    from multiflow.deploy.serve import public_message

    assert public_message("/srv/models/cap/model.json: bad") == "model.json: bad"
    assert public_message("cannot read 'C:\\models\\cap\\m.png' now") == "cannot read 'm.png' now"
    assert public_message("views C1/C2 of 1/2 parts") == "views C1/C2 of 1/2 parts"


def test_service_refuses_non_finite_threshold_and_limits(tiny_model, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn

    from multiflow.deploy.serve import ServiceLimits, create_app, serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("served")))
    with pytest.raises(ConfigError, match="threshold must be a finite number, got nan"):
        serve(tiny_model, threshold=float("nan"))
    predictor = Predictor(tiny_model)
    predictor.threshold = float("inf")  # e.g. a caller's own predictor object
    with pytest.raises(ConfigError, match="threshold must be a finite number, got inf"):
        create_app(predictor)
    for kwargs, key in [({"max_request_bytes": 0}, "max_request_bytes"), ({"max_image_pixels": float("nan")}, "max_image_pixels"),
                        ({"max_images": -1}, "max_images")]:
        with pytest.raises(ConfigError, match=key):
            ServiceLimits(**kwargs)
