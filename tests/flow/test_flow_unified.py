"""The unified multi-class flow: class conditioning, invertibility with the condition, identification."""

import math

import pytest
import torch

from multiflow.errors import ConfigError, DataError
from multiflow.flow import MultiFlow, ViewGraph, load_flow, save_flow
from multiflow.flow.unified import UnifiedFlow, tag_classes

C, H, W = 4, 3, 3
SMALL = dict(n_blocks=2, hidden=4, kernel_sizes=(3, 5), heads=2)
CLASSES = ["a", "b", "c"]


def _flow(randomise, conditioning, seed=0, graph=None, **kw):
    graph = graph or ViewGraph.ring(3)
    m = UnifiedFlow(C, graph, classes=CLASSES, class_conditioning=conditioning, seed=seed, **(SMALL | kw)).double()
    return randomise(m, seed)


def _x(v=3, b=2, seed=1):
    return torch.randn(b, v, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("conditioning", ["embedding", "latent"])
def test_conditioning_changes_the_nll_by_class(conditioning, randomise):
    model = _flow(randomise, conditioning).eval()
    x = _x()
    nll = [model(x, classes=k).nll for k in range(3)]
    assert (nll[0] - nll[1]).abs().max() > 1e-3 and (nll[1] - nll[2]).abs().max() > 1e-3
    # the tag channel gives the same result as classes=
    torch.testing.assert_close(model(tag_classes(x, [1, 1])).nll, nll[1], rtol=0, atol=0)
    # mixed classes in one batch: each object under its own class
    mixed = model(x, classes=torch.tensor([0, 2])).nll
    torch.testing.assert_close(mixed[0], nll[0][0])
    torch.testing.assert_close(mixed[1], nll[2][1])


def test_plain_unified_flow_ignores_the_class(randomise):
    model = _flow(randomise, "none").eval()
    x = _x()
    torch.testing.assert_close(model(x, classes=0).nll, model(x, classes=2).nll, rtol=0, atol=0)
    # and it is the plain MultiFlow of the same config and weights
    plain = MultiFlow(C, ViewGraph.ring(3), seed=0, **SMALL).double().eval()
    plain.load_state_dict({k.replace("noise.inner.", "noise."): v for k, v in model.state_dict().items()
                           if k != "class_weights"})
    torch.testing.assert_close(plain(x).nll, model(x).nll, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="cannot identify"):
        model.class_nll(x)


def test_latent_nll_is_the_gaussian_of_the_class(randomise):
    model = _flow(randomise, "latent", seed=3).eval()
    x = _x(b=1)
    out = model(x, classes=2)
    mu = model.latent_mean[2][..., None, None]
    sd = torch.exp(model.latent_log_scale[2])[..., None, None]
    # independent oracle: log N(z; mu, sd^2) per channel, summed, plus log-det, per channel, up to 0.5 log(2 pi)
    logp = torch.distributions.Normal(mu, sd).log_prob(out.z).sum(2) + 0.5 * math.log(2 * math.pi) * C
    torch.testing.assert_close(out.nll, (-logp - out.logdet) / C)


@pytest.mark.parametrize("conditioning", ["embedding", "latent", "none"])
def test_invertible_with_the_class_condition(conditioning, randomise):
    model = _flow(randomise, conditioning, seed=5).eval()
    x = _x()
    lab = torch.tensor([2, 0])
    out = model(x, classes=lab)
    assert out.logdet.abs().max() > 1e-2
    back, ld = model.inverse(out.z, classes=lab)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-11)
    torch.testing.assert_close(ld, -out.logdet, rtol=0, atol=1e-11)
    if conditioning == "embedding":  # the wrong class does not invert
        wrong, _ = model.inverse(out.z, classes=torch.tensor([1, 1]))
        assert (wrong - x).abs().max() > 1e-3


def test_missing_views_with_the_class(randomise):
    model = _flow(randomise, "embedding", seed=2).eval()
    x = _x()
    present = torch.tensor([[True, False, True], [True, True, True]])
    maps = model.anomaly_map(tag_classes(x, [1, 2]), present=present)
    assert torch.isnan(maps[0, 1]).all() and torch.isfinite(maps[0, [0, 2]]).all()
    # the absent view's features do not matter, the tag survives the zeroing
    x2 = x.clone()
    x2[0, 1] = 100.0
    torch.testing.assert_close(model.anomaly_map(tag_classes(x2, [1, 2]), present=present)[0, [0, 2]],
                               maps[0, [0, 2]])


def test_training_weights_balance_the_classes(randomise):
    model = _flow(randomise, "latent")
    model.set_class_weights([10, 30, 20])
    torch.testing.assert_close(model.class_weights, torch.tensor([2.0, 2 / 3, 1.0], dtype=torch.float64))
    x = _x()
    g = torch.Generator().manual_seed(0)
    train_nll = model.train()(x, generator=g, classes=0).nll
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x_noised, cond = model.noise(tag_classes(x, 0), g)  # training noise, as ShardedLoss draws it
        via_ddp_path = model.nll_of_noised(x_noised, cond)
    torch.testing.assert_close(train_nll.detach(), via_ddp_path)
    # the weight of class 0 is 2: the same noise with class weights 1 halves the NLL
    model.set_class_weights([1, 1, 1])
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(model(x, generator=g, classes=0).nll.detach(), train_nll.detach() / 2)


