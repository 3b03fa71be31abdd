import json

import pytest
import torch
from torch.autograd.functional import jacobian

from multiflow.errors import ConfigError, DataError
from multiflow.flow import FlowOutput, MultiFlow, ViewGraph
from multiflow.flow.model import masked_loss

from fusion_helpers import VIEW_FUSIONS, fusion_kwargs

C, H, W = 4, 3, 3
SMALL = dict(n_blocks=2, hidden=4, kernel_sizes=(3, 5), heads=2)


def _flow(graph, randomise, seed=0, **kw):
    args = dict(SMALL) | kw
    return randomise(MultiFlow(C, graph, seed=seed, **args).double(), seed)


def _x(v, b=2, seed=1):
    return torch.randn(b, v, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


GRAPHS = [ViewGraph.real_iad(), ViewGraph.ring(4), ViewGraph.none(2), ViewGraph.full(3),
          ViewGraph.from_edges(4, [(0, 1), (1, 2), (2, 3)])]


def test_paper_parameter_count():
    model = MultiFlow(304, ViewGraph.real_iad())  # paper configuration (conv fusion, noise condition)
    assert sum(p.numel() for p in model.parameters()) == 64_135_548


@pytest.mark.parametrize("fusion", ["conv", "self_attention", "cross_attention", *VIEW_FUSIONS])
@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_whole_flow_inverse(graph, fusion, randomise):
    model = _flow(graph, randomise, fusion=fusion, **fusion_kwargs(fusion, graph)).eval()
    x = _x(graph.n_views)
    out = model(x)
    assert isinstance(out, FlowOutput) and out.logdet.shape == (2, graph.n_views, H, W)
    assert out.logdet.abs().max() > 1e-2
    x_back, ld_inv = model.inverse(out.z)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-11)
    torch.testing.assert_close(ld_inv, -out.logdet, rtol=0, atol=1e-11)


