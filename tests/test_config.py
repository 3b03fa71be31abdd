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

    cfg = load_config(None, ["eval.image_score=quantile", "eval.image_score_q=0.95", "eval.calibration=none",
                             "masks.margin=0.05", "features.input_size=0", "features.layer=blocks:3+blocks:5"])
    cfg.validate()
    assert (cfg.eval.image_score, cfg.eval.calibration, cfg.masks.margin) == ("quantile", "none", 0.05)
    default = load_config(None, [])
    # the measured winner (BENCHMARKS.md, scoring_ablation and learning_curve): smoothed max, sigma 8 px
    assert (default.eval.image_score, default.eval.image_score_sigma) == ("smoothed_max", 8.0)
    assert (default.eval.calibration, default.masks.margin) == ("none", 0.0)
    for bad in ["eval.image_score=median", "eval.calibration=platt", "eval.calibration=tail",
                "eval.calibration=zscore", "eval.image_score_q=1.5",
                "eval.image_score_k=0", "eval.image_score_sigma=0", "masks.margin=-0.1", "features.input_size=-1",
                "masks.soft=0.2"]:  # removed after it measured worse (BENCHMARKS.md, scoring_ablation)
        with pytest.raises(ConfigError):
            load_config(None, [bad]).validate()


def test_threshold_section_states_the_target_and_refuses_non_finite_values():
    """threshold.false_reject (default 1 %), threshold.confidence and threshold.calibration_fraction:
    finite numbers strictly between 0 and 1; NaN / inf / 0 / 1 are refused with the key named."""
    d = load_config(None)
    assert (d.threshold.false_reject, d.threshold.confidence) == (0.01, 0.9)
    assert 0 < d.threshold.calibration_fraction < 1
    assert load_config(None, ["threshold.false_reject=0.05"]).threshold.false_reject == 0.05
    for bad, match in [("threshold.false_reject=.nan", "threshold.false_reject"),
                       ("threshold.false_reject=.inf", "threshold.false_reject"),
                       ("threshold.false_reject=0", "threshold.false_reject"),
                       ("threshold.false_reject=1", "threshold.false_reject"),
                       ("threshold.confidence=1.5", "threshold.confidence"),
                       ("threshold.confidence=-.inf", "threshold.confidence"),
                       ("threshold.calibration_fraction=0", "threshold.calibration_fraction"),
                       ("threshold.quantile=0.99", "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [bad])
    # configurations written before the section (train.threshold_quantile) still load, with a warning
    with pytest.warns(UserWarning, match="threshold_quantile=0.95 is no longer used.*threshold.false_reject"):
        assert load_config(None, ["train.threshold_quantile=0.95"]).train.threshold_quantile == 0.95


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
    # the paper's scoring and masks stay pinned whatever the defaults become
    assert (cfg.eval.image_score, cfg.eval.calibration, cfg.eval.aggregation) == ("max", "none", "max")
    assert (cfg.masks.margin, cfg.features.layer) == (0.0, "")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.graph=custom"], "model.graph=custom needs model.edges"),
        (["model.edges=[[a, b]]"], "model.edges is only used with model.graph=custom"),
        (["model.graph=custom", "model.edges=[[a, b, c]]"], r"model.edges\[0\].*is not a pair"),
        (["model.graph=custom", "model.edges=[[a, b]]", "data.views=[a, b, c]"],
         r"views \['c'\] are not connected"),
        (["model.graph=custom", "model.edges=[[a, x]]", "data.views=[a, b]"], "unknown view 'x'"),
        (["model.top_view=C9", "data.views=[C1, C2, C3]"], r"model.top_view 'C9' is not one of data.views"),
        (["model.graph=none", "model.top_view=C9", "data.views=[C1, C2]"], "is not one of data.views"),
        (["model.graph=custom", "model.edges=[[a, b]]", "model.top_view=a"], "only used by the presets"),
        (["data.views=[left, right, back]"], "model.graph=real_iad with data.views=.*model.top_view"),
        (["model.graph=custom", "model.edges=[[a, b]]", "model.single_view=true"], "single_view"),
    ],
)
def test_camera_graph_settings_are_checked_at_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_camera_graph_settings_load():
    cfg = load_config(None, ["model.graph=custom", "model.edges=[[a, b], [b, c]]", "data.views=[a, b, c]"])
    assert cfg.model.edges == [["a", "b"], ["b", "c"]]
    cfg = load_config(None, ["model.top_view=back", "data.views=[left, back, right]", "model.ring_order=[right, left]"])
    assert cfg.model.top_view == "back" and cfg.model.ring_order == ["right", "left"]
    assert load_config(None, ["model.ring_order=[1, 3, 2, 4]"]).model.ring_order == [1, 3, 2, 4]
