"""The trained-model bundle: typed round trip, format-1 migration, clear errors, audited threshold."""

from __future__ import annotations

import json
import re

import pytest
import torch

from multiflow.engine.bundle import (
    BUNDLE_FORMAT,
    FLOW_FILE,
    FeaturesSpec,
    GraphSpec,
    MasksSpec,
    ModelBundle,
    ScoringSpec,
    ThresholdSpec,
    TrainingRecord,
    load_bundle,
    read_bundle,
    save_bundle,
    set_threshold,
)
from multiflow.errors import CheckpointError, ConfigError
from multiflow.flow import MultiFlow, ViewGraph, save_flow

VIEWS = ["top", "left", "right"]


def _flow() -> MultiFlow:
    flow = MultiFlow(4, ViewGraph.real_iad(2, names=VIEWS), n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return flow.eval()


def _bundle(flow: MultiFlow) -> ModelBundle:
    return ModelBundle(
        category="part",
        view_names=list(VIEWS),
        graph=GraphSpec(view_names=list(VIEWS), edges=flow.graph.to_dict()["edges"]),
        features=FeaturesSpec(backbone="lite0", input_size=64, dtype="float16", weights_digest="ab" * 32,
                              channels=4, grid=[2, 2]),
        masks=MasksSpec(provider="threshold", dilation=3),
        threshold=ThresholdSpec(value=1.25, quantile=0.99, source="held-out normal training samples"),
        scoring=ScoringSpec(aggregation="mean"),
        flips={"left": "lr"},
        training=TrainingRecord(best_epoch=3, best_val_loss=0.5, history=[{"epoch": 1, "train_loss": 1.0}],
                                train_samples=5, val_samples=1),
    )


def test_round_trip_keeps_every_field_and_the_flow(tmp_path):
    flow = _flow()
    bundle = _bundle(flow)
    save_bundle(tmp_path, flow, bundle)
    loaded_flow, loaded = load_bundle(tmp_path)
    assert loaded == bundle
    assert json.loads((tmp_path / "model.json").read_text())["format"] == BUNDLE_FORMAT
    x = torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded_flow.anomaly_map(x), flow.anomaly_map(x))
    assert not list(tmp_path.glob(".*tmp*"))


def test_format_1_is_migrated(tmp_path):
    from multiflow.flow import save_flow

    flow = _flow()
    save_flow(flow, tmp_path / "model.safetensors")
    v1 = {
        "format": "multiflow-model/1", "category": "part", "view_names": VIEWS,
        "extractor": {"weights_digest": "cd" * 32, "channels": 4, "input_size": 64},
        "features": {"backbone": "lite0", "input_size": 64, "weights": "", "layer": ""},
        "masks": {"provider": "isnet", "dilation": 8, "mask_root": ""}, "flips": {}, "aggregation": "mean_of_max",
        "threshold": 2.5, "threshold_quantile": 0.95, "threshold_source": "training samples",
        "single_view": False, "best_epoch": 4, "best_val_loss": 0.25, "history": [{"epoch": 1}],
        "train_samples": 9, "val_samples": 1, "seconds": {"total": 3.0},
    }
    (tmp_path / "model.json").write_text(json.dumps(v1))
    _, b = load_bundle(tmp_path)
    assert b.features.weights_digest == "cd" * 32 and b.features.dtype == "float16" and b.features.input_size == 64
    assert b.scoring.aggregation == "mean_of_max" and b.threshold.value == 2.5 and b.threshold.quantile == 0.95
    assert b.masks.provider == "isnet" and b.training.train_samples == 9 and b.training.best_epoch == 4
    assert b.graph.view_names == VIEWS and sorted(map(tuple, b.graph.edges)) == sorted(
        map(tuple, flow.graph.to_dict()["edges"]))


