"""Device resolution (``train.device``) and precision fallback (``train.precision``)."""

from __future__ import annotations

import pytest
import torch

import multiflow.device as mdev
from multiflow.device import resolve_device, resolve_precision, to_device
from multiflow.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend two CUDA devices exist (current: 0); no CUDA call reaches the driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_auto_is_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU ") == torch.device("cpu")


def test_auto_is_cuda_when_available(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_a_clear_error(no_cuda):
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_bad_specs_are_errors(fake_cuda):
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        resolve_device("cuda:2")
    for bad in ("gpu", "cuda:x", "cuda:-1", "mps"):
        with pytest.raises(ConfigError):
            resolve_device(bad)


def test_torchrun_rank_picks_its_gpu(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 1)  # one GPU per process
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)


def test_precision_falls_back_with_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(mdev, "bf16_supported", lambda device: False)
    monkeypatch.setattr(mdev, "_noticed", set())
    assert resolve_precision("bf16", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "fp32"
    err = capsys.readouterr().err
    assert err.count("bf16 is not supported") == 1
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(mdev, "bf16_supported", lambda device: True)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp16", torch.device("cpu"))


def test_autocast_runs_convs_in_bf16_only_when_asked():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 5, 5)
    cpu = torch.device("cpu")
    with mdev.autocast(cpu, "fp32"):
        assert conv(x).dtype == torch.float32
    if mdev.bf16_supported(cpu):
        with mdev.autocast(cpu, "bf16"):
            assert conv(x).dtype == torch.bfloat16


def test_to_device_is_a_no_op_on_the_same_device():
    t = torch.randn(3)
    assert to_device(t, torch.device("cpu")) is t


def test_dist_context_device_follows_resolve_device(fake_cuda):
    from multiflow.ranks import DistContext

    assert DistContext(rank=1, world_size=2, local_rank=1, backend="nccl").device == torch.device("cuda", 1)
    assert DistContext(rank=1, world_size=2, local_rank=1, backend="gloo").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="only 2 CUDA"):  # a LOCAL_RANK past the visible GPUs
        DistContext(rank=2, world_size=3, local_rank=2, backend="nccl").device


def test_run_device_resolves_once_from_the_config(fake_cuda):
    from multiflow.config import TrainConfig
    from multiflow.engine.factories import run_device

    assert run_device(TrainConfig(device="cuda:1")) == (torch.device("cuda", 1), "fp32")
    assert run_device(TrainConfig(device="cuda:1"), torch.device("cpu"))[0] == torch.device("cpu")  # given wins
    assert run_device(TrainConfig(device="cpu")) == (torch.device("cpu"), "fp32")


CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""


@pytest.mark.parametrize("extra, native", [("", False), ("avx512_bf16", True), ("amx_tile amx_bf16", True)])
def test_native_bf16_reads_the_cpu_flags(monkeypatch, extra, native):
    """AVX-512 alone only emulates bf16 (slower than fp32): native means AVX-512 BF16 or AMX-BF16."""
    monkeypatch.setattr(mdev, "bf16_supported", lambda device: True)
    text = CPUINFO.format(extra=extra)
    assert mdev.native_bf16(torch.device("cpu"), cpuinfo=text) is native
    assert ("avx512_bf16" in mdev.cpu_flags(text)) is ("avx512_bf16" in extra)
    assert {"avx2", "avx512f"} <= mdev.cpu_flags(text)
    monkeypatch.setattr(mdev, "bf16_supported", lambda device: False)  # no oneDNN bf16 kernels: not native
    assert mdev.native_bf16(torch.device("cpu"), cpuinfo=text) is False


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_native(monkeypatch, capsys, native):
    monkeypatch.setattr(mdev, "native_bf16", lambda device, **_: native)
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert capsys.readouterr().err == ""  # auto falls back silently


def test_auto_precision_on_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
