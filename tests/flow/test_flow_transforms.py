import math

import pytest
import torch
from torch.autograd.functional import jacobian

from multiflow.errors import ConfigError
from multiflow.flow.graph import ViewGraph
from multiflow.flow.subnet import multiview_subnet_factory
from multiflow.flow.transforms import AffineCoupling, FlowSequence, ViewPermutation, soft_clamp

from fusion_helpers import VIEW_FUSIONS, subnet_kwargs

B, C, H, W = 2, 4, 3, 3
GRAPHS = {
    "real_iad": ViewGraph.real_iad(),
    "ring4": ViewGraph.ring(4),
    "none3": ViewGraph.none(3),
    "full3": ViewGraph.full(3),
    "path3": ViewGraph.from_edges(3, [(0, 1), (1, 2)]),
}
FUSIONS = ["conv", "self_attention", "cross_attention", *VIEW_FUSIONS]


def _coupling(graph, fusion="conv", cond=0, randomise=None, seed=0, channels=C):
    factory = multiview_subnet_factory(graph, hidden=4, kernel_size=3, fusion=fusion, heads=2,
                                       **subnet_kwargs(fusion, graph))
    block = AffineCoupling(channels, factory, cond_channels=cond, clamp=1.9).double()
    if randomise is not None:
        randomise(block, seed)
    return block


