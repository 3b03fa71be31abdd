"""ADEval .pkl export, checked with the official evaluator (adeval 1.1.0, a test-only dependency)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from multiflow.errors import DataError
from multiflow.metrics import (
    REAL_IAD_SAMPLE_KEY_PATTERN,
    adeval_command,
    evaluate_exact,
    parse_adeval_output,
    read_adeval_pkl,
    write_adeval_pkl,
)


def _write_dataset(root, n: int = 10, v: int = 3, size: int = 32, seed: int = 0):
    """Real-IAD-named images and masks on disk plus matching maps; returns everything the tests need."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, v, 8, 8, generator=g)
    masks = torch.zeros(n, v, size, size, dtype=torch.uint8)
    image_paths, mask_paths, sample_ids = [], [], []
    (root / "imgs").mkdir()
    for i in range(n):
        defective = i % 2 == 0
        tag = "NG_AK" if defective else "OK"
        for c in range(v):
            stem = f"toy_{i:04d}_{tag}_C{c + 1}_20231023111538"
            img = root / "imgs" / f"{stem}.png"
            Image.new("RGB", (size, size)).save(img)
            image_paths.append(str(img))
            sample_ids.append(f"toy_{i:04d}_{tag}")
            if defective:
                mask_file = root / "imgs" / f"{stem}_mask.png"
                if c == i % v:  # the defect is visible in one view only; the others get an empty mask
                    y0 = 4 + 2 * (i % 5)
                    masks[i, c, y0 : y0 + 8, 6:16] = 255
                    maps[i, c, y0 // 4 : y0 // 4 + 2, 1:4] += 0.15
                Image.fromarray(masks[i, c].numpy()).save(mask_file)
                mask_paths.append(str(mask_file))
            else:
                mask_paths.append(None)
    return maps, masks, image_paths, mask_paths, sample_ids


def _binning_slack(scores: np.ndarray, labels: np.ndarray, strips: int = 1000) -> float:
    """Largest AUROC change ADEval's binning can cause: 1/2 credit per cross-class pair that can share
    one of its ``strips`` bins (scores closer than one bin width), divided by ``P * N``."""
    width = (scores.max() - scores.min()) / strips
    pos, neg = scores[labels], scores[~labels]
    close = np.abs(pos[:, None] - neg[None, :]) <= width
    return 0.5 * close.sum() / (pos.size * neg.size) + 1e-9


def test_write_and_read_round_trip(tmp_path) -> None:
    maps, _, paths, mask_paths, _ = _write_dataset(tmp_path, n=2, v=2)
    flat = maps.reshape(-1, 8, 8).to(torch.float64)
    scores = flat.amax(dim=(-2, -1)) + 1e-9  # not float32-representable
    out = write_adeval_pkl(tmp_path / "pred.pkl", paths, flat, scores, mask_paths)
    preds = read_adeval_pkl(out)
    assert list(preds) == paths
    amap, score, mask = preds[paths[0]]
    assert amap.dtype == np.float32 and amap.shape == (8, 8) and mask == mask_paths[0]
    assert score == float(np.float32(score)) and score == pytest.approx(float(scores[0]), rel=1e-6)
    assert not (tmp_path / "pred.pkl.tmp").exists()


def test_write_rejects_bad_input(tmp_path) -> None:
    maps = np.zeros((2, 4, 4))
    with pytest.raises(DataError, match="unique"):
        write_adeval_pkl(tmp_path / "p.pkl", ["a.png", "a.png"], maps, [0.1, 0.2], [None, None])
    with pytest.raises(DataError, match="NaN"):
        write_adeval_pkl(tmp_path / "p.pkl", ["a.png", "b.png"], maps, [0.1, float("nan")], [None, None])
    with pytest.raises(DataError, match="2 mask paths"):
        write_adeval_pkl(tmp_path / "p.pkl", ["a.png"], maps[:1], [0.1], [None, None])
    assert not (tmp_path / "p.pkl").exists()
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"a.png": (np.zeros(3), 0.1, None)}))
    with pytest.raises(DataError, match="x.pkl"):
        read_adeval_pkl(tmp_path / "x.pkl")


def test_real_iad_sample_key_pattern() -> None:
    m = re.search(REAL_IAD_SAMPLE_KEY_PATTERN, "realiad_1024/audiojack/NG/BX/S0001/audiojack_0001_NG_BX_C2_20231023111538.jpg")
    assert m is not None and m.group(1) == "audiojack_0001_NG_BX"


def test_official_adeval_cli_agrees_with_exact(tmp_path) -> None:
    pytest.importorskip("cv2", reason="opencv-python-headless (requirements-test.txt) is needed by ADEval")
    pytest.importorskip("adeval", reason="adeval==1.1.0 is installed by the Makefile (pip --no-deps)")
    maps, masks, paths, mask_paths, sample_ids = _write_dataset(tmp_path)
    flat_maps = maps.reshape(-1, 8, 8)
    scores = flat_maps.amax(dim=(-2, -1))
    ours = evaluate_exact(flat_maps, masks.reshape(-1, 32, 32), sample_ids=sample_ids, expected_views=3)
    pkl = write_adeval_pkl(tmp_path / "pred.pkl", paths, flat_maps, scores, mask_paths)
    cmd = adeval_command(pkl, expected_views=3, python=sys.executable)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = parse_adeval_output(proc.stdout)
    # ADEval bins scores into 1,000 strips between min and max; ours sorts every score, so they may
    # differ only by the cross-class pairs that share a strip.
    img_labels = masks.reshape(-1, 32 * 32).amax(dim=1).numpy() > 127
    s_scores = scores.reshape(10, 3).amax(dim=1).numpy()
    s_labels = img_labels.reshape(10, 3).any(axis=1)
    assert abs(theirs["s_auroc"] - ours.s_auroc) <= _binning_slack(s_scores, s_labels)
    assert abs(theirs["i_auroc"] - ours.i_auroc) <= _binning_slack(scores.numpy(), img_labels)
    assert 0.6 < ours.i_auroc < 0.99  # a non-trivial case
    assert theirs["p_auroc"] == pytest.approx(ours.p_auroc, abs=2e-3)
    assert theirs["p_aupro"] == pytest.approx(ours.aupro, abs=5e-3)
    assert ours.num_samples == 10 and ours.num_anomalous_images == 5
