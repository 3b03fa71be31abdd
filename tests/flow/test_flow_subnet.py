import pytest
import torch
from torch.autograd.functional import jacobian

from multiflow.errors import ConfigError
from multiflow.flow.graph import ViewGraph
from multiflow.flow.subnet import MultiViewSubnet

from fusion_helpers import subnet_kwargs

GRAPHS = [
    ViewGraph.real_iad(),
    ViewGraph.real_iad(top=False),
    ViewGraph.ring(5),
    ViewGraph.top_only(4),
    ViewGraph.none(3),
    ViewGraph.full(4),
    ViewGraph.from_edges(3, [(0, 1), (1, 2), (0, 2)]),
]


def _net(graph, *, k=3, fusion="conv", share=False, fused=True, cin=3, cout=4):
    return MultiViewSubnet(cin, cout, graph=graph, hidden=4, kernel_size=k, fusion=fusion, heads=2,
                           share_weights=share, fused=fused, **subnet_kwargs(fusion, graph)).double()


def _u(v, b=2, c=3, hw=4, seed=0):
    return torch.randn(b, v, c, hw, hw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _both_strategies(net, u, present=None):
    """``net(u, present)`` with the fused and with the per-edge strategy."""
    before = net.fused
    try:
        net.fused = True
        fused = net(u, present)
        net.fused = False
        per_edge = net(u, present)
    finally:
        net.fused = before
    return fused, per_edge


def _present(b, v, seed=3):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, v, generator=g) < 0.6
    p[:, 0] |= ~p.any(1)
    return p


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_fused_equals_per_edge(graph, share, k, randomise):
    net = randomise(_net(graph, k=k, share=share))
    u = _u(graph.n_views, b=3)
    for present in (None, _present(3, graph.n_views)):
        fused, per_edge = _both_strategies(net, u, present)
        assert fused.shape == (3, graph.n_views, 4, 4, 4)
        assert fused.abs().max() > 1e-3
        torch.testing.assert_close(fused, per_edge, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The forward of the st-network before the strategies were merged (multiflow 215caba), copied
# verbatim: the paper's network (every view present, cross_view_scale 1) must stay bit-identical.
def _old_forward_per_edge(self, u):
    vc = self.view_class
    h = [torch.relu(self.in_convs[vc[v]](u[:, v])) for v in range(self.n_views)]
    outs = []
    for i in range(self.n_views):
        o = self.self_convs[vc[i]](h[i])
        neigh = self._neigh[i]
        if neigh:
            acc = None
            for j in neigh:
                e = self.edge_ops[self.edge_class[(j, i)]](h[i], h[j])
                acc = e if acc is None else acc + e
            o = o + (acc / len(neigh) if self.cross_view_scale == 1.0 else acc * (self.cross_view_scale / len(neigh)))
        outs.append(self.gamma[vc[i]] * o)
    return torch.stack(outs, dim=1)


def _old_forward_fused(self, u):
    import torch.nn.functional as F

    b, v, _, hh, ww = u.shape
    p = self.kernel_size // 2
    vc = self.view_class
    h = self._fused_hidden(u)
    outs = []
    for i in range(v):
        g = self.gamma[vc[i]]
        sc = self.self_convs[vc[i]]
        neigh = self._neigh[i]
        if not neigh:
            outs.append(F.conv2d(h[:, i], g * sc.weight, g * sc.bias))
            continue
        convs = [self.edge_ops[self.edge_class[(j, i)]].conv for j in neigh]
        scale = g / len(neigh) if self.cross_view_scale == 1.0 else g * (self.cross_view_scale / len(neigh))
        weight = torch.cat([g * sc.weight] + [scale * c.weight for c in convs], dim=1)
        bias = g * sc.bias + scale * torch.stack([c.bias for c in convs]).sum(0)
        idx = torch.tensor((i,) + tuple(neigh), device=u.device)
        inp = h.index_select(1, idx).reshape(b, (1 + len(neigh)) * self.hidden, hh + 2 * p, ww + 2 * p)
        outs.append(F.conv2d(inp, weight, bias))
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fusion", ["conv", "cross_attention"])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_all_present_is_bit_identical_to_the_old_forward(graph, fusion, dtype, randomise):
    net = randomise(_net(graph, fusion=fusion)).to(dtype)
    u = _u(graph.n_views, b=3).to(dtype)
    with torch.no_grad():
        fused, per_edge = _both_strategies(net, u)
        if fusion == "conv":
            assert torch.equal(fused, _old_forward_fused(net, u))
        assert torch.equal(per_edge, _old_forward_per_edge(net, u))
    assert per_edge.abs().max() > 1e-3


def test_dispatch_and_gradients_agree(randomise):
    g = ViewGraph.real_iad()
    net = randomise(_net(g))
    assert net.can_fuse
    u = _u(5)
    net.fused = True
    net(u).square().sum().backward()
    g_fused = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.fused = False
    net(u).square().sum().backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, g_fused[n], rtol=1e-10, atol=1e-12)
        assert torch.count_nonzero(p.grad) > 0, n


def test_equation_4_by_hand(randomise):
    """out_i = gamma_i (f_ii(h_i) + mean_j f_ji(h_j)) computed from the modules directly."""
    g = ViewGraph.real_iad()
    net = randomise(_net(g, fused=False))
    u = _u(5)
    h = [torch.relu(net.in_convs[v](u[:, v])) for v in range(5)]
    for i in range(5):
        edges = [net.edge_ops[net.edge_class[(j, i)]].conv(h[j]) for j in g.neighbours(i)]
        expected = net.gamma[i] * (net.self_convs[i](h[i]) + sum(edges) / len(edges))
        torch.testing.assert_close(net(u)[:, i], expected, rtol=1e-12, atol=1e-12)


