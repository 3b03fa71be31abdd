"""Single-view baseline reshapes: (N, V, C, h, w) <-> (N*V, 1, C, h, w) and back for maps."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.flow.single_view import (
    from_single_view,
    single_view_indices,
    to_single_view,
)
from multiflow.errors import DataError


def test_image_k_is_view_k_mod_v_of_sample_k_div_v():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 4, 2, 5, 6)).astype(np.float32)
    m = rng.random((3, 4, 5, 6)) > 0.5
    sf, sm = to_single_view(f, m)
    assert sf.shape == (12, 1, 2, 5, 6) and sm.shape == (12, 1, 5, 6)
    for k in range(12):
        np.testing.assert_array_equal(sf[k, 0], f[k // 4, k % 4])
        np.testing.assert_array_equal(sm[k, 0], m[k // 4, k % 4])
    assert np.shares_memory(sf, f)  # a view, no copy of a (possibly memmapped) cache


def test_maps_round_trip_to_the_evaluated_layout():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 5, 4, 4))
    flat = maps.reshape(15, 1, 4, 4)
    np.testing.assert_array_equal(from_single_view(flat, 5), maps)
    with pytest.raises(DataError, match="single-view maps"):
        from_single_view(flat, 4)


def test_shape_errors_and_sample_indices():
    with pytest.raises(DataError, match=r"\(N, V, C, h, w\)"):
        to_single_view(np.zeros((2, 3, 4, 4)))
    with pytest.raises(DataError, match="masks must have shape"):
        to_single_view(np.zeros((2, 3, 1, 4, 4)), np.zeros((2, 3, 4, 5)))
    np.testing.assert_array_equal(single_view_indices(np.array([11, 0, 4, 5, 9]), 5), [0, 1, 2])
