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


# ------------------------------------------------------------------------------------------------
# SingleViewFlow: the single-view flow with MultiFlow's interface
import torch  # noqa: E402

from multiflow.errors import ConfigError  # noqa: E402
from multiflow.flow import MultiFlow, SingleViewFlow, ViewGraph, load_flow, save_flow  # noqa: E402

C = 4
SMALL = dict(n_blocks=2, hidden=4, kernel_sizes=(3, 5), seed=3)


def _pair(randomise):
    """A randomised single-view flow and the one-view MultiFlow with the same weights (the old
    single-view model: what ``model.single_view`` trained before the class existed)."""
    sv = randomise(SingleViewFlow(C, **SMALL).double(), 5)
    old = MultiFlow(C, ViewGraph.none(1, ["view"]), **SMALL).double()
    old.load_state_dict(sv.state_dict(), strict=True)
    return sv, old


def _x(b=2, v=3, seed=0):
    return torch.randn(b, v, C, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_every_image_is_its_own_sample_of_the_one_view_flow(randomise):
    sv, old = _pair(randomise)
    x = _x()
    for mode in ("eval", "train"):  # train: the noise too is drawn per image, as for (B*V, 1) features
        sv.train(mode == "train")
        old.train(mode == "train")
        out = sv(x, generator=torch.Generator().manual_seed(4))
        want = old(x.reshape(6, 1, C, 3, 3), generator=torch.Generator().manual_seed(4))
        assert out.z.shape == x.shape and out.nll.shape == out.logdet.shape == (2, 3, 3, 3)
        assert torch.equal(out.z, want.z.reshape(x.shape))
        assert torch.equal(out.nll, want.nll.reshape(2, 3, 3, 3))
        assert torch.equal(out.logdet, want.logdet.reshape(2, 3, 3, 3))
    sv.train()
    a = sv(x, generator=torch.Generator().manual_seed(4)).nll
    assert not torch.allclose(a[:, 0], a[:, 1])  # views got different noise (not one draw per object)
    # the same as the noise module + nll_of_noised (the data-parallel training path)
    xin, cond = sv.noise(x, torch.Generator().manual_seed(4))
    assert torch.equal(sv.nll_of_noised(xin, cond), a)
    # a view's output depends on that view only
    y = x.clone()
    y[:, 1] += 1.0
    sv.eval()
    d = (sv(y).nll - sv(x).nll).abs().amax(dim=(2, 3))
    assert (d[:, 1] > 1e-3).all() and torch.equal(d[:, [0, 2]], torch.zeros(2, 2, dtype=d.dtype))


def test_inverse_and_logdet(randomise):
    sv, _ = _pair(randomise)
    sv.eval()
    x = _x(v=2, seed=1)
    out = sv(x)
    assert out.logdet.abs().max() > 1e-2
    back, ld = sv.inverse(out.z)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-11)
    torch.testing.assert_close(ld, -out.logdet, rtol=0, atol=1e-11)


def test_anomaly_map_with_mask_and_absent_views(randomise):
    sv, old = _pair(randomise)
    x = _x(v=3, seed=2)
    mask = (torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.6).double()
    present = torch.tensor([[True, False, True], [False, True, True]])
    full = sv.anomaly_map(x, mask)
    want = old.anomaly_map(x.reshape(6, 1, C, 3, 3), mask.reshape(6, 1, 3, 3)).reshape(2, 3, 3, 3)
    assert torch.equal(full, want)
    part = sv.anomaly_map(x, mask, present)
    assert torch.isnan(part[~present]).all() and torch.equal(part[present], full[present])
    with pytest.raises(DataError, match="at least one present view"):
        sv(x, present=torch.tensor([[True, True, True], [False, False, False]]))


def test_sample_layout_is_the_single_view_reshape():
    sv = SingleViewFlow(C, n_blocks=1, hidden=4, kernel_sizes=(3,))
    multi = MultiFlow(C, ViewGraph.ring(3), n_blocks=1, hidden=4, kernel_sizes=(3,))
    rng = np.random.default_rng(0)
    f, m = rng.normal(size=(4, 3, C, 2, 2)), rng.random((4, 3, 2, 2)) > 0.5
    sf, sm = sv.to_flow_samples(f, m)
    np.testing.assert_array_equal(sf, to_single_view(f, m)[0])
    np.testing.assert_array_equal(sm, to_single_view(f, m)[1])
    np.testing.assert_array_equal(sv.from_flow_samples(sf[:, :, 0, :, :], 3), f[:, :, 0])
    np.testing.assert_array_equal(sv.objects_of_flow_samples(np.array([11, 0, 4]), 3), [0, 1, 3])
    assert multi.to_flow_samples(f, m) == (f, m) and multi.from_flow_samples(sm, 3) is sm
    np.testing.assert_array_equal(multi.objects_of_flow_samples(np.array([3, 0, 2]), 3), [0, 2, 3])


def test_config_file_round_trip_and_graph_check(tmp_path, randomise):
    sv = _pair(randomise)[0].float().eval()  # the file keeps the parameters' dtype, load_flow builds float32
    path = save_flow(sv, tmp_path / "sv.safetensors")
    back = load_flow(path, flow_class=SingleViewFlow).eval()
    assert type(back) is SingleViewFlow and back.config == sv.config
    x = _x().float()
    assert torch.equal(back(x).nll, sv(x).nll)
    assert type(load_flow(path)) is MultiFlow  # the file is a one-view MultiFlow's, as it always was
    with pytest.raises(ConfigError, match="one view without links"):
        SingleViewFlow(C, ViewGraph.ring(3))


def test_the_factory_builds_the_old_single_view_model():
    """``build_flow`` with ``model.single_view`` = the one-view flow the pipeline used to build
    (graph ``none`` over ``["view"]``): same config, same initial weights."""
    import dataclasses

    from multiflow.config import ModelConfig
    from multiflow.engine.factories import build_flow

    cfg = ModelConfig(n_blocks=2, hidden=4, kernel_sizes=[3, 5], single_view=True)
    new = build_flow(cfg, C, ["C1", "C2", "C3"], seed=7)
    old = build_flow(dataclasses.replace(cfg, graph="none", single_view=False), C, ["view"], seed=7)
    assert type(new) is SingleViewFlow and type(old) is MultiFlow
    assert new.config == old.config
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))
