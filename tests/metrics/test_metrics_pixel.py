"""Exact P-AUROC / AUPRO: a hand-derived AUPRO case, scikit-learn and OpenCV as oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from multiflow.errors import DataError
from multiflow.metrics import aupro, binarize_masks, pixel_ap_f1, pixel_auroc, resize_maps
from multiflow.metrics.pixel import region_weights


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x4 images; the numbers of the derivation in test_aupro_hand_derived.

    image 0 mask          image 0 scores                 image 1 mask     image 1 scores
    A . . B               0.70 0.80 0.60 0.90            . . . .          0.00 0.05 0.15 0.20
    . A . .               0.45 0.35 0.35 0.10            . . . C          0.25 0.28 0.29 0.50
    A = {(0,0), (1,1)}: ONE region of area 2 only under 8-connectivity (diagonal); B, C: area 1.
    """
    masks = np.zeros((2, 2, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # region A
    masks[0, 0, 3] = True  # region B
    masks[1, 1, 3] = True  # region C
    maps = np.array(
        [
            [[0.70, 0.80, 0.60, 0.90], [0.45, 0.35, 0.35, 0.10]],
            [[0.00, 0.05, 0.15, 0.20], [0.25, 0.28, 0.29, 0.50]],
        ]
    )
    return maps, masks


def test_aupro_hand_derived() -> None:
    # K = 3 regions (A area 2, B, C area 1); N = 12 normal pixels, so FPR moves in steps of 1/12.
    # Thresholds from the top (each point is (FPR, PRO), PRO = mean over regions of the overlap):
    #   0.90 B       -> (0,    1/3)            0.60 normal -> (2/12, 1/2)
    #   0.80 normal  -> (1/12, 1/3)            0.50 C      -> (2/12, 5/6)
    #   0.70 A half  -> (1/12, 1/2)            0.45 normal -> (3/12, 5/6)
    #   0.35 tie: A's second pixel and a normal pixel -> (4/12, 1): a diagonal segment crossing 0.3.
    # Area up to FPR 0.3:
    #   [0, 1/12] at 1/3 = 1/36;  [1/12, 2/12] at 1/2 = 1/24;  [2/12, 3/12] at 5/6 = 5/72;
    #   [1/4, 0.3]: PRO interpolated at 0.3 = 5/6 + 0.6 * 1/6 = 14/15, trapezoid 0.05 * (5/6 + 14/15) / 2
    #   = 53/1200.  Sum = (100 + 150 + 250 + 159) / 3600 = 659/3600; divided by 0.3 -> 659/1080.
    maps, masks = _hand_case()
    assert aupro(maps, masks) == pytest.approx(659 / 1080, abs=1e-12)
    # Full range (fpr_limit=1): the rest of the curve is PRO = 1 from FPR 4/12 to 1.
    # area = 1/36 + 1/24 + 5/72 + (1/12) * (5/6 + 1) / 2 + 8/12 = 0.8958333...
    full = 1 / 36 + 1 / 24 + 5 / 72 + (1 / 12) * (5 / 6 + 1) / 2 + 8 / 12
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(full, abs=1e-12)


def test_region_weights_use_8_connectivity() -> None:
    _, masks = _hand_case()
    w, k = region_weights(masks[0])
    assert k == 2  # A (diagonal pair) and B
    assert w[0, 0] == w[1, 1] == 0.5 and w[0, 3] == 1.0 and w[0, 1] == 0.0
    assert w.sum() == pytest.approx(k)  # each region contributes weight 1 in total


def test_pixel_auroc_matches_sklearn_after_resize() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 2, 6, 6, generator=g, dtype=torch.float64)
    masks = torch.zeros(3, 2, 12, 12, dtype=torch.uint8)
    masks[0, 1, 2:6, 3:8] = 255
    masks[2, 0, 7:11, 1:3] = 200
    masks[1, 1, 0:3, 0:3] = 100  # <= 127: not a defect
    maps[0, 1, 1:3, 1:4] += 0.7
    resized = resize_maps(maps.reshape(6, 6, 6), (12, 12)).numpy()
    y = (masks.reshape(6, 12, 12) > 127).numpy()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y.ravel(), resized.ravel()), abs=1e-12)
    ap, f1 = pixel_ap_f1(maps, masks)
    assert 0 < ap < 1 and 0 < f1 < 1


def test_resize_matches_opencv_inter_linear() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    m = rng.random((5, 7)).astype(np.float32)
    ours = resize_maps(m[None], (13, 9))[0].numpy()
    theirs = cv2.resize(m, (9, 13), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_binarize_masks_rules() -> None:
    assert binarize_masks(np.array([[0, 127, 128, 255]], dtype=np.uint8)).tolist() == [[False, False, True, True]]
    assert binarize_masks(np.array([[0.0, 0.4, 0.6, 1.0]])).tolist() == [[False, False, True, True]]
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        binarize_masks(np.array([[0, 3]], dtype=np.int64))


def test_pixel_metric_errors() -> None:
    maps, masks = _hand_case()
    with pytest.raises(DataError, match="anomalous region"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(DataError, match="same leading"):
        pixel_auroc(maps, masks[:1])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        aupro(bad, masks)
    with pytest.raises(DataError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)


def test_pixel_auroc_and_aupro_match_adeval_reference(monkeypatch) -> None:
    """ADEval (official tool; OpenCV connected components) on many regions, vs our exact values."""
    pytest.importorskip("cv2", reason="opencv-python-headless (requirements-test.txt) is needed by ADEval")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # ADEval 1.1.0 needs np.trapz (NumPy < 2)
    adeval = pytest.importorskip("adeval", reason="adeval==1.1.0 is installed by the Makefile (pip --no-deps)")
    from multiflow.metrics import PixelHistogram

    rng = np.random.default_rng(7)
    maps = rng.random((12, 24, 24)).astype(np.float32)
    masks = np.zeros((12, 24, 24), dtype=np.uint8)
    for i in range(0, 12, 2):  # several regions per defective image, some touching only diagonally
        for _ in range(3):
            y, x = rng.integers(0, 20, 2)
            masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = 255
        masks[i, 21, 21] = masks[i, 22, 22] = 255
        maps[i][masks[i] > 0] += 0.3 * rng.random(int((masks[i] > 0).sum())).astype(np.float32)
    p_auroc_ad, _, aupro_ad = adeval.auroc_aupr_aupro(list(maps), list(masks))
    exact_auroc, exact_aupro = pixel_auroc(maps, masks), aupro(maps, masks)
    # ADEval bins into 1,000 strips between min and max: bound its binning error with our own
    # histogram on the same strips (plus 1e-3 for its different interpolation at the FPR limit).
    h = PixelHistogram(num_bins=1000, bounds=(float(maps.min()), float(maps.max()) + 1e-6))
    for m, k in zip(maps, masks > 127):
        h.add(m, k)
    tol = h.metrics(0.3)
    assert abs(p_auroc_ad - exact_auroc) <= tol["p_auroc_tol"] + 1e-6
    assert abs(aupro_ad - exact_aupro) <= tol["aupro_tol"] + 1e-3
    assert abs(aupro_ad - exact_aupro) < 2e-3 and 0.15 < exact_aupro < 0.95  # non-trivial value
