"""multiflow.scoring: the one place of the NLL, masked loss, background fill and scores, checked
against plain-loop oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.errors import ConfigError
from multiflow.scoring import (
    VIEW_AGGREGATIONS,
    aggregate_scores,
    decide,
    fill_background,
    masked_loss,
    masked_nll_sums,
    pixel_nll,
    score_maps,
)


def test_pixel_nll_is_eq7():
    g = torch.Generator().manual_seed(0)
    z, ld = torch.randn(2, 3, 5, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    ref = np.empty((2, 3, 4, 4))
    zn, ln = z.numpy(), ld.numpy()
    for idx in np.ndindex(2, 3, 4, 4):
        b, v, h, w = idx
        ref[idx] = (0.5 * np.sum(zn[b, v, :, h, w] ** 2) - ln[idx]) / 5
    np.testing.assert_allclose(pixel_nll(z, ld).numpy(), ref, rtol=1e-12)


def test_masked_loss_and_sums_ignore_nan_background():
    g = torch.Generator().manual_seed(1)
    nll = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    m = torch.rand(2, 2, 3, 3, generator=g) > 0.5
    nll_bad = nll.clone()
    nll_bad[~m] = float("nan")
    num, den = masked_nll_sums(nll_bad, m)
    assert float(num) == pytest.approx(float(nll[m].sum())) and float(den) == int(m.sum())
    assert float(masked_loss(nll_bad, m)) == pytest.approx(float(nll[m].mean()))
    assert float(masked_loss(nll, None)) == pytest.approx(float(nll.mean()))
    assert float(masked_loss(nll, torch.zeros_like(m))) == 0.0


def test_fill_background_oracle_and_empty_view():
    g = torch.Generator().manual_seed(2)
    nll = torch.randn(2, 3, 4, 5, generator=g)
    mask = (torch.rand(2, 3, 4, 5, generator=g) > 0.5).float()
    mask[1, 2] = 0  # no foreground: raw map
    out = fill_background(nll, mask).numpy()
    for b in range(2):
        for v in range(3):
            fg = mask[b, v].numpy() > 0.5
            if fg.any():
                exp = np.where(fg, nll[b, v].numpy(), nll[b, v].numpy()[fg].min())
            else:
                exp = nll[b, v].numpy()
            np.testing.assert_array_equal(out[b, v], exp)
    assert fill_background(nll, None) is nll
    np.testing.assert_array_equal(fill_background(nll, mask.bool()).numpy(), out)


def test_scores_aggregation_and_decision():
    maps = torch.tensor([[[[1.0, 4.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    _, vs, ss = score_maps(maps, None, "max")
    assert vs.tolist() == [[4.0, 2.0]] and ss.tolist() == [4.0]
    assert aggregate_scores(vs, "mean").tolist() == [3.0] == aggregate_scores(vs, "mean_of_max").tolist()
    assert decide(ss, 3.9).tolist() == [True] and decide(ss, 4.0).tolist() == [False]
    assert set(VIEW_AGGREGATIONS) == {"max", "mean", "mean_of_max"}
    with pytest.raises(ConfigError, match="unknown view aggregation"):
        aggregate_scores(vs, "median")


@pytest.mark.parametrize("how", VIEW_AGGREGATIONS)
def test_present_views_only_are_aggregated(how):
    gen = torch.Generator().manual_seed(4)
    nll = torch.randn(5, 4, 3, 3, generator=gen, dtype=torch.float64)
    present = torch.rand(5, 4, generator=gen) > 0.4
    present[:, 0] |= ~present.any(dim=1)  # every sample keeps a view
    mask = (torch.rand(5, 4, 3, 3, generator=gen) > 0.3).double()
    maps, vs, ss = score_maps(nll, mask, how, present=present)
    full_maps, full_vs, _ = score_maps(nll, mask, how)
    for b in range(5):
        kept = [float(full_vs[b, v]) for v in range(4) if present[b, v]]
        oracle = max(kept) if how == "max" else sum(kept) / len(kept)
        assert float(ss[b]) == pytest.approx(oracle, rel=1e-12)
        for v in range(4):
            if present[b, v]:
                torch.testing.assert_close(maps[b, v], full_maps[b, v], rtol=0, atol=0)
            else:
                assert torch.isnan(maps[b, v]).all() and torch.isnan(vs[b, v])
    # absent views' scores are never read, whatever they hold
    junk = torch.where(present, full_vs, torch.full_like(full_vs, 1e9))
    torch.testing.assert_close(aggregate_scores(junk, how, present), ss, rtol=0, atol=0)
    assert aggregate_scores(full_vs, how, torch.ones_like(present)).tolist() == pytest.approx(
        aggregate_scores(full_vs, how).tolist(), rel=1e-12)


@pytest.mark.parametrize("how", VIEW_AGGREGATIONS)
def test_image_scored_present_views_only_are_aggregated(how):
    """Post-processing with missing views: every present view's image score is computed as for a
    complete object, then the sample score aggregates over the present views only; absent views
    are NaN and never read."""
    from multiflow.scoring import ImageScoreSpec, ScorePostprocess

    gen = torch.Generator().manual_seed(9)
    post = ScorePostprocess(spec=ImageScoreSpec(name="topk_mean", k=3), image_size=3)
    nll = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    mask = (torch.rand(6, 4, 3, 3, generator=gen) > 0.3).double()
    present = torch.rand(6, 4, generator=gen) > 0.5
    present[:, 2] |= ~present.any(dim=1)
    maps, vs, ss = score_maps(nll, mask, how, post, present=present)
    filled = fill_background(nll, mask)
    for b in range(6):
        kept = []
        for v in range(4):
            if not present[b, v]:
                assert torch.isnan(vs[b, v]) and torch.isnan(maps[b, v]).all()
                continue
            fg = filled[b, v][mask[b, v] > 0.5] if (mask[b, v] > 0.5).any() else filled[b, v].flatten()
            kept.append(float(fg.sort(descending=True).values[:3].mean()))
            assert float(vs[b, v]) == pytest.approx(kept[-1], rel=1e-6)
        oracle = max(kept) if how == "max" else sum(kept) / len(kept)
        assert float(ss[b]) == pytest.approx(oracle, rel=1e-6)