@pytest.mark.parametrize(
    "content, match",
    [
        ({"format": "multiflow-model/9"}, "retrain the class"),
        ({"format": "something-else"}, "unsupported model description format"),
        ([1, 2], "unsupported model description format"),
    ],
)
def test_unknown_formats_say_what_to_do(tmp_path, content, match):
    (tmp_path / "model.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=match) as err:
        read_bundle(tmp_path)
    assert "model.json" in str(err.value)


def test_malformed_format_2_names_the_field(tmp_path):
    flow = _flow()
    save_bundle(tmp_path, flow, _bundle(flow))
    data = json.loads((tmp_path / "model.json").read_text())
    del data["features"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="'features'"):
        read_bundle(tmp_path)
    data = json.loads((tmp_path / "model.json").read_text()) | {"features": {"backbone": "x", "input_size": 1, "bad": 1}}
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['bad'\]"):
        read_bundle(tmp_path)


def test_bundle_with_a_mismatched_flow_is_refused(tmp_path):
    flow = _flow()
    bundle = _bundle(flow)
    other = MultiFlow(4, ViewGraph.real_iad(3), n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1)
    with pytest.raises(CheckpointError, match="graph views"):
        save_bundle(tmp_path, flow, ModelBundle(**{**bundle.__dict__, "view_names": ["a", "b", "c"]}))
    with pytest.raises(CheckpointError, match="the flow has 4 views"):
        save_bundle(tmp_path, other, bundle)
    save_bundle(tmp_path, flow, bundle)
    save_flow(other, tmp_path / FLOW_FILE)  # a flow file from another model copied over this one
    with pytest.raises(CheckpointError, match="the flow has 4 views"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("other, differs", [
    (ViewGraph.full(3, names=VIEWS), r"edges only in the flow: left->right, right->left$"),
    (ViewGraph.none(3, names=VIEWS), r"edges only in model.json: top->left, top->right, left->top, right->top$"),
    (ViewGraph.top_only(3, names=["top", "right", "left"]), r"view names: flow \['top', 'right', 'left'\]"),
])
def test_a_flow_with_another_graph_of_as_many_views_is_refused_on_load(tmp_path, other, differs):
    """The graph is compared in full (edges, names), not only the view count, naming the flow file."""
    flow = MultiFlow(4, ViewGraph.top_only(3, names=VIEWS), n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1)
    bundle = _bundle(flow)
    save_bundle(tmp_path, flow, bundle)
    swapped = MultiFlow(4, other, n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1)
    with pytest.raises(CheckpointError, match=differs.rstrip("$")):
        save_bundle(tmp_path / "new", swapped, bundle)
    save_flow(swapped, tmp_path / FLOW_FILE)
    with pytest.raises(CheckpointError) as err:
        load_bundle(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / FLOW_FILE) in msg and "differs from the one model.json records" in msg
    assert re.search(differs, msg.split(" (", 1)[1].split("): ", 1)[0]), msg


def test_the_bundle_rebuilds_the_flow_class_it_records(tmp_path):
    """A single-view model comes back as a SingleViewFlow (same file layout as a one-view
    MultiFlow); a flow of the other class is refused at save, a mislabelled file at load."""
    from multiflow.flow import SingleViewFlow

    sv = SingleViewFlow(4, n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1).eval()
    b = _bundle(_flow())
    bundle = ModelBundle(**{**b.__dict__, "graph": GraphSpec(view_names=["view"], edges=[]), "single_view": True})
    save_bundle(tmp_path, sv, bundle)
    flow, loaded = load_bundle(tmp_path)
    assert type(flow) is SingleViewFlow and loaded.single_view
    x = torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flow(x).nll, sv(x).nll)
    with pytest.raises(CheckpointError, match="is a MultiFlow, but the model description"):
        save_bundle(tmp_path / "x", MultiFlow(4, ViewGraph.none(1, ["view"]), n_blocks=1, hidden=4,
                                              kernel_sizes=(3,)), bundle)
    save_bundle(tmp_path / "multi", _flow(), b)
    save_flow(_flow(), tmp_path / "multi" / FLOW_FILE)
    (tmp_path / "multi" / "model.json").write_text(
        json.dumps(bundle.to_dict() | {"view_names": VIEWS}))  # says single-view, the flow file has 3 views
    with pytest.raises(CheckpointError, match="one view without links"):
        load_bundle(tmp_path / "multi")


def test_set_threshold_rewrites_atomically_and_audits(tmp_path):
    flow = _flow()
    save_bundle(tmp_path, flow, _bundle(flow))
    set_threshold(tmp_path, 1.75, who="alice", reason="fewer false alarms on line 2")
    b = set_threshold(tmp_path, 1.5, who="bob", reason="review of week 12")
    again = read_bundle(tmp_path)
    assert again == b and again.threshold.value == 1.5
    assert [(a.value, a.previous, a.who) for a in again.threshold.audit] == [(1.75, 1.25, "alice"), (1.5, 1.75, "bob")]
    assert again.threshold.audit[0].reason == "fewer false alarms on line 2" and again.threshold.audit[0].when
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(CheckpointError, match="finite"):
        set_threshold(tmp_path, float("nan"), who="eve", reason="x")
    with pytest.raises(CheckpointError, match="who made it and why"):
        set_threshold(tmp_path, 1.0, who="", reason="")
    assert read_bundle(tmp_path).threshold.value == 1.5


def test_missing_view_fields_round_trip_and_default_for_older_bundles(tmp_path):
    import dataclasses

    from multiflow.engine.bundle import load_camera_faults

    flow = _flow()
    bundle = dataclasses.replace(_bundle(flow), supports_missing_views=True, view_dropout=0.3,
                                 camera_faults="camera_faults.json")
    save_bundle(tmp_path, flow, bundle)
    assert read_bundle(tmp_path) == bundle
    # the bundle names the statistics: a missing file is an error naming it, not a silent "no check"
    with pytest.raises(CheckpointError, match="camera_faults.json.*missing"):
        load_camera_faults(tmp_path, bundle)
    # a format-2 bundle written before these fields loads with the defaults (no missing views, no check)
    data = json.loads((tmp_path / "model.json").read_text())
    for key in ("supports_missing_views", "view_dropout", "camera_faults"):
        del data[key]
    (tmp_path / "model.json").write_text(json.dumps(data))
    old = read_bundle(tmp_path)
    assert (old.supports_missing_views, old.view_dropout, old.camera_faults) == (False, 0.0, "")
    assert load_camera_faults(tmp_path, old) is None
    data["camera_faults"] = "../elsewhere.json"
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="camera_faults must name a file in the class folder"):
        read_bundle(tmp_path)
    data["camera_faults"], data["view_dropout"] = "", 1.5
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="view_dropout"):
        read_bundle(tmp_path)


