import pytest
import torch

from multiflow.errors import ConfigError
from multiflow.flow.noise import NoiseConditioner


def _feat(b=4, v=3, c=2, hw=5):
    return torch.randn(b, v, c, hw, hw, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scheme", ["simplenet", "uniform", "softflow"])
def test_eval_is_noise_free(scheme):
    nc = NoiseConditioner(scheme).eval()
    f = _feat()
    out, cond = nc(f, _gen())
    assert torch.equal(out, f)
    assert cond.shape == (4, 3, 1, 5, 5) and torch.count_nonzero(cond) == 0


def test_none_scheme():
    nc = NoiseConditioner("none").train()
    f = _feat()
    out, cond = nc(f, _gen())
    assert nc.condition_channels == 0 and cond is None and torch.equal(out, f)


@pytest.mark.parametrize("scheme", ["simplenet", "uniform", "softflow"])
def test_training_noise_shared_over_views_and_channels(scheme):
    nc = NoiseConditioner(scheme, cond_scale=20.0).train()
    f = _feat()
    out, cond = nc(f, _gen())
    eps = out - f
    assert eps.abs().max() > 0
    torch.testing.assert_close(eps, eps[:, :1, :1].expand_as(eps), rtol=0, atol=1e-12)
    torch.testing.assert_close(cond, 20.0 * eps[:, :, :1], rtol=1e-12, atol=1e-12)


def test_simplenet_std_is_explicit():
    for std in (0.15, 0.5):
        eps = NoiseConditioner("simplenet", std=std).sample(
            64, 64, 64, dtype=torch.float64, device=torch.device("cpu"), generator=_gen(1))
        assert eps.shape == (64, 1, 1, 64, 64)
        assert abs(eps.std().item() - std) < 0.02 * std
        assert abs(eps.mean().item()) < 0.01 * std * 10


def test_uniform_and_softflow_distributions():
    kw = dict(dtype=torch.float64, device=torch.device("cpu"), generator=_gen(2))
    u = NoiseConditioner("uniform").sample(16, 32, 32, **kw)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    s = NoiseConditioner("softflow").sample(256, 32, 32, **kw)
    per_sample_std = s.flatten(1).std(dim=1)
    assert per_sample_std.max() < 1.1 and per_sample_std.min() < 0.2 and per_sample_std.max() > 0.8
    # c ~ U(0, 1): mean of the per-sample std is about 0.5
    assert abs(per_sample_std.mean().item() - 0.5) < 0.06


def test_generator_reproducibility():
    nc = NoiseConditioner("softflow").train()
    f = _feat()
    a, _ = nc(f, _gen(5))
    b, _ = nc(f, _gen(5))
    c, _ = nc(f, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_invalid():
    with pytest.raises(ConfigError):
        NoiseConditioner("gaussian")
    with pytest.raises(ConfigError):
        NoiseConditioner("simplenet", std=-1.0)
