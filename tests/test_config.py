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


def test_scoring_mask_and_feature_switches_are_validated():
    from multiflow.config import load_config
    from multiflow.errors import ConfigError

    cfg = load_config(None, ["eval.image_score=quantile", "eval.image_score_q=0.95", "eval.calibration=tail",
                             "masks.margin=0.05", "features.input_size=0", "features.layer=blocks:3+blocks:5",
                             "masks.soft=0.2"])
    cfg.validate()
    assert (cfg.eval.image_score, cfg.eval.calibration, cfg.masks.margin) == ("quantile", "tail", 0.05)
    default = load_config(None, [])
    assert (default.eval.image_score, default.eval.calibration, default.masks.margin) == ("max", "none", 0.0)
    for bad in ["eval.image_score=median", "eval.calibration=platt", "eval.image_score_q=1.5",
                "eval.image_score_k=0", "eval.image_score_sigma=0", "masks.margin=-0.1", "features.input_size=-1",
                "masks.soft=1.5"]:
        with pytest.raises(ConfigError):
            load_config(None, [bad]).validate()
