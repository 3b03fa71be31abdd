"""Streaming inference (``multiflow predict --watch``): objects scored when their last view has
settled, results appended whole, Ctrl-C stops cleanly, a restart resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy.deploy_helpers import VIEWS, make_bundle
from PIL import Image

from multiflow.engine.predict import Predictor
from multiflow.engine.watch import read_done, watch_folder
from multiflow.errors import DataError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("run") / "tiny", threshold=1.0, provider="threshold")


def _png(seed: int, view: int) -> bytes:
    """A 96 px object (bright ellipse, textured) on a graded tray, PNG bytes."""
    import io

    rng = np.random.default_rng(seed * 10 + view)
    yy, xx = np.mgrid[0:96, 0:96] / 96
    img = np.repeat((0.25 + 0.1 * yy + 0.05 * xx)[..., None], 3, axis=2)
    obj = ((xx - 0.5 - 0.04 * view) / 0.3) ** 2 + ((yy - 0.5) / 0.22) ** 2 < 1
    img[obj] = 0.6 + 0.3 * rng.random((int(obj.sum()), 3))
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _drop(folder: Path, seed: int) -> None:
    """Write an object's views the way a camera should: a hidden file, then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    for v, name in enumerate(VIEWS):
        tmp = folder / f".{name}.png.part"
        tmp.write_bytes(_png(seed, v))
        os.replace(tmp, folder / f"{name}.png")


def _images(seed: int) -> torch.Tensor:
    import io

    arrs = [np.asarray(Image.open(io.BytesIO(_png(seed, v))).convert("RGB")) for v in range(len(VIEWS))]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def test_read_done_cuts_a_last_line_written_half(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"sample_id": "a", "decision": "OK"}\n{"sample_id": "b", "deci')
    assert read_done(out) == {"a"}
    assert out.read_bytes() == b'{"sample_id": "a", "decision": "OK"}\n'  # the object b is scored again
    out.write_bytes(b'{"sample_id": "a"}\nnot json\n{"sample_id": "c"}\n')
    with pytest.raises(DataError, match="line 2"):
        read_done(out)


def test_watch_scores_objects_when_their_last_view_has_settled(masked_model, tmp_path):
    """Three objects arrive over time; the last view of one is written in two halves with a pause
    shorter than the settle time (read early, it would not decode and the object would be
    skipped). Each result equals Predictor.predict on the same images."""
    watch_dir, out = tmp_path / "line", tmp_path / "out" / "results.jsonl"
    watch_dir.mkdir()
    stop = threading.Event()
    pred = Predictor(masked_model, device="cpu", frozen_check=False)

    def camera() -> None:
        _drop(watch_dir / "0001", 1)
        time.sleep(0.3)
        slow = watch_dir / "0002"
        slow.mkdir()
        for v, name in enumerate(VIEWS[:-1]):
            (slow / f"{name}.png").write_bytes(_png(2, v))
        data = _png(2, len(VIEWS) - 1)
        with open(slow / f"{VIEWS[-1]}.png", "wb") as fh:  # half, a pause, the rest
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.3)
            fh.write(data[len(data) // 2:])
        (watch_dir / "0003").mkdir()
        (watch_dir / "0003" / "notes.txt").write_text("ignored")
        _drop(watch_dir / "0003", 3)
        deadline = time.time() + 60
        while len(_lines(out)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        stop.set()

    t = threading.Thread(target=camera)
    t.start()
    report = watch_folder(pred, watch_dir, out, settle=1.5, poll=0.05, batch_size=4, stop=stop)
    t.join()
    rows = _lines(out)
    assert sorted(r["sample_id"] for r in rows) == ["0001", "0002", "0003"]
    assert all(r["decision"] in ("OK", "NG") for r in rows), rows
    assert report["objects"] == 3 and report["resumed"] == 0
    ref = Predictor(masked_model, device="cpu", frozen_check=False)
    for r in rows:
        alone = ref.predict(_images(int(r["sample_id"])), sample_id=r["sample_id"])
        assert r["sample_score"] == pytest.approx(alone.sample_score, rel=1e-5)
        assert r["decision"] == alone.decision


def test_watch_command_stops_on_ctrl_c_and_resumes(masked_model, tmp_path):
    """The CLI in a subprocess: objects dropped over time, SIGINT, every line whole; a restart
    scores only the objects not yet in the file."""
    watch_dir, out = tmp_path / "line", tmp_path / "results.jsonl"
    watch_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "multiflow", "predict", "--model", str(masked_model), "--watch", str(watch_dir),
           "--output", str(out), "--settle", "0.3", "--poll", "0.05", "--device", "cpu"]

    def run_until(n_lines: int, seeds: list[int]) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for s in seeds:
                _drop(watch_dir / f"{s:04d}", s)
                time.sleep(0.2)
            deadline = time.time() + 120
            while len(_lines(out)) < n_lines and time.time() < deadline and proc.poll() is None:
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    first = run_until(2, [1, 2])
    assert first.returncode == 0, first.stderr
    assert "stopped" in first.stdout
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    assert [r["sample_id"] for r in _lines(out)] == ["0001", "0002"]
    second = run_until(3, [3])
    assert second.returncode == 0, second.stderr
    assert "2 object(s) were already in" in second.stdout
    rows = _lines(out)
    assert [r["sample_id"] for r in rows] == ["0001", "0002", "0003"]  # nothing scored twice
    assert out.read_bytes().startswith(raw)
