"""View aggregation and image scores from (foreground) anomaly maps."""

from __future__ import annotations

import pytest
import torch

from multiflow.errors import ConfigError, DataError
from multiflow.metrics import VIEW_AGGREGATIONS, aggregate_views, image_scores_from_maps


def test_aggregations() -> None:
    s = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.5, 0.8]], dtype=torch.float64)
    assert aggregate_views(s, "max").tolist() == [0.9, 0.8]
    assert aggregate_views(s, "mean").tolist() == pytest.approx([0.4, 0.6])
    # mean_of_max on image scores (= per-view maxima) is the mean over views
    assert aggregate_views(s, "mean_of_max").tolist() == pytest.approx([0.4, 0.6])
    assert aggregate_views(s).tolist() == [0.9, 0.8]  # official default
    assert set(VIEW_AGGREGATIONS) == {"max", "mean", "mean_of_max"}


def test_mean_of_max_is_what_the_reference_computes_from_maps() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 5, 6, 6, generator=g)
    per_view_max = maps.amax(dim=(-2, -1))
    expected = per_view_max.mean(dim=1)
    got = aggregate_views(image_scores_from_maps(maps), "mean_of_max")
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, maps.amax(dim=(1, 2, 3)))  # and it is not the sample max


def test_image_score_uses_foreground_only() -> None:
    maps = torch.tensor([[[9.0, 1.0], [2.0, 3.0]], [[5.0, 1.0], [1.0, 1.0]]])
    fg = torch.tensor([[[False, True], [True, True]], [[False, False], [False, False]]])
    # view 0: the 9 is background -> 3; view 1: empty foreground falls back to the full max 5
    assert image_scores_from_maps(maps, fg).tolist() == [3.0, 5.0]
    assert image_scores_from_maps(maps).tolist() == [9.0, 5.0]


def test_aggregation_errors() -> None:
    with pytest.raises(ConfigError, match="unknown view aggregation"):
        aggregate_views(torch.zeros(2, 3), "median")
    with pytest.raises(DataError, match=r"\(N, V\)"):
        aggregate_views(torch.zeros(3), "max")
    with pytest.raises(DataError, match="NaN"):
        aggregate_views(torch.tensor([[float("nan"), 1.0]]), "max")
    with pytest.raises(DataError, match="shape of the maps"):
        image_scores_from_maps(torch.zeros(2, 4, 4), torch.ones(2, 4, 3, dtype=torch.bool))
