"""The fusion operators that do not assume aligned views (issue 24 §1): global context,
correspondence attention and geometry-aware resampling, each against an independent oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.device import autocast
from multiflow.errors import ConfigError
from multiflow.flow import MultiFlow, ViewGraph
from multiflow.flow.fusion import (
    CorrespondenceEdge,
    CrossAttentionEdge,
    EdgeOperator,
    GeometryEdge,
    GlobalContextEdge,
    masked_moments,
    position_encoding,
)
from multiflow.flow.geometry import plane_homographies, warp_grid
from multiflow.flow.subnet import MultiViewSubnet

from fusion_helpers import VIEW_FUSIONS, fusion_kwargs, synth_rig

CPU = torch.device("cpu")


def _h(seed, b=2, c=4, hh=3, ww=3):
    return torch.randn(b, c, hh, ww, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ global context
def test_masked_moments_match_numpy_and_ignore_the_background():
    h = _h(0, b=2, c=3, hh=4, ww=5)
    fg = (torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    mu, sigma = masked_moments(h, fg)
    for b in range(2):
        sel = h[b].numpy()[:, fg[b, 0].numpy() > 0]  # (C, n) foreground values only
        np.testing.assert_allclose(mu[b].numpy(), sel.mean(1), rtol=1e-6)
        np.testing.assert_allclose(sigma[b].numpy(), np.sqrt(sel.var(1) + 1e-5), rtol=1e-6)


def test_global_context_depends_on_the_neighbours_foreground_only(randomise):
    op = randomise(GlobalContextEdge(4, 6, 3).double())
    h_i, h_j = _h(0, hh=4, ww=4), _h(1, hh=4, ww=4)
    fg = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    out = op(h_i, h_j, source_fg=fg)
    junk = torch.where(fg > 0, h_j, 100 * _h(3, hh=4, ww=4))  # background rewritten
    torch.testing.assert_close(op(h_i, junk, source_fg=fg), out, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(op(h_i, junk), op(h_i, h_j))  # without the mask it does see it
    assert not torch.allclose(op(_h(4, hh=4, ww=4), h_j, source_fg=fg), out)  # FiLM of the target
    # an empty mask pools over every position (no division by an empty sum)
    empty = torch.zeros_like(fg)
    torch.testing.assert_close(op(h_i, h_j, source_fg=empty), op(h_i, h_j), rtol=1e-12, atol=1e-12)


def test_global_context_starts_as_a_constant_message_and_is_finite_for_absent_views():
    op = GlobalContextEdge(4, 6, 3).double()
    h_i, h_j = _h(0), _h(1)
    out = op(h_i, h_j)
    torch.testing.assert_close(out, op.conv.bias[None, :, None, None].expand_as(out), rtol=0, atol=1e-12)
    absent = torch.tensor([False, True])
    out = op(h_i, torch.zeros_like(h_j), source_present=absent, source_fg=torch.zeros(2, 1, 3, 3))
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------ correspondence
def _distinct_codes(hh=4, ww=4, seed=0):
    """Orthonormal codes, one per position (``hidden = H W``, a random orthogonal frame): no two
    positions look alike."""
    q, _ = torch.linalg.qr(torch.randn(hh * ww, hh * ww, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q.reshape(1, hh * ww, hh, ww)


def _content_attention(op, sharpness=100.0):
    """Query/key = sharpness * identity on the content, value/output = identity, no position term."""
    hidden = op.query.weight.shape[0]
    eye = torch.eye(hidden, dtype=torch.float64)[:, :, None, None]
    with torch.no_grad():
        for conv, w in ((op.query, sharpness * eye), (op.key, eye), (op.value, eye), (op.proj, eye)):
            conv.weight.copy_(w)
            conv.bias.zero_()
        op.pos_query.weight.zero_()
        op.pos_key.weight.zero_()
    return op


def test_correspondence_attention_finds_the_shifted_pattern():
    """The neighbour shows the target's content moved by (2, 1) cells: each target position attends
    to the neighbour's MATCHING position, not the same index (what the paper's cross attention does)."""
    hh, ww, shift = 4, 4, (2, 1)
    hidden = hh * ww
    h_i = _distinct_codes(hh, ww)
    h_j = torch.roll(h_i, shifts=shift, dims=(2, 3))  # h_j[y + 2, x + 1] = h_i[y, x]
    op = _content_attention(CorrespondenceEdge(hidden, 3, 1, heads=1).double())
    a = op.attend(h_i, h_j)
    torch.testing.assert_close(a, h_i, rtol=0, atol=1e-6)  # what sits at the matching position
    assert (a - h_j).abs().max() > 0.5  # not the same-index neighbour content
    # the output at one position depends on the matching neighbour position, not the same index
    y, x = 1, 3  # matches (3, 0) of the neighbour
    jac = torch.autograd.functional.jacobian(lambda s: op.attend(h_i, s)[0, :, y, x], h_j)  # (C, 1, C, H, W)
    weight = jac.abs().sum(dim=(0, 1, 2))  # (H, W)
    my, mx = (y + shift[0]) % hh, (x + shift[1]) % ww
    assert weight[my, mx] > 0.999 * weight.sum()
    assert weight[y, x] < 1e-6 * weight[my, mx]
    # the paper's cross attention (query and key from the target) cannot: it returns the same index
    cross = CrossAttentionEdge(hidden, 3, 1, heads=1).double()
    eye = torch.eye(hidden, dtype=torch.float64)
    with torch.no_grad():
        cross.attn.in_proj_weight.copy_(torch.cat([100 * eye, eye, eye]))
        cross.attn.in_proj_bias.zero_()
        cross.attn.out_proj.weight.copy_(eye)
        cross.attn.out_proj.bias.zero_()
    t = lambda h: h.flatten(2).transpose(1, 2)  # noqa: E731
    same, _ = cross.attn(t(h_i), t(h_i), t(h_j), need_weights=False)
    torch.testing.assert_close(same.transpose(1, 2).reshape(1, hidden, hh, ww), h_j, rtol=0, atol=1e-6)


def test_correspondence_masks_background_keys_and_is_finite_for_absent_views(randomise):
    op = randomise(CorrespondenceEdge(4, 6, 3, heads=2).double())
    h_i, h_j = _h(0, hh=4, ww=4), _h(1, hh=4, ww=4)
    fg = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    out = op(h_i, h_j, source_fg=fg)
    junk = torch.where(fg > 0, h_j, 10 * _h(3, hh=4, ww=4))
    torch.testing.assert_close(op(h_i, junk, source_fg=fg), out, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(op(h_i, junk), op(h_i, h_j))
    zero = op(h_i, torch.zeros_like(h_j), source_present=torch.tensor([False, False]),
              source_fg=torch.zeros_like(fg))
    assert torch.isfinite(zero).all()


def test_correspondence_matches_its_definition(randomise):
    """softmax((W_q h_i + U_q e)(W_k h_j + U_k e)^T / sqrt(d) + m_j) W_v h_j per head, W_o, LayerNorm,
    ReLU, conv: written out with plain matmuls (2 heads, background keys at -1e4)."""
    op = randomise(CorrespondenceEdge(4, 6, 3, heads=2).double())
    h_i, h_j = _h(0, hh=3, ww=4), _h(1, hh=3, ww=4)
    fg = (torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    fg[1] = 0.0  # no foreground: every key
    pe = position_encoding(3, 4, dtype=torch.float64)

    def tokens(conv, x):  # 1x1 conv as a matmul on (B, N, C) tokens
        return x.flatten(2).transpose(1, 2) @ conv.weight[:, :, 0, 0].T + (0 if conv.bias is None else conv.bias)

    q = tokens(op.query, h_i) + tokens(op.pos_query, pe)
    k = tokens(op.key, h_j) + tokens(op.pos_key, pe)
    v = tokens(op.value, h_j)
    keep = fg.flatten(1) > 0
    keep[1] = True
    out = []
    for hd in range(2):
        sl = slice(2 * hd, 2 * hd + 2)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / np.sqrt(2.0)
        logits = logits + torch.where(keep, 0.0, -1e4)[:, None, :].double()
        out.append(torch.softmax(logits, -1) @ v[..., sl])
    a = torch.cat(out, -1) @ op.proj.weight[:, :, 0, 0].T + op.proj.bias  # (B, N, C)
    a = torch.relu(op.norm(a)).transpose(1, 2).reshape(2, 4, 3, 4)
    torch.testing.assert_close(op(h_i, h_j, source_fg=fg), op.conv(a), rtol=1e-10, atol=1e-12)


def test_position_encoding_tells_positions_apart():
    pe = position_encoding(12, 12, dtype=torch.float64)[0].flatten(1).T  # (N, 16)
    d = torch.cdist(pe, pe)
    assert pe.shape == (144, 16) and d[~torch.eye(144, dtype=torch.bool)].min() > 1e-3


# ------------------------------------------------------------------------------ geometry
def _oracle_grid(rig: dict, i: int, j: int, hh: int, ww: int):
    """Cell centres of view ``i`` back-projected by ray casting onto the plane, projected into view
    ``j`` with numpy (camera centre + ray, no homography): normalised ``(x, y)`` and validity."""
    from multiflow.data.cameras import CameraView

    cams = [CameraView(**{k: (np.asarray(v) if k in ("R", "t") else v) for k, v in c.items()}) for c in rig["views"]]
    ci, cj = cams[i], cams[j]
    z0 = rig["plane_height"]
    rows, cols = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    u = (cols.ravel() + 0.5) / ww * ci.width  # image pixel of the cell centre
    v = (rows.ravel() + 0.5) / hh * ci.height
    rays = np.stack([(u - ci.cx) / ci.fx, (v - ci.cy) / ci.fy, np.ones_like(u)], 1) @ ci.R  # world directions
    s = (z0 - ci.centre[2]) / rays[:, 2]
    pts = ci.centre + s[:, None] * rays
    uv = cj.project(pts)
    norm = np.stack([uv[:, 0] / cj.width * 2 - 1, uv[:, 1] / cj.height * 2 - 1], 1)
    valid = (s > 0) & np.isfinite(norm).all(1) & (np.abs(np.nan_to_num(norm, nan=9)) <= 1).all(1)
    return norm.reshape(hh, ww, 2), valid.reshape(hh, ww)


@pytest.mark.parametrize("plane_height", [0.0, 0.15])
def test_plane_warp_matches_a_projection_oracle(plane_height):
    rig = synth_rig(5, size=96, plane_height=plane_height)
    H, d = plane_homographies(rig, 5)
    hh = ww = 12
    n_valid = 0
    for i in range(5):
        for j in range(5):
            grid, valid = warp_grid(torch.from_numpy(H[i, j]), torch.from_numpy(d[i]), hh, ww)
            want, ok = _oracle_grid(rig, i, j, hh, ww)
            np.testing.assert_array_equal(valid[0, 0].numpy() > 0, ok, err_msg=f"{i}->{j}")
            np.testing.assert_allclose(grid[0].numpy()[ok], want[ok], rtol=0, atol=1e-9, err_msg=f"{i}->{j}")
            assert (grid[0].numpy()[~ok] == 2.0).all()
            n_valid += int(ok.sum())
            if i == j:
                assert ok.all()
    assert 0.5 * 25 * hh * ww < n_valid < 25 * hh * ww  # side views see the tray partly outside the others


def test_geometry_edge_resamples_the_neighbour_at_the_mapped_positions():
    """A neighbour map that IS its normalised coordinate: the resampled map equals the grid where it
    lands inside (bilinear is exact on a linear ramp away from the border), the message is 0 outside."""
    rig = synth_rig(5, size=96)
    H, d = plane_homographies(rig, 5)
    hh = ww = 12
    grid, valid = warp_grid(torch.from_numpy(H[1, 2]), torch.from_numpy(d[1]), hh, ww)
    ys = (torch.arange(hh, dtype=torch.float64) * 2 + 1) / hh - 1
    xs = (torch.arange(ww, dtype=torch.float64) * 2 + 1) / ww - 1
    ramp = torch.stack([xs[None, :].expand(hh, ww), ys[:, None].expand(hh, ww)])[None]  # (1, 2, H, W)
    got = GeometryEdge.resample(ramp, grid.double())
    inner = (valid[0, 0] > 0) & (grid[0].abs() < 1 - 1.0 / ww).all(-1)
    assert inner.sum() > 20
    torch.testing.assert_close(got[0].permute(1, 2, 0)[inner], grid[0][inner], rtol=0, atol=1e-12)
    op = GeometryEdge(2, 3, 3).double()
    out = op(ramp, ramp, warp=(grid, valid))
    assert (out[..., valid[0, 0] == 0] == 0).all() and (valid == 0).any()


def test_geometry_refuses_without_camera_data():
    with pytest.raises(ConfigError, match="camera rig"):
        MultiFlow(4, ViewGraph.real_iad(), fusion="geometry", n_blocks=1, kernel_sizes=(3,), hidden=4)
    with pytest.raises(ConfigError, match="camera rig"):
        MultiViewSubnet(3, 4, graph=ViewGraph.ring(3), hidden=4, fusion="geometry")
    with pytest.raises(ConfigError, match="warp"):
        GeometryEdge(4, 6, 3)(_h(0), _h(1))
    # no edges, no messages: nothing to resample, nothing needed
    MultiFlow(4, ViewGraph.none(2), fusion="geometry", n_blocks=1, kernel_sizes=(3,), hidden=4)
    # the rig names the views: another order or another camera is refused, naming both
    rig = synth_rig(5)
    rig["views"] = rig["views"][::-1]
    with pytest.raises(ConfigError, match="view order"):
        MultiFlow(4, ViewGraph.real_iad(), fusion="geometry", n_blocks=1, kernel_sizes=(3,), hidden=4,
                  camera_rig=rig)


def test_engine_finds_the_rig_of_the_class_or_refuses(tmp_path):
    from multiflow.config import DataConfig, ModelConfig
    from multiflow.engine.factories import resolve_camera_rig
    from multiflow.synth.generator import camera_rig_record
    from multiflow.synth.geometry import camera_rig

    model = ModelConfig(fusion="geometry")
    data = DataConfig(root=str(tmp_path))
    views = ["C1", "C2", "C3"]
    with pytest.raises(ConfigError, match=r"no cameras.json was found.*realiad_256/brick/cameras.json"):
        resolve_camera_rig(model, data, "brick", views)
    with pytest.raises(ConfigError, match="model.cameras: camera rig file"):
        resolve_camera_rig(ModelConfig(fusion="geometry", cameras=str(tmp_path / "nope.json")), data, "brick", views)
    assert resolve_camera_rig(ModelConfig(fusion="conv"), data, "brick", views) is None
    folder = tmp_path / "realiad_256" / "brick"
    folder.mkdir(parents=True)
    import json

    (folder / "cameras.json").write_text(json.dumps(camera_rig_record("brick", camera_rig(n_views=5, size=64), [])))
    rig = resolve_camera_rig(model, data, "brick", ["C3", "C1"])  # matched by name, in the data's order
    assert [c["name"] for c in rig["views"]] == ["C3", "C1"] and rig["plane_height"] == 0.0
    with pytest.raises(ConfigError, match=r"no camera for the views \['top'\]"):
        resolve_camera_rig(model, data, "brick", ["C1", "top"])
    with pytest.raises(ConfigError, match="data.flips"):
        resolve_camera_rig(model, DataConfig(root=str(tmp_path), flips={"C2": "lr"}), "brick", views)


# ------------------------------------------------------------------------------ in the flow
@pytest.mark.parametrize("fusion", VIEW_FUSIONS)
@pytest.mark.parametrize("graph", [ViewGraph.real_iad(), ViewGraph.from_named_edges(
    ["C1", "C2", "C3", "C4"], [["C1", "C3"], ["C3", "C4"], ["C2", "C4"]])], ids=["real_iad", "custom"])
def test_flow_with_foreground_and_missing_views_is_exactly_invertible(graph, fusion, randomise):
    v = graph.n_views
    model = randomise(MultiFlow(4, graph, fusion=fusion, n_blocks=2, kernel_sizes=(3, 3), hidden=4, heads=2,
                                seed=1, **fusion_kwargs(fusion, graph)).double(), 3).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, v, 4, 4, 4, generator=g, dtype=torch.float64)
    fg = (torch.rand(2, v, 4, 4, generator=g) > 0.4).double()
    p = torch.ones(2, v, dtype=torch.bool)
    p[0, 1] = False
    for present in (None, p):
        out = model(x, present=present, fg=fg)
        assert torch.isfinite(out.z).all() and out.logdet.abs().max() > 1e-2
        back, ld = model.inverse(out.z, present=present, fg=fg)
        keep = torch.ones_like(p) if present is None else present
        torch.testing.assert_close(back[keep], x[keep], rtol=0, atol=1e-11)
        torch.testing.assert_close(ld[keep], -out.logdet[keep], rtol=0, atol=1e-11)
    # absent views: their features (and foreground) do not reach the present views
    junk_x = torch.where(p[:, :, None, None, None], x, 1e3 * x)
    junk_fg = torch.where(p[:, :, None, None], fg, 1 - fg)
    torch.testing.assert_close(model(junk_x, present=p, fg=junk_fg).z[p], model(x, present=p, fg=fg).z[p],
                               rtol=0, atol=1e-12)
    uses_fg = fusion != "geometry"
    assert (not torch.allclose(model(x, fg=fg).z, model(x).z)) == uses_fg


@pytest.mark.parametrize("fusion", VIEW_FUSIONS)
def test_every_parameter_gets_a_gradient(fusion, randomise):
    graph = ViewGraph.real_iad()
    model = randomise(MultiFlow(4, graph, fusion=fusion, n_blocks=1, kernel_sizes=(3,), hidden=4, heads=2,
                                **fusion_kwargs(fusion, graph)).double()).train()
    x = torch.randn(2, 5, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fg = (torch.rand(2, 5, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3).double()
    out = model(x, generator=torch.Generator().manual_seed(0), fg=fg)
    model.masked_loss(out.nll, fg > 0).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize("fusion", VIEW_FUSIONS)
def test_bf16_autocast_st_networks_keep_the_flow_invertible(fusion, randomise):
    """CPU bf16 autocast (slow reference kernels on this machine, tiny shapes): the operators run in
    bf16, the coupling stays invertible to fp32 rounding, missing views stay finite."""
    graph = ViewGraph.real_iad()
    model = randomise(MultiFlow(6, graph, fusion=fusion, n_blocks=2, kernel_sizes=(3, 3), hidden=8, heads=2,
                                **fusion_kwargs(fusion, graph)), 2, scale=0.2).eval()
    dtypes = set()
    for m in model.modules():
        if isinstance(m, EdgeOperator):
            m.register_forward_hook(lambda _m, _i, o: dtypes.add(o.dtype))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 5, 5, generator=g)
    fg = (torch.rand(2, 5, 5, 5, generator=g) > 0.4).float()
    p = torch.tensor([[True, True, False, True, True], [True, False, False, False, True]])
    with autocast(CPU, "bf16"):
        out = model(x, present=p, fg=fg)
        back, ld = model.inverse(out.z, present=p, fg=fg)
    assert dtypes == {torch.bfloat16} and out.z.dtype == torch.float32
    assert torch.isfinite(out.z[p]).all() and (out.z[p] - x[p]).abs().max() > 0.05
    torch.testing.assert_close(back[p], x[p], rtol=1e-5, atol=1e-5)


def test_geometry_rig_travels_with_the_saved_flow(tmp_path, randomise):
    from multiflow.flow.io import load_flow, save_flow

    graph = ViewGraph.real_iad()
    model = randomise(MultiFlow(4, graph, fusion="geometry", n_blocks=1, kernel_sizes=(3,), hidden=4,
                                **fusion_kwargs("geometry", graph))).eval()
    x = torch.randn(1, 5, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    save_flow(model, tmp_path / "flow.safetensors")
    back = load_flow(tmp_path / "flow.safetensors").eval()
    assert back.config["camera_rig"] == model.config["camera_rig"]
    torch.testing.assert_close(back(x).nll, model(x).nll, rtol=0, atol=0)