def test_format_1_with_view_dropout_keeps_it_and_finds_its_fault_statistics(tmp_path):
    from multiflow.flow import save_flow

    flow = _flow()
    save_flow(flow, tmp_path / "model.safetensors")
    v1 = {
        "format": "multiflow-model/1", "category": "part", "view_names": VIEWS,
        "extractor": {"weights_digest": "cd" * 32, "channels": 4}, "features": {"backbone": "lite0", "input_size": 64},
        "masks": {"provider": "none", "dilation": 8}, "threshold": 2.5,
        "supports_missing_views": True, "view_dropout": 0.25,
    }
    (tmp_path / "model.json").write_text(json.dumps(v1))
    b = read_bundle(tmp_path)
    assert b.supports_missing_views is True and b.view_dropout == 0.25 and b.camera_faults == ""
    (tmp_path / "camera_faults.json").write_text("{}")
    assert read_bundle(tmp_path).camera_faults == "camera_faults.json"


def test_scoring_and_mask_switches_round_trip_and_default_when_absent(tmp_path):
    """The fitted image score and the mask margin round-trip; a format-2 bundle written before these
    fields existed loads with the paper's scoring and masks; a removed calibration is refused."""
    from multiflow.scoring import ImageScoreSpec

    flow = _flow()
    bundle = _bundle(flow)
    bundle.scoring = ScoringSpec(aggregation="max", image_score=ImageScoreSpec(name="quantile", q=0.9))
    bundle.masks = MasksSpec(provider="threshold", dilation=3, margin=0.05)
    save_bundle(tmp_path, flow, bundle)
    loaded = read_bundle(tmp_path)
    assert loaded == bundle
    data = json.loads((tmp_path / "model.json").read_text())
    data["scoring"] = {"aggregation": "max"}
    data["masks"] = {"provider": "threshold", "dilation": 3, "mask_root": ""}
    (tmp_path / "model.json").write_text(json.dumps(data))
    old = read_bundle(tmp_path)
    assert old.scoring == ScoringSpec() and old.masks.margin == 0.0
    assert old.scoring.postprocess(64).is_identity
    for bad, match in [({"image_score": {"name": "median"}}, "unknown image score"),
                       ({"calibration": {"mode": "zscore", "loc": [0.0], "scale": [1.0]}}, "'zscore' was removed"),
                       ({"extra": 1}, r"unknown field\(s\) \['extra'\]")]:
        (tmp_path / "model.json").write_text(json.dumps(data | {"scoring": bad}))
        with pytest.raises(CheckpointError, match=match):
            read_bundle(tmp_path)


