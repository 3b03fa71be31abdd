"""The single-view flow through the engine: fit, test, predict and ONNX export talk to it as to any
flow (:class:`multiflow.flow.SingleViewFlow`), and it trains and scores exactly as the
single-view option did when the pipeline branched on it.

The reference is that old path, rebuilt here from its pieces: a one-view ``MultiFlow`` (graph
``none`` over ``["view"]``) trained by ``train_flow`` on ``to_single_view`` of the cached features
(every image its own sample, the same batch size, so ``V`` times the steps), calibrated on the
calibration objects held out before training (engine/threshold.py) and scored image by image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from multiflow import api

CLASS = "toy_brick"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("sv")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=5, n_test_good=2, n_test_defect=2, size=64, seed=5,
                     progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{CLASS}]", "data.resolution=64", "features.input_size=64",
        f"features.cache_dir={root / 'cache'}", "model.hidden=4", "model.n_blocks=1", "model.kernel_sizes=[3]",
        "model.single_view=true", "train.epochs=2", "train.batch_size=4", "train.lr=0.002",
        f"out={root / 'results'}", "name=sv", "eval.pictures=false", "train.device=cpu", "train.val_fraction=0.2",
    ]
    run_dir = api.fit(overrides=overrides, progress=False)
    api.evaluate(run_dir, progress=False)
    return run_dir, root


def _old_single_view_path(run_dir, root):
    """The single-view option as the pipeline ran it before SingleViewFlow (see module docstring)."""
    from multiflow.config import load_config
    from multiflow.engine.factories import build_extractor, build_flow
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.maps import compute_maps
    from multiflow.engine.threshold import fit_for_scoring, split_calibration
    from multiflow.engine.train import train_flow
    from multiflow.flow.single_view import from_single_view, to_single_view
    from multiflow.scoring import ScoringSpec

    cfg = load_config(run_dir / "config.yaml")
    extractor = build_extractor(cfg.features)
    train = prepare_split(cfg, CLASS, "train", extractor, progress=False)
    test = prepare_split(cfg, CLASS, "test", extractor, progress=False)
    v = len(train.view_names)
    rest, cal = split_calibration(5, cfg.threshold.calibration_fraction, cfg.train.seed, min_rest=2)
    feats, masks = to_single_view(train.features[rest], None if train.masks is None else train.masks[rest])
    model = build_flow(dataclasses.replace(cfg.model, graph="none", single_view=False), extractor.channels,
                       ["view"], cfg.train.seed)
    result = train_flow(model, feats, masks, cfg.train, root / "old_state", progress=False,
                        device=torch.device("cpu"))
    assert len(result.train_index) + len(result.val_index) == len(rest) * v  # images, not objects

    def maps_of(f, m):
        sf, sm = to_single_view(f, m)
        return from_single_view(compute_maps(model, sf, sm, batch_size=cfg.eval.batch_size), v)

    cal_masks = None if train.masks is None else train.masks[cal]
    scoring = ScoringSpec(aggregation=cfg.eval.aggregation, image_score=cfg.eval.image_score_spec())
    fit, _ = fit_for_scoring(maps_of(train.features[cal], cal_masks), cal_masks, [train.sample_ids[i] for i in cal],
                             scoring, cfg.threshold, image_size=int(extractor.input_size))
    threshold = fit.value
    return model, result, threshold, maps_of(test.features, test.masks)


def test_fit_and_test_are_the_old_single_view_path(run):
    from multiflow.engine.bundle import load_bundle
    from multiflow.flow import SingleViewFlow

    run_dir, root = run
    flow, bundle = load_bundle(run_dir / CLASS)
    assert type(flow) is SingleViewFlow and bundle.single_view
    assert bundle.graph.view_names == ["view"] and bundle.graph.edges == []
    old, result, threshold, test_maps = _old_single_view_path(run_dir, root)
    old_state = old.state_dict()
    for k, t in flow.state_dict().items():
        assert torch.equal(t, old_state[k]), k
    assert bundle.training.train_samples == len(result.train_index)  # images
    assert [h["train_loss"] for h in bundle.training.history] == [h["train_loss"] for h in result.history]
    assert bundle.threshold.value == threshold
    written = np.load(run_dir / CLASS / "maps.npy")
    np.testing.assert_array_equal(written, test_maps.astype(written.dtype))


def test_predict_and_onnx_export_of_a_single_view_model(run, tmp_path):
    """No refusal any more: the exported graph reproduces the predictor's maps and scores."""
    ort = pytest.importorskip("onnxruntime")
    from multiflow.deploy.onnx_export import export_onnx, load_inference_graph
    from multiflow.engine.predict import Predictor

    run_dir, _ = run
    folder = run_dir / CLASS
    pred = Predictor(folder, device="cpu")
    n_views = len(pred.view_names)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, n_views, 3, 64, 64, generator=g)  # export traces with batch 2
    p0 = pred.predict(images[0], sample_id="a")
    assert np.isfinite(p0.view_scores).all()
    # every view scored on its own: changing one view's image changes only that view's map
    other = images[0].clone()
    other[2] = torch.rand(3, 64, 64, generator=g)
    p1 = pred.predict(other, sample_id="b")
    same = [v for v in range(n_views) if v != 2]
    np.testing.assert_array_equal(p1.maps[same], p0.maps[same])
    assert not np.array_equal(p1.maps[2], p0.maps[2])
    graph, _ = load_inference_graph(folder)
    path = export_onnx(folder, tmp_path / "sv.onnx", with_mask=False)
    with torch.no_grad():
        ref = [t.numpy() for t in graph(images)]
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
    scale = float(np.abs(ref[0]).max())
    for r, o in zip(ref[:3], out[:3]):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(ref[1][0], p0.view_scores, rtol=1e-4, atol=1e-4)
