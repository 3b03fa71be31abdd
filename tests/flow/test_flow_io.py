import json
import os

import pytest
import torch

from multiflow.errors import CheckpointError
from multiflow.flow import MultiFlow, ViewGraph, load_flow, save_flow

SMALL = dict(n_blocks=2, hidden=4, kernel_sizes=(3, 5), heads=2)


@pytest.mark.parametrize("kw", [dict(), dict(fusion="self_attention", share_side_weights=True, noise="none"),
                                dict(fusion="correspondence"), dict(fusion="global_context", share_side_weights=True)])
def test_round_trip_bit_identical(tmp_path, randomise, kw):
    model = randomise(MultiFlow(6, ViewGraph.real_iad(), seed=3, **SMALL, **kw)).float().eval()
    path = save_flow(model, tmp_path / "sub" / "flow.safetensors")
    assert path.is_file()
    assert sorted(os.listdir(path.parent)) == ["flow.safetensors"]  # no temp file left behind
    back = load_flow(path).eval()
    assert back.config == model.config
    x = torch.randn(2, 5, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = model(x), back(x)
    assert torch.equal(a.z, b.z) and torch.equal(a.logdet, b.logdet) and torch.equal(a.nll, b.nll)
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_is_plain_safetensors_with_config(tmp_path):
    from safetensors import safe_open

    model = MultiFlow(4, ViewGraph.ring(3), **SMALL)
    path = save_flow(model, tmp_path / "f.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert json.loads(meta["config"]) == model.config
        assert set(f.keys()) == set(model.state_dict())


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_flow(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_flow(junk)
    model = MultiFlow(4, ViewGraph.ring(3), **SMALL)
    good = save_flow(model, tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_flow(truncated)


def test_foreign_or_mismatched_file(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a multiflow"):
        load_flow(other)
    model = MultiFlow(4, ViewGraph.ring(3), **SMALL)
    cfg = model.config | {"hidden": 8}
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bad),
              metadata={"format": "multiflow.flow", "format_version": "1", "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="do not match"):
        load_flow(bad)
    save_file({"w": torch.zeros(2)}, str(bad),
              metadata={"format": "multiflow.flow", "format_version": "1", "config": "{not json"})
    with pytest.raises(CheckpointError, match="config"):
        load_flow(bad)
