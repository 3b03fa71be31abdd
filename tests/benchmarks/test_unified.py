"""benchmarks/unified.py: the derived (inverted) classes are real classes of the loader, and the
--quick grid runs, reports and resumes (a finished run is read back, not retrained)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import unified as ub


def test_derived_class_inverts_the_object_only_and_loads(tmp_path):
    from PIL import Image

    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset
    from multiflow.synth import generate_dataset

    generate_dataset(tmp_path, classes=["toy_brick"], n_train=2, n_test_good=1, n_test_defect=1, size=64, seed=0,
                     progress=False)
    ub.derive_inverted(tmp_path, 64, "toy_brick", "toy_brick_inv")
    ub.derive_inverted(tmp_path, 64, "toy_brick", "toy_brick_inv")  # idempotent
    src = sorted((tmp_path / "realiad_64" / "toy_brick").rglob("*_C1_*.jpg"))[0]
    dst = tmp_path / "realiad_64" / "toy_brick_inv" / str(src.relative_to(tmp_path / "realiad_64" / "toy_brick")
                                                          ).replace("toy_brick", "toy_brick_inv", 1)
    a = np.asarray(Image.open(src).convert("RGB")).astype(int)
    b = np.asarray(Image.open(dst).convert("RGB")).astype(int)
    sil = np.asarray(Image.open((tmp_path / "silhouettes_64" / "toy_brick" / src.relative_to(
        tmp_path / "realiad_64" / "toy_brick")).with_suffix(".png")).convert("L")) > 127
    assert sil.any() and (~sil).any()
    assert np.abs(b[~sil] - a[~sil]).mean() < 3  # background: the same (JPEG re-encoding)
    assert np.abs(b[sil] - (255 - a[sil])).mean() < 6  # object: inverted
    meta = json.loads((tmp_path / "realiad_jsons" / "toy_brick_inv.json").read_text())
    assert meta["meta"]["prefix"] == "toy_brick_inv" and {r["category"] for r in meta["train"]} == {"toy_brick_inv"}
    ds = open_dataset(DataConfig(root=str(tmp_path), format="realiad", resolution="64"), "toy_brick_inv", "test", 64,
                      load_masks=True)
    orig = open_dataset(DataConfig(root=str(tmp_path), format="realiad", resolution="64"), "toy_brick", "test", 64,
                        load_masks=True)
    assert len(ds) == len(orig) == 2
    assert [ds.image_labels(i) for i in range(2)] == [orig.image_labels(i) for i in range(2)]


@pytest.mark.parametrize("method", ["unified-latent"])
def test_quick_grid_runs_reports_and_resumes(tmp_path, method):
    out = tmp_path / "bench"
    assert ub.main(["--quick", "--methods", method, "--out", str(out)]) == 0
    res_path = out / "runs" / f"{method}-seed0" / "result.json"
    res = json.loads(res_path.read_text())
    assert set(res["per_class"]) == set(ub.QUICK["train_classes"])
    assert 0 <= res["identification"] <= 1 and 0 <= res["unseen_flagged"] <= 1
    assert res["latency_given"] > 0 and res["latency_identified"] > 0 and res["model_bytes"] > 0
    report = (out / "report.md").read_text()
    assert f"| {method} |" in report and "Regenerate:" in report
    stamp = res_path.stat().st_mtime_ns
    assert ub.main(["--quick", "--methods", method, "--out", str(out)]) == 0  # finished: read back
    assert res_path.stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="other settings"):
        ub.main(["--quick", "--methods", method, "--out", str(out), "--epochs", "5"])
