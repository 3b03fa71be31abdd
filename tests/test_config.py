"""Configuration: YAML files, overrides, and errors that name the file and the key."""

from __future__ import annotations

import pytest

from multiflow.config import RunConfig, dump_config, load_config
from multiflow.errors import ConfigError


def test_defaults_are_the_papers_optimiser_settings():
    cfg = load_config()
    assert cfg.train.lr == 2e-4 and cfg.train.betas == [0.9, 0.95] and cfg.train.weight_decay == 1e-5
    assert cfg.train.batch_size == 8 and cfg.model.n_blocks == 6 and cfg.model.clamp == 1.9
    assert cfg.model.kernel_sizes == [3, 3, 3, 3, 3, 5] and cfg.model.hidden == 64
    assert cfg.model.noise == "simplenet" and cfg.masks.provider != "none"


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "model.fusion=cross_attention", "data.categories=[a, b]"])
    assert cfg.train.epochs == 7 and cfg.model.fusion == "cross_attention" and cfg.data.categories == ["a", "b"]
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_int_is_accepted_for_float_and_numbers_for_strings(tmp_path):
    cfg = load_config(None, ["train.lr=1", "data.resolution=512"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.resolution == "512"


@pytest.mark.parametrize(
    "text, match",
    [
        ("train:\n  epochz: 3\n", r"unknown key\(s\) \['epochz'\]"),
        ("train:\n  epochs: three\n", r"train\.epochs: expected an integer"),
        ("model:\n  fusion: lstm\n", r"model\.fusion must be one of"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("train: [1, 2\n", "not valid YAML"),
        ("model:\n  n_blocks: 4\n", "kernel_sizes has 6 entries"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(p)
    assert "bad.yaml" in str(err.value) or "mapping" in str(err.value) or "YAML" in str(err.value)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])


def test_to_dict_is_plain():
    d = RunConfig().to_dict()
    assert d["train"]["epochs"] == 112 and isinstance(d["model"]["kernel_sizes"], list)


def test_device_precision_checkpoint_and_early_stopping_keys():
    cfg = load_config(None, ["train.device=cuda:1", "train.precision=bf16", "train.checkpoint_minutes=0.5",
                             "train.early_stopping_patience=5", "train.early_stopping_min_delta=0.001"])
    assert (cfg.train.device, cfg.train.precision) == ("cuda:1", "bf16")
    assert cfg.train.checkpoint_minutes == 0.5 and cfg.train.early_stopping_patience == 5
    defaults = load_config(None)
    assert defaults.train.device == "auto" and defaults.train.precision == "fp32"
    assert defaults.train.checkpoint_every == 0 and defaults.train.checkpoint_minutes > 0
    for bad, match in [("train.device=gpu", "train.device"), ("train.device=cuda:x", "train.device"),
                       ("train.precision=fp16", "train.precision"),
                       ("train.checkpoint_minutes=-1", "checkpoint_minutes"),
                       ("train.early_stopping_patience=-2", "early_stopping_patience")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [bad])


def test_paper_config_keeps_the_fixed_schedule():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml")
    assert cfg.train.early_stopping_patience == 0 and cfg.train.epochs == 112