def _x(v, seed=1, b=B, c=C):
    return torch.randn(b, v, c, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_soft_clamp():
    s = torch.linspace(-100, 100, 1001, dtype=torch.float64)
    out = soft_clamp(s, 1.9)
    assert out.abs().max() < 1.9
    assert torch.all(out[1:] > out[:-1])  # strictly monotone
    small = torch.tensor([1e-4], dtype=torch.float64)
    # slope 2/pi at 0 (Eq. 3 as printed), range (-alpha, alpha)
    assert torch.allclose(soft_clamp(small, 1.9), small * 2 / math.pi, rtol=1e-6)
    assert math.isclose(soft_clamp(torch.tensor(1e9), 1.9).item(), 1.9, rel_tol=1e-6)


def test_permutation_inverse_and_buffers():
    p = ViewPermutation(6, 3, generator=torch.Generator().manual_seed(0))
    x = _x(3, c=6)
    y, ld = p(x)
    assert torch.equal(p.inverse(y)[0], x) and torch.count_nonzero(ld) == 0
    assert not torch.equal(y, x)
    assert {"perm", "inv_perm"} <= set(p.state_dict())
    for v in range(3):
        assert torch.equal(y[:, v], x[:, v, p.perm[v]])
    q = ViewPermutation(6, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.perm, q.perm)
    tied = ViewPermutation(6, 3, generator=torch.Generator().manual_seed(0), view_classes=[0, 1, 1])
    assert torch.equal(tied.perm[1], tied.perm[2])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("gname", list(GRAPHS))
def test_coupling_exact_inverse(gname, fusion, randomise):
    g = GRAPHS[gname]
    block = _coupling(g, fusion, cond=1, randomise=randomise)
    x = _x(g.n_views)
    cond = _x(g.n_views, seed=7, c=1)
    y, ld = block(x, cond)
    assert ld.shape == (B, g.n_views, H, W)
    assert (y - x).abs().max() > 1e-2  # really not the identity
    x_back, ld_inv = block.inverse(y, cond)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_coupling_logdet_matches_jacobian(fusion, randomise):
    g = GRAPHS["real_iad"]
    block = _coupling(g, fusion, randomise=randomise, seed=3)
    x = _x(g.n_views, b=1)
    jac = jacobian(lambda t: block(t)[0], x, vectorize=True)
    n = x.numel()
    sign, logabs = torch.linalg.slogdet(jac.reshape(n, n))
    assert sign > 0
    torch.testing.assert_close(block(x)[1].sum(), logabs, rtol=1e-10, atol=1e-10)


def test_odd_channel_count(randomise):
    block = _coupling(GRAPHS["ring4"], randomise=randomise, channels=5)
    x = _x(4, c=5)
    y, ld = block(x)
    torch.testing.assert_close(block.inverse(y)[0], x, rtol=0, atol=1e-12)


def test_half_steps_are_block_triangular(randomise):
    """With st2 switched off the block is half-step 1 only: J = [[I, 0], [*, D]] with D diagonal."""
    g = GRAPHS["full3"]
    block = _coupling(g, randomise=randomise)
    with torch.no_grad():
        block.st2.gamma.zero_()
    x = _x(g.n_views, b=1)
    c1 = C // 2
    jac = jacobian(lambda t: block(t)[0], x, vectorize=True)[0]  # (V,C,H,W, 1,V,C,H,W)
    jac = jac.squeeze(4)
    # reorder to (half, rest) x (half, rest)
    j = jac.permute(1, 0, 2, 3, 5, 4, 6, 7)  # (C, V, H, W, C, V, H, W)
    n = g.n_views * H * W
    j = j.reshape(C, n, C, n)
    a_a = j[:c1, :, :c1, :].reshape(c1 * n, c1 * n)
    a_b = j[:c1, :, c1:, :]
    b_b = j[c1:, :, c1:, :].reshape((C - c1) * n, (C - c1) * n)
    b_a = j[c1:, :, :c1, :]
    assert torch.equal(a_a, torch.eye(c1 * n, dtype=a_a.dtype))
    assert torch.count_nonzero(a_b) == 0
    assert torch.count_nonzero(b_b - torch.diag(torch.diagonal(b_b))) == 0
    assert torch.all(torch.diagonal(b_b) > 0)
    assert torch.count_nonzero(b_a) > 0
    # and the other half-step: [[D, *], [0, I]]
    block = _coupling(g, randomise=randomise, seed=5)
    with torch.no_grad():
        block.st1.gamma.zero_()
    j = jacobian(lambda t: block(t)[0], x, vectorize=True)[0].squeeze(4)
    j = j.permute(1, 0, 2, 3, 5, 4, 6, 7).reshape(C, n, C, n)
    a_a = j[:c1, :, :c1, :].reshape(c1 * n, c1 * n)
    assert torch.count_nonzero(a_a - torch.diag(torch.diagonal(a_a))) == 0
    assert torch.count_nonzero(j[c1:, :, :c1, :]) == 0
    assert torch.equal(j[c1:, :, c1:, :].reshape((C - c1) * n, -1), torch.eye((C - c1) * n, dtype=j.dtype))


@pytest.mark.parametrize("gname", list(GRAPHS))
def test_half_step_locality(gname, randomise):
    """One half-step: output view i depends only on views N(i) ∪ {i}; the full block on 2 hops."""
    g = GRAPHS[gname]
    block = _coupling(g, randomise=randomise, seed=2)
    x = _x(g.n_views, b=1)
    c1 = C // 2
    x1, x2 = x[:, :, :c1], x[:, :, c1:]
    j_half = jacobian(lambda t: block.half_step_1(t, x2, None)[0], x1, vectorize=True)[0]
    j_full = jacobian(lambda t: block(t)[0], x, vectorize=True)[0]
    for i in range(g.n_views):
        one_hop = set(g.neighbours(i)) | {i}
        two_hop = g.reachable_from(i, 2)
        for j in range(g.n_views):
            dep_half = torch.count_nonzero(j_half[i, :, :, :, 0, j]) > 0
            dep_full = torch.count_nonzero(j_full[i, :, :, :, 0, j]) > 0
            assert dep_half == (j in one_hop), (i, j)
            assert dep_full == (j in two_hop), (i, j)


def test_condition_required_and_used(randomise):
    g = GRAPHS["ring4"]
    block = _coupling(g, cond=1, randomise=randomise)
    x = _x(4)
    with pytest.raises(ConfigError):
        block(x)
    c0, c1 = torch.zeros(B, 4, 1, H, W, dtype=torch.float64), torch.ones(B, 4, 1, H, W, dtype=torch.float64)
    assert not torch.allclose(block(x, c0)[0], block(x, c1)[0])


def test_sequence_composes(randomise):
    g = GRAPHS["real_iad"]
    gen = torch.Generator().manual_seed(0)
    blocks = [ViewPermutation(C, 5, generator=gen).double(), _coupling(g, randomise=randomise, seed=1),
              ViewPermutation(C, 5, generator=gen).double(), _coupling(g, randomise=randomise, seed=2)]
    seq = FlowSequence(blocks)
    x = _x(5)
    y, ld = seq(x)
    h, ld_manual = x, torch.zeros_like(ld)
    for b in blocks:
        h, l = b(h)
        ld_manual = ld_manual + l
    assert torch.equal(y, h) and torch.equal(ld, ld_manual)
    x_back, ld_inv = seq.inverse(y)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-12)


def test_bad_coupling_args():
    f = multiview_subnet_factory(ViewGraph.none(1), hidden=2)
    with pytest.raises(ConfigError):
        AffineCoupling(1, f)
    with pytest.raises(ConfigError):
        AffineCoupling(4, f, clamp=0.0)