def test_gradients_reach_the_class_parameters(randomise):
    for conditioning, names in (("embedding", ["class_embedding"]), ("latent", ["latent_mean", "latent_log_scale"])):
        model = _flow(randomise, conditioning).train()
        model(tag_classes(_x(), [0, 1])).nll.mean().backward()
        for n in names:
            g = getattr(model, n).grad
            assert g is not None and g[:2].abs().sum() > 0 and g[2].abs().sum() == 0  # class c not in the batch


def test_identification_on_classes_that_differ():
    """Three classes whose features differ in mean; a briefly trained latent/embedding flow names them."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-2.0, 0, 1, 0], [2.0, 1, -1, 0], [0.0, -2, 0, 2]])

    def sample(k, n):
        return centers[k][None, None, :, None, None] + 0.3 * torch.randn(n, 2, C, H, W, generator=gen)

    for conditioning in ("latent", "embedding"):
        model = UnifiedFlow(C, ViewGraph.ring(2), classes=CLASSES, class_conditioning=conditioning, noise="none",
                            **SMALL)
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(60):
            x = torch.cat([sample(k, 8) for k in range(3)])
            lab = torch.arange(3).repeat_interleave(8)
            loss = model.train()(x, classes=lab).nll.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        test = torch.cat([sample(k, 20) for k in range(3)])
        truth = torch.arange(3).repeat_interleave(20)
        scores = model.class_nll(test)
        assert scores.shape == (60, 3)
        assert (scores.argmin(1) == truth).float().mean() == 1.0, conditioning
        # the best class's score equals the object's NLL under that class
        torch.testing.assert_close(scores[truth == 1, 1], model.object_nll(test[truth == 1], classes=1))


def test_needs_the_class_and_checks_it(randomise):
    model = _flow(randomise, "embedding")
    with pytest.raises(DataError, match="needs the class"):
        model(_x())
    with pytest.raises(DataError, match=r"in \[0, 3\)"):
        model(_x(), classes=3)
    with pytest.raises(ConfigError, match="class_conditioning"):
        UnifiedFlow(C, ViewGraph.ring(3), classes=CLASSES, class_conditioning="mixture")
    with pytest.raises(ConfigError, match="unique"):
        UnifiedFlow(C, ViewGraph.ring(3), classes=["a", "a"])


@pytest.mark.parametrize("conditioning", ["embedding", "latent"])
def test_save_load_roundtrip(conditioning, randomise, tmp_path):
    model = _flow(randomise, conditioning).float().eval()
    save_flow(model, tmp_path / "m.safetensors")
    back = load_flow(tmp_path / "m.safetensors", flow_class=UnifiedFlow).eval()
    assert back.classes == CLASSES and back.conditioning == conditioning
    x = _x().float()
    torch.testing.assert_close(back(x, classes=1).nll, model(x, classes=1).nll, rtol=0, atol=0)


@pytest.mark.parametrize("conditioning", ["embedding", "latent"])
def test_bf16_autocast_keeps_the_nll_in_fp32(conditioning, randomise):
    """Under CPU bf16 autocast the st-networks run in bf16; the coupling math and the class NLL stay fp32,
    close to the fp32 result."""
    model = _flow(randomise, conditioning).float().eval()
    x = _x().float()
    ref = model(x, classes=1).nll
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, classes=1).nll
        scores = model.class_nll(x)
    assert out.dtype == torch.float32 and scores.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_latent_means_start_apart_when_asked():
    apart = UnifiedFlow(C, ViewGraph.ring(3), classes=CLASSES, class_conditioning="latent", latent_init_std=0.5,
                        seed=1, **SMALL)
    same = UnifiedFlow(C, ViewGraph.ring(3), classes=CLASSES, class_conditioning="latent", seed=1, **SMALL)
    assert float(same.latent_mean.abs().max()) == 0.0
    d = (apart.latent_mean[0] - apart.latent_mean[1]).pow(2).sum().sqrt()
    assert 0.5 * (2 * 3 * C) ** 0.5 * 0.5 < d < 0.5 * (2 * 3 * C) ** 0.5 * 1.5  # ~ std * sqrt(2 V C)
    # seeded: the same draw again
    again = UnifiedFlow(C, ViewGraph.ring(3), classes=CLASSES, class_conditioning="latent", latent_init_std=0.5,
                        seed=1, **SMALL)
    torch.testing.assert_close(again.latent_mean, apart.latent_mean, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="latent_init_std"):
        UnifiedFlow(C, ViewGraph.ring(3), classes=CLASSES, latent_init_std=-1.0)