def test_format_1_with_a_scoring_section_keeps_it(tmp_path):
    """Format-1 files written by the scoring-switch branch stored image_score/calibration under
    'scoring' and margin/soft under 'masks': the migration keeps them (calibration 'none' only)."""
    from multiflow.flow import save_flow
    from multiflow.scoring import ImageScoreSpec

    flow = _flow()
    save_flow(flow, tmp_path / "model.safetensors")
    cal = {"mode": "none", "loc": [], "scale": [], "knots": [], "levels": []}
    v1 = {
        "format": "multiflow-model/1", "category": "part", "view_names": VIEWS,
        "extractor": {"weights_digest": "cd" * 32, "channels": 4},
        "features": {"backbone": "lite0", "input_size": 64, "weights": "", "layer": ""},
        "masks": {"provider": "threshold", "dilation": 8, "mask_root": "", "margin": 0.05, "soft": 0.1},
        "aggregation": "max", "threshold": 0.5,
        "scoring": {"image_score": {"name": "topk_mean", "k": 0.2}, "calibration": cal},
    }
    (tmp_path / "model.json").write_text(json.dumps(v1))
    b = read_bundle(tmp_path)
    assert b.scoring == ScoringSpec(aggregation="max", image_score=ImageScoreSpec(name="topk_mean", k=0.2))
    assert b.masks.margin == 0.05  # the removed soft weight (training-only) is dropped on load
    assert not hasattr(b.masks, "soft")


def _fitted_threshold() -> ThresholdSpec:
    from multiflow.scoring import fit_threshold

    ids = [f"n{i}" for i in range(12)]
    full = fit_threshold([1.0, 1.1, 1.2, 1.05, 0.95, 1.15, 1.0, 1.1, 1.2, 1.05, 0.95, 11.0], ids)
    two = fit_threshold([1.3, 1.4, 1.5, 1.35, 1.25, 1.45, 1.3, 1.4, 1.5, 1.35, 1.25, 1.45], ids)
    return ThresholdSpec(value=full.value, fit=full, by_views={"2": two}, calibration_maps="calibration_maps.npz",
                         source="12 held-out calibration objects")


