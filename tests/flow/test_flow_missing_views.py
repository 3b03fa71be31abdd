"""Missing views: the flow on the subgraph induced by the present views (Eq. 4 over present neighbours)."""

import pytest
import torch
from torch.autograd.functional import jacobian

from multiflow.errors import DataError
from multiflow.flow import MultiFlow, ViewGraph
from multiflow.flow.model import masked_loss, present_mask
from multiflow.flow.subnet import MultiViewSubnet

from fusion_helpers import VIEW_FUSIONS, fusion_kwargs, subnet_kwargs

C, H, W = 4, 3, 3
SMALL = dict(n_blocks=2, hidden=4, kernel_sizes=(3, 5), heads=2)
GRAPHS = [ViewGraph.real_iad(), ViewGraph.ring(4), ViewGraph.full(3)]


def _x(v, b=3, seed=1):
    return torch.randn(b, v, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _present(b, v, seed=3):
    """Random masks with every row non-empty; row 0 keeps only view 0 (isolated view case)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, v, generator=g) < 0.6
    p[:, 0] |= ~p.any(1)
    p[0] = False
    p[0, 0] = True
    return p


def _edge(net: MultiViewSubnet, i: int, j: int, h) -> torch.Tensor:
    """The message ``j -> i`` of one sample, with the edge's plane warp for the geometry fusion."""
    op = net.edge_ops[net.edge_class[(j, i)]]
    if "warp" not in op.needs:
        return op(h[i], h[j])
    from multiflow.flow.geometry import warp_grid

    return op(h[i], h[j], warp=warp_grid(net.plane_hom[i, j], net.plane_depth[i], *h[i].shape[-2:]))


def _reference_subnet(net: MultiViewSubnet, u, present):
    """Eq. 4 on the induced subgraph, one sample and one view at a time (independent oracle)."""
    b, v = u.shape[:2]
    out = torch.zeros(b, v, net.out_channels, *u.shape[-2:], dtype=u.dtype)
    for s in range(b):
        h = [torch.relu(net.in_convs[net.view_class[k]](u[s : s + 1, k])) for k in range(v)]
        for i in range(v):
            if not present[s, i]:
                continue
            o = net.self_convs[net.view_class[i]](h[i])
            neigh = [j for j in net.graph.neighbours(i) if present[s, j]]
            if neigh:
                o = o + sum(_edge(net, i, j, h) for j in neigh) / len(neigh)
            out[s, i] = (net.gamma[net.view_class[i]] * o)[0]
    return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("fusion", ["conv", "cross_attention", *VIEW_FUSIONS])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_subnet_matches_induced_subgraph_oracle(graph, fusion, fused, randomise):
    net = randomise(MultiViewSubnet(3, 4, graph=graph, hidden=4, fusion=fusion, heads=2, fused=fused,
                                    **subnet_kwargs(fusion, graph)).double())
    u = torch.randn(4, graph.n_views, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = _present(4, graph.n_views)
    got = net(u, p)
    want = _reference_subnet(net, u, p)
    mask = p[:, :, None, None, None].expand_as(got)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_subnet_all_present_equals_full_graph(fused, randomise):
    g = ViewGraph.real_iad()
    net = randomise(MultiViewSubnet(3, 4, graph=g, hidden=4, fused=fused).double())
    u = torch.randn(2, 5, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(net(u, torch.ones(2, 5, dtype=torch.bool)), net(u), rtol=1e-12, atol=1e-12)


def _flow(graph, randomise, fusion="conv", noise="simplenet", seed=0):
    return randomise(MultiFlow(C, graph, seed=seed, fusion=fusion, noise=noise, **SMALL,
                               **fusion_kwargs(fusion, graph)).double(), seed)


@pytest.mark.parametrize("fusion", ["conv", "self_attention", *VIEW_FUSIONS])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_present_outputs_ignore_absent_features(graph, fusion, randomise):
    model = _flow(graph, randomise, fusion=fusion)
    v = graph.n_views
    x = _x(v)
    p = _present(3, v, seed=5)
    junk = torch.where(p[:, :, None, None, None], x, 50.0 * _x(v, seed=9))
    assert not torch.equal(junk, x)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        a = model(x, generator=torch.Generator().manual_seed(7), present=p)
        b = model(junk, generator=torch.Generator().manual_seed(7), present=p)
        m4 = p[:, :, None, None]
        assert torch.equal(a.nll[m4.expand_as(a.nll)], b.nll[m4.expand_as(b.nll)])
        assert torch.equal(a.logdet[m4.expand_as(a.logdet)], b.logdet[m4.expand_as(b.logdet)])
        assert torch.equal(a.z[p], b.z[p])
    # and the present views do see each other: a present neighbour changes them
    model.eval()
    full = torch.ones_like(p)
    assert not torch.equal(model(x, present=full).nll[:, 0], model(junk, present=full).nll[:, 0])


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_all_present_is_todays_model(graph, randomise):
    model = _flow(graph, randomise).train()
    x = _x(graph.n_views)
    a = model(x, generator=torch.Generator().manual_seed(1))
    b = model(x, generator=torch.Generator().manual_seed(1), present=torch.ones(3, graph.n_views, dtype=torch.bool))
    torch.testing.assert_close(b.z, a.z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.logdet, a.logdet, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fusion", ["conv", "cross_attention"])
def test_inverse_on_induced_subgraph(fusion, randomise):
    model = _flow(ViewGraph.real_iad(), randomise, fusion=fusion).eval()
    x = _x(5)
    p = _present(3, 5, seed=11)
    out = model(x, present=p)
    assert out.logdet[p].abs().max() > 1e-2
    x_back, ld_inv = model.inverse(out.z, present=p)
    torch.testing.assert_close(x_back[p], x[p], rtol=0, atol=1e-11)
    m = p[:, :, None, None].expand_as(ld_inv)
    torch.testing.assert_close(ld_inv[m], -out.logdet[m], rtol=0, atol=1e-11)


def test_logdet_of_present_views_is_the_jacobian_of_the_subflow(randomise):
    """Present views form their own bijection: its log|det J| is the logdet summed over them."""
    model = _flow(ViewGraph.real_iad(), randomise, seed=4).eval()
    p = torch.tensor([[True, False, True, True, False]])
    keep = p[0].nonzero()[:, 0]
    x = _x(5, b=1)

    def sub(xp):
        full = x.clone()
        full[:, keep] = xp
        return model(full, present=p).z[:, keep]

    xp = x[:, keep]
    jac = jacobian(sub, xp, vectorize=True)
    n = xp.numel()
    sign, logabs = torch.linalg.slogdet(jac.reshape(n, n))
    assert sign != 0
    torch.testing.assert_close(model(x, present=p).logdet[:, keep].sum(), logabs, rtol=1e-10, atol=1e-10)


def test_loss_ignores_absent_views(randomise):
    model = _flow(ViewGraph.real_iad(), randomise).train()
    x = _x(5).requires_grad_(True)
    p = _present(3, 5, seed=13)
    mask = (torch.rand(3, 5, H, W, generator=torch.Generator().manual_seed(0)) < 0.7).double()
    out = model(x, generator=torch.Generator().manual_seed(2), present=p)
    loss = masked_loss(out.nll, present_mask(mask, p, out.nll))
    loss.backward()
    assert torch.equal(x.grad[~p], torch.zeros_like(x.grad[~p]))
    assert x.grad[p].abs().sum() > 0
    # the same value as the foreground average over the present views only, computed by hand
    m = mask * p[:, :, None, None]
    torch.testing.assert_close(loss, (out.nll * m).sum() / m.sum(), rtol=1e-12, atol=1e-12)


def test_anomaly_map_marks_absent_views_nan(randomise):
    model = _flow(ViewGraph.real_iad(), randomise)
    p = _present(3, 5)
    maps = model.anomaly_map(_x(5), present=p)
    assert torch.isnan(maps[~p]).all() and torch.isfinite(maps[p]).all()


def test_present_validation(randomise):
    model = _flow(ViewGraph.ring(4), randomise)
    with pytest.raises(DataError, match="at least one present view"):
        model(_x(4, b=2), present=torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(DataError, match="bool tensor"):
        model(_x(4, b=2), present=torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("fused", [True, False])
def test_messages_off_with_missing_views_is_the_flow_without_links(fused, randomise):
    """``cross_view_scaled(model, 0)`` on a view-dropout input = the same flow on graph ``none``
    (every parameter but the edge operators copied), on the present views."""
    from multiflow.flow.subnet import cross_view_scaled

    g = ViewGraph.real_iad()
    model = _flow(g, randomise, seed=2)
    model.set_fused(fused)
    plain = MultiFlow(C, ViewGraph.none(5), **SMALL).double()
    state = {k: v for k, v in model.state_dict().items() if ".edge_ops." not in k}
    plain.load_state_dict(state, strict=True)
    x = _x(5)
    p = _present(3, 5, seed=5)
    m4 = p[:, :, None, None]
    for mode in ("eval", "train"):
        model.train(mode == "train")
        plain.train(mode == "train")
        with cross_view_scaled(model, 0.0):
            off = model(x, generator=torch.Generator().manual_seed(3), present=p)
        want = plain(x, generator=torch.Generator().manual_seed(3), present=p)
        torch.testing.assert_close(off.nll[m4.expand_as(off.nll)], want.nll[m4.expand_as(want.nll)],
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(off.z[p], want.z[p], rtol=1e-12, atol=1e-12)
        on = model(x, generator=torch.Generator().manual_seed(3), present=p)
        assert (on.nll - off.nll)[m4.expand_as(on.nll)].abs().max() > 1e-3  # the messages matter