@pytest.mark.parametrize("fusion", ["conv", "cross_attention", *VIEW_FUSIONS])
def test_whole_flow_logdet_and_nll(fusion, randomise):
    model = _flow(ViewGraph.real_iad(), randomise, fusion=fusion, seed=4,
                  **fusion_kwargs(fusion, ViewGraph.real_iad())).eval()
    x = _x(5, b=1)
    jac = jacobian(lambda t: model(t).z, x, vectorize=True)
    n = x.numel()
    sign, logabs = torch.linalg.slogdet(jac.reshape(n, n))
    out = model(x)
    assert sign != 0
    torch.testing.assert_close(out.logdet.sum(), logabs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.nll, (0.5 * out.z.pow(2).sum(2) - out.logdet) / C, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_whole_flow_locality(graph, randomise):
    """K blocks = 2K half-steps; output view i depends exactly on views reachable in 2K hops."""
    model = _flow(graph, randomise, seed=2).eval()
    x = _x(graph.n_views, b=1)
    jac = jacobian(lambda t: model(t).z, x, vectorize=True)[0]
    hops = 2 * SMALL["n_blocks"]
    for i in range(graph.n_views):
        reach = graph.reachable_from(i, hops)
        for j in range(graph.n_views):
            assert (torch.count_nonzero(jac[i, :, :, :, 0, j]) > 0) == (j in reach), (i, j)


def test_locality_one_block_path(randomise):
    g = ViewGraph.from_edges(4, [(0, 1), (1, 2), (2, 3)])
    model = _flow(g, randomise, n_blocks=1, kernel_sizes=(3,)).eval()
    jac = jacobian(lambda t: model(t).z, _x(4, b=1), vectorize=True)[0]
    deps = [(torch.count_nonzero(jac[3, :, :, :, 0, j]) > 0).item() for j in range(4)]
    assert deps == [False, True, True, True]  # 2 hops back from view 3, not 3


@pytest.mark.parametrize("fusion", ["conv", "self_attention"])
def test_equivariance_with_shared_side_weights(fusion, randomise):
    g = ViewGraph.real_iad()
    model = _flow(g, randomise, fusion=fusion, share_side_weights=True).eval()
    x = _x(5)
    out = model(x)
    autos = g.automorphisms()
    assert len(autos) == 8
    for sigma in autos:
        inv = torch.argsort(torch.tensor(sigma))
        moved = model(x[:, inv])  # view sigma[v] of the input is view v of x
        torch.testing.assert_close(moved.z, out.z[:, inv], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(moved.nll, out.nll[:, inv], rtol=1e-10, atol=1e-10)
    plain = _flow(g, randomise).eval()
    inv = torch.argsort(torch.tensor((0, 2, 3, 4, 1)))
    assert not torch.allclose(plain(x[:, inv]).z, plain(x).z[:, inv])


def test_fresh_flow_is_identity_up_to_permutation():
    model = MultiFlow(C, ViewGraph.real_iad(), **SMALL).double().eval()
    x = _x(5)
    out = model(x)
    assert torch.count_nonzero(out.logdet) == 0
    torch.testing.assert_close(out.nll, 0.5 * x.pow(2).sum(2) / C, rtol=1e-12, atol=1e-12)


def test_training_noise(randomise):
    model = _flow(ViewGraph.ring(3), randomise, noise="softflow")
    x = _x(3)
    model.train()
    a = model(x, generator=torch.Generator().manual_seed(0)).nll
    b = model(x, generator=torch.Generator().manual_seed(0)).nll
    c = model(x, generator=torch.Generator().manual_seed(1)).nll
    assert torch.equal(a, b) and not torch.allclose(a, c)
    model.eval()
    assert torch.equal(model(x, generator=torch.Generator().manual_seed(0)).nll,
                       model(x, generator=torch.Generator().manual_seed(1)).nll)


def test_seeded_construction_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = MultiFlow(C, ViewGraph.ring(3), **SMALL, seed=3)
    b = MultiFlow(C, ViewGraph.ring(3), **SMALL, seed=3)
    c = MultiFlow(C, ViewGraph.ring(3), **SMALL, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(k.endswith("perm") for k in a.state_dict())


def test_every_parameter_gets_a_gradient(randomise):
    for fusion in ("conv", "self_attention", "cross_attention"):
        model = _flow(ViewGraph.real_iad(), randomise, fusion=fusion).train()
        out = model(_x(5), generator=torch.Generator().manual_seed(0))
        mask = torch.rand(out.nll.shape, generator=torch.Generator().manual_seed(1)) > 0.3
        model.masked_loss(out.nll, mask).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, (fusion, name)


def _nll(seed=0, shape=(2, 3, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_masked_loss_all_ones_is_mean():
    nll = _nll()
    torch.testing.assert_close(masked_loss(nll, torch.ones_like(nll, dtype=torch.bool)), nll.mean())
    torch.testing.assert_close(masked_loss(nll, torch.ones_like(nll)), nll.mean())


@pytest.mark.parametrize("float_mask", [False, True])
def test_masked_loss_ignores_background_garbage(float_mask):
    nll = _nll()
    mask = torch.rand(nll.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    m = mask.double() if float_mask else mask
    clean = nll.clone().requires_grad_(True)
    loss_clean = masked_loss(clean, m)
    loss_clean.backward()
    garbage = nll.clone()
    garbage[~mask] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300]).repeat(64)[: int((~mask).sum())].double()
    garbage.requires_grad_(True)
    loss_garbage = masked_loss(garbage, m)
    loss_garbage.backward()
    assert torch.equal(loss_clean, loss_garbage)
    assert torch.equal(clean.grad, garbage.grad)
    assert torch.count_nonzero(garbage.grad[~mask]) == 0 and torch.isfinite(garbage.grad).all()
    torch.testing.assert_close(loss_clean, nll[mask].mean())


def test_masked_loss_padding_with_background():
    nll = _nll()
    mask = torch.rand(nll.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    pad_nll = torch.cat([nll, torch.full((1, 3, 4, 4), 7.0, dtype=torch.float64)])
    pad_mask = torch.cat([mask, torch.zeros(1, 3, 4, 4, dtype=torch.bool)])
    assert torch.equal(masked_loss(nll, mask), masked_loss(pad_nll, pad_mask))
    assert masked_loss(nll, torch.zeros_like(mask)).item() == 0.0


def test_anomaly_map_background_fill(randomise):
    model = _flow(ViewGraph.real_iad(), randomise).train()
    x = _x(5)
    mask = torch.rand(2, 5, H, W, generator=torch.Generator().manual_seed(0)) > 0.4
    mask[0, 0] = True
    mask[1, 2] = False  # a view without foreground keeps its raw map
    amap = model.anomaly_map(x, mask)
    assert model.training  # mode restored
    model.eval()
    raw = model(x).nll
    assert torch.equal(model.anomaly_map(x), raw)
    assert torch.equal(amap[mask], raw[mask])
    for b in range(2):
        for v in range(5):
            fg = mask[b, v]
            if fg.any():
                assert torch.equal(amap[b, v][~fg], raw[b, v][fg].min().expand(int((~fg).sum())))
            else:
                assert torch.equal(amap[b, v], raw[b, v])


def test_config_round_trip(randomise):
    model = MultiFlow(C, ViewGraph.real_iad(ring_order=[1, 3, 2, 4]), fusion="cross_attention",
                      share_side_weights=True, noise="uniform", seed=7, **SMALL)
    cfg = json.loads(json.dumps(model.config))
    again = MultiFlow.from_config(cfg)
    assert again.config == model.config and again.graph == model.graph
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_bad_arguments():
    with pytest.raises(ConfigError):
        MultiFlow(C, ViewGraph.ring(3), n_blocks=2, kernel_sizes=(3,))
    with pytest.raises(ConfigError):
        MultiFlow(C, ViewGraph.ring(3), fusion="mlp", **{k: v for k, v in SMALL.items()})
    with pytest.raises(ConfigError):
        MultiFlow.from_config({"channels": C, "graph": ViewGraph.ring(3).to_dict(), "bogus": 1})
    model = MultiFlow(C, ViewGraph.ring(3), **SMALL)
    with pytest.raises(DataError):
        model(torch.zeros(1, 4, C, H, W))
    with pytest.raises(DataError):
        model(torch.zeros(1, 3, C + 1, H, W))


def test_background_sample_changes_nothing_end_to_end(randomise):
    """An extra sample that is all background (with garbage features) leaves loss and grads alone."""
    model = _flow(ViewGraph.real_iad(), randomise).eval()
    x = _x(5)
    mask = torch.rand(2, 5, H, W, generator=torch.Generator().manual_seed(0)) > 0.4

    def loss_and_grads(feats, m):
        model.zero_grad(set_to_none=True)
        loss = model.masked_loss(model(feats).nll, m)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = loss_and_grads(x, mask)
    garbage = torch.full((1, 5, C, H, W), 1e3, dtype=torch.float64)
    loss_b, grads_b = loss_and_grads(torch.cat([x, garbage]),
                                     torch.cat([mask, torch.zeros(1, 5, H, W, dtype=torch.bool)]))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-12)