def test_format_3_threshold_states_its_target_outliers_and_per_view_count_values(tmp_path):
    """The threshold carries its target, sample size, needed_n, outliers and warnings, and one value per
    number of present views; all round-trip through model.json (format 3)."""
    flow = _flow()
    bundle = _bundle(flow)
    bundle.threshold = _fitted_threshold()
    save_bundle(tmp_path, flow, bundle)
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["format"] == "multiflow-model/4" == BUNDLE_FORMAT
    assert data["threshold"]["fit"]["false_reject"] == 0.01 and data["threshold"]["fit"]["needed_n"] == 230
    assert data["threshold"]["fit"]["outliers"] == [{"sample_id": "n11", "score": 11.0}]
    loaded = read_bundle(tmp_path)
    assert loaded == bundle
    t = loaded.threshold
    assert t.for_views(3, 3) == t.value and t.for_views(2, 3) == t.by_views["2"].value != t.value
    assert t.for_views(1, 3) == t.value  # no value fitted for one view: the full one
    assert any("needs 230" in w for w in t.warnings) and any("n11 (score 11)" in w for w in t.warnings)
    assert any(w.startswith("2 views present:") for w in t.warnings)
    for bad, match in [({"by_views": {"3": t.by_views["2"].to_dict()}}, "by_views"),
                       ({"by_views": {"2": {"value": 1.0}}}, "malformed 'threshold'"),
                       ({"fit": t.fit.to_dict() | {"false_reject": 2.0}}, "false_reject"),
                       ({"calibration_maps": "../x.npz"}, "calibration_maps")]:
        (tmp_path / "model.json").write_text(json.dumps(data | {"threshold": data["threshold"] | bad}))
        with pytest.raises(CheckpointError, match=match):
            read_bundle(tmp_path)


def test_format_2_bundle_loads_and_says_its_threshold_has_no_stated_rate(tmp_path):
    """A bundle written before format 3 (raw quantile threshold, calibration 'none') still loads and
    scores as before; its threshold warns that no false-reject rate was stated."""
    flow = _flow()
    save_bundle(tmp_path, flow, _bundle(flow))
    data = json.loads((tmp_path / "model.json").read_text())
    data["format"] = "multiflow-model/2"
    data["threshold"] = {"value": 1.25, "quantile": 0.99, "source": "held-out normal training samples", "audit": []}
    data["scoring"] = {"aggregation": "mean", "image_score": {"name": "max", "k": 0.01, "q": 0.99, "sigma": 8.0,
                                                              "size": 0},
                       "calibration": {"mode": "none", "loc": [], "scale": [], "knots": [], "levels": []}}
    (tmp_path / "model.json").write_text(json.dumps(data))
    b = read_bundle(tmp_path)
    assert b.threshold.value == 1.25 and b.threshold.fit is None and b.threshold.for_views(2, 3) == 1.25
    assert b.scoring == ScoringSpec(aggregation="mean")
    assert len(b.threshold.warnings) == 1 and "0.99 quantile" in b.threshold.warnings[0]
    assert "without a stated false-reject rate" in b.threshold.warnings[0]
    data["scoring"]["calibration"] = {"mode": "tail", "loc": [0.0] * 3, "scale": [1.0] * 3}
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="'tail' was removed"):
        read_bundle(tmp_path)


def test_a_hand_set_threshold_applies_to_every_view_count(tmp_path):
    """set_threshold replaces the fitted value for every number of views: the per-count values and
    the statistics (which described the fitted value) are dropped, and the warning says so."""
    flow = _flow()
    bundle = _bundle(flow)
    bundle.threshold = _fitted_threshold()
    save_bundle(tmp_path, flow, bundle)
    b = set_threshold(tmp_path, 3.0, who="qa", reason="line trial")
    assert b.threshold.for_views(2, 3) == 3.0 == b.threshold.for_views(3, 3)
    assert b.threshold.fit is None and b.threshold.by_views == {}
    assert read_bundle(tmp_path).threshold.warnings == ["threshold set by hand (set by qa); no stated false-reject rate"]