def test_gamma_zero_gives_zero():
    net = _net(ViewGraph.real_iad())
    out = net(_u(5))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("fusion", ["conv", "self_attention", "cross_attention", "global_context", "correspondence"])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_locality(graph, fusion, randomise):
    """Output view i depends exactly on input views N(i) ∪ {i}."""
    net = randomise(_net(graph, fusion=fusion))
    u = _u(graph.n_views, b=1, hw=3)
    jac = jacobian(net, u, vectorize=True)[0]  # (V, Cout, H, W, 1, V, Cin, H, W)
    for i in range(graph.n_views):
        for j in range(graph.n_views):
            dep = torch.count_nonzero(jac[i, :, :, :, 0, j]) > 0
            assert dep == (j == i or j in graph.neighbours(i)), (i, j)


def test_shared_weights_equivariance(randomise):
    g = ViewGraph.real_iad()
    shared = randomise(_net(g, share=True))
    plain = randomise(_net(g, share=False))
    n_shared = sum(p.numel() for p in shared.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_shared < n_plain
    u = _u(5)
    for sigma in g.automorphisms():
        inv = torch.argsort(torch.tensor(sigma))
        u_perm = u[:, inv]  # u_perm[:, sigma[v]] = u[:, v]
        torch.testing.assert_close(shared(u_perm), shared(u)[:, inv], rtol=1e-12, atol=1e-12)
    sigma = (0, 2, 3, 4, 1)  # a rotation of the side ring
    inv = torch.argsort(torch.tensor(sigma))
    assert not torch.allclose(plain(u[:, inv]), plain(u)[:, inv])


def test_bad_input_shape():
    net = _net(ViewGraph.ring(3))
    with pytest.raises(ConfigError):
        net(_u(4))
    with pytest.raises(ConfigError):
        net(_u(3, c=2))


@pytest.mark.parametrize("fused", [True, False])
def test_cross_view_switched_off_equals_zero_edge_weights(fused, randomise):
    """``cross_view_scaled(net, 0)`` = the same network with every edge operator's output zeroed."""
    from multiflow.flow.subnet import cross_view_scaled

    g = ViewGraph.real_iad()
    net = randomise(_net(g, fused=fused))
    u = _u(5)
    full = net(u)
    with cross_view_scaled(net, 0.0):
        off = net(u)
    assert net.cross_view_scale == 1.0  # restored
    torch.testing.assert_close(net(u), full, rtol=0, atol=0)
    assert (off - full).abs().max() > 1e-3  # the messages mattered
    with torch.no_grad():
        for op in net.edge_ops:
            op.conv.weight.zero_()
            op.conv.bias.zero_()
    torch.testing.assert_close(off, net(u), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("fusion", ["conv", "self_attention", "global_context", "correspondence", "geometry"])
@pytest.mark.parametrize("graph", GRAPHS[:4], ids=repr)
def test_cross_view_scale_applies_with_missing_views(graph, fusion, fused, randomise):
    """With ``present`` given, ``cross_view_scaled(net, 0)`` is the network without links (each view
    its self path only) and ``0.5`` halves every message; the present-view twins used to ignore it."""
    from multiflow.flow.subnet import cross_view_scaled

    net = randomise(_net(graph, fusion=fusion, fused=fused))
    v = graph.n_views
    u = _u(v, b=4)
    p = _present(4, v, seed=5)
    assert p.sum() > 4  # some sample has a present neighbour
    full = net(u, p)
    with cross_view_scaled(net, 0.0):
        off = net(u, p)
    with cross_view_scaled(net, 0.5):
        half = net(u, p)
    vc = net.view_class
    self_only = torch.stack(
        [net.gamma[vc[i]] * net.self_convs[vc[i]](torch.relu(net.in_convs[vc[i]](u[:, i]))) for i in range(v)], dim=1
    )
    m = p[:, :, None, None, None].expand_as(full)
    torch.testing.assert_close(off[m], self_only[m], rtol=1e-12, atol=1e-12)
    assert (full[m] - off[m]).abs().max() > 1e-3  # the messages mattered
    torch.testing.assert_close(half[m], ((full + off) / 2)[m], rtol=1e-10, atol=1e-12)


def test_half_scaled_messages_are_linear(randomise):
    from multiflow.flow.subnet import cross_view_scaled

    net = randomise(_net(ViewGraph.ring(4)))
    u = _u(4)
    full = net(u)
    with cross_view_scaled(net, 0.0):
        off = net(u)
    with cross_view_scaled(net, 0.5):
        half = net(u)
    torch.testing.assert_close(half, (full + off) / 2, rtol=1e-10, atol=1e-12)


def test_view_gammas_lists_every_subnet():
    from multiflow.flow import MultiFlow
    from multiflow.flow.subnet import view_gammas

    model = MultiFlow(6, ViewGraph.real_iad(), n_blocks=2, hidden=4, kernel_sizes=(3, 3))
    gammas = view_gammas(model)
    n_subnets = sum(isinstance(m, MultiViewSubnet) for m in model.modules())
    assert len(gammas) == n_subnets >= 2 and all(len(v) == 5 for v in gammas)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, MultiViewSubnet)).gamma[2] = 0.25
    assert view_gammas(model)[0] == [0.0, 0.0, 0.25, 0.0, 0.0]