# ------------------------------------------------------------------ format 4: the unified multi-class bundle
def _unified(conditioning="embedding"):
    from multiflow.flow.unified import UnifiedFlow

    flow = UnifiedFlow(4, ViewGraph.real_iad(2, names=VIEWS), classes=["cup", "lid"], class_conditioning=conditioning,
                       n_blocks=1, hidden=4, kernel_sizes=(3,), seed=1).eval()
    from multiflow.engine.bundle import ClassSpec
    from multiflow.scoring import fit_threshold

    bundle = _bundle(flow)
    ids = [f"n{i}" for i in range(6)]
    specs = {}
    for i, c in enumerate(["cup", "lid"]):
        fit = fit_threshold([1.0 + i, 1.1 + i, 1.2 + i, 1.05 + i, 0.95 + i, 1.15 + i], ids)
        unknown = fit_threshold([3.0 + i, 3.1 + i, 3.2 + i, 3.05 + i, 2.95 + i, 3.15 + i], ids)
        thr = ThresholdSpec(value=fit.value, fit=fit, calibration_maps=f"calibration_maps.{c}.npz")
        specs[c] = ClassSpec(threshold=thr, camera_faults="", unknown=unknown, identified=1.0, train_samples=20,
                             calibration_samples=6)
    bundle.category, bundle.classes, bundle.class_conditioning, bundle.per_class = "unified", ["cup", "lid"], \
        conditioning, specs
    bundle.threshold = specs["cup"].threshold
    return flow, bundle


def test_format_4_unified_bundle_round_trip(tmp_path):
    from multiflow.flow.unified import UnifiedFlow

    flow, bundle = _unified()
    save_bundle(tmp_path, flow, bundle)
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["format"] == "multiflow-model/4" and data["classes"] == ["cup", "lid"]
    loaded_flow, loaded = load_bundle(tmp_path)
    assert loaded == bundle and type(loaded_flow) is UnifiedFlow and loaded_flow.classes == ["cup", "lid"]
    lid = loaded.for_class("lid")
    assert lid.category == "lid" and lid.threshold.value == bundle.per_class["lid"].threshold.value != \
        bundle.per_class["cup"].threshold.value
    with pytest.raises(ConfigError, match="not one of"):
        loaded.for_class("bowl")
    x = torch.randn(1, 3, 4, 2, 2)
    torch.testing.assert_close(loaded_flow(x, classes=1).nll, flow(x, classes=1).nll, rtol=0, atol=0)
    # malformed class sections are clear errors
    cup, lid = data["per_class"]["cup"], data["per_class"]["lid"]
    for bad, match in [({"per_class": {"cup": cup}}, "per_class holds"),
                       ({"classes": ["cup", "../lid"], "per_class": {"cup": cup, "../lid": lid}}, "plain names"),
                       ({"class_conditioning": "mixture"}, "class_conditioning"),
                       ({"classes": ["lid", "cup"]}, "differ from model.json")]:
        (tmp_path / "model.json").write_text(json.dumps(data | bad))
        with pytest.raises(CheckpointError, match=match):
            load_bundle(tmp_path)


def test_format_3_bundle_still_loads_as_a_class_model(tmp_path):
    """A class model's model.json as format 3 wrote it (no class fields) loads, and is not unified."""
    flow = _flow()
    bundle = _bundle(flow)
    bundle.threshold = _fitted_threshold()
    save_bundle(tmp_path, flow, bundle)
    data = json.loads((tmp_path / "model.json").read_text())
    v3 = {k: v for k, v in data.items() if k not in ("classes", "class_conditioning", "per_class")}
    (tmp_path / "model.json").write_text(json.dumps(v3 | {"format": "multiflow-model/3"}))
    loaded_flow, loaded = load_bundle(tmp_path)
    assert type(loaded_flow) is MultiFlow and not loaded.unified and loaded.classes == []
    assert loaded == bundle and loaded.for_class("part") is loaded
    with pytest.raises(ConfigError, match="trained for class 'part'"):
        loaded.for_class("other")
