"""The batched inference path: torch masks on the predictor's device (and the NumPy reference
selectable), several objects per backbone/flow call, decode threads, and the per-stage report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy.deploy_helpers import VIEWS, make_bundle
from PIL import Image

from multiflow.engine.predict import ObjectImages, Predictor, prefetch
from multiflow.engine.timing import STAGES


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("run") / "tiny", threshold=1.0, provider="threshold")


@pytest.fixture(scope="module")
def dropout_model(masked_model, tmp_path_factory) -> Path:
    import shutil

    folder = tmp_path_factory.mktemp("dropout") / "tiny"
    shutil.copytree(masked_model, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["supports_missing_views"], meta["view_dropout"] = True, 0.3
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _render(seed: int, size: int = 96) -> np.ndarray:
    """``(V, size, size, 3)`` uint8: a textured object whose shape and place vary, on a graded tray
    (with a darker band), per view."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for v in range(len(VIEWS)):
        img = np.repeat((0.2 + 0.15 * yy + 0.05 * xx)[..., None], 3, axis=2) * rng.uniform(0.8, 1.2, 3)
        img[: size // 10] *= 0.7
        cx, cy, a, b = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)
        obj = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
        img[obj] = 0.55 + 0.35 * rng.random((int(obj.sum()), 3))
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def _tensor(seed: int) -> torch.Tensor:
    return torch.from_numpy(_render(seed)).permute(0, 3, 1, 2).float() / 255


def test_torch_masks_match_the_numpy_reference_and_scores_agree(masked_model):
    """Per view IoU >= 0.99 of the full-resolution masks, at most 1 % of grid cells different;
    where the grid masks agree the sample scores agree within 1e-4 relative."""
    from multiflow.features.masks import ThresholdMasks, batch_view_masks

    fast = Predictor(masked_model, device="cpu", frozen_check=False)
    ref = Predictor(masked_model, device="cpu", frozen_check=False, masks_backend="numpy")
    assert fast.preprocessor._static_provider.backend == "torch"
    assert ref.preprocessor._static_provider.backend == "numpy"
    imgs = torch.stack([_tensor(s) for s in range(6)])  # (6, V, 3, S, S)
    grid = fast.preprocessor.grid
    full_t, grid_t = batch_view_masks(ThresholdMasks(backend="torch"), imgs, grid)
    full_n, grid_n = batch_view_masks(ThresholdMasks(backend="numpy"), imgs, grid)
    inter = (full_t & full_n).flatten(2).sum(-1).float()
    union = (full_t | full_n).flatten(2).sum(-1).float().clamp_min(1)
    assert bool(((inter / union) >= 0.99).all()), inter / union
    assert float((grid_t != grid_n).float().mean()) <= 0.01
    assert 0.05 < float(grid_t.float().mean()) < 0.95  # the masks are not trivially all/none
    agree = 0
    for s in range(6):
        a, b = fast.predict(imgs[s], sample_id=str(s)), ref.predict(imgs[s], sample_id=str(s))
        if torch.equal(grid_t[s], grid_n[s]):
            agree += 1
            assert a.sample_score == pytest.approx(b.sample_score, rel=1e-4)
            assert a.decision == b.decision
    assert agree >= 5


def test_masks_are_computed_on_the_predictor_device(masked_model, monkeypatch):
    """The images reach the batched masks on the predictor's device (the meta device tells a
    transfer apart from CPU work on a CPU-only machine), all views of all objects in one call."""
    import multiflow.device
    import multiflow.features.masks as masks_mod

    class Reached(Exception):
        pass

    seen = []

    def spy(provider, images, grid, **kw):
        seen.append((images.device, tuple(images.shape)))
        raise Reached

    meta = torch.device("meta")
    monkeypatch.setattr(multiflow.device, "resolve_device", lambda spec="auto", **_: meta)
    monkeypatch.setattr(masks_mod, "batch_view_masks", spy)
    pred = Predictor(masked_model, device="cpu", frozen_check=False)
    with pytest.raises(Reached):
        pred.predict_batch([ObjectImages(_tensor(s), sample_id=str(s)) for s in range(3)])
    assert seen == [(meta, (1, 3 * len(VIEWS), 3, 96, 96))]


def test_a_batch_scores_as_its_objects_alone(dropout_model):
    """Objects scored together (some with a view missing) give the scores they get one by one."""
    pred = Predictor(dropout_model, device="cpu", frozen_check=False)
    objs = [ObjectImages(_tensor(s), sample_id=f"o{s}") for s in range(4)]
    objs.append(ObjectImages(_tensor(9)[[0, 2]], view_names=[VIEWS[0], VIEWS[2]], sample_id="o9"))
    together = pred.predict_batch(objs)
    alone = [pred.predict(o.images, o.view_names, o.sample_id) for o in objs]
    assert [p.sample_id for p in together] == [o.sample_id for o in objs]
    for t, a in zip(together, alone):
        assert t.sample_score == pytest.approx(a.sample_score, rel=1e-5)
        np.testing.assert_allclose(t.maps, a.maps, rtol=1e-4, atol=1e-5)
        assert t.decision == a.decision and t.missing_views == a.missing_views
    assert together[-1].missing_views == [VIEWS[1]] and np.isnan(together[-1].view_scores[1])
    assert len({round(p.sample_score, 6) for p in together}) == len(together)  # not all the same


def test_prefetch_keeps_order_and_bounds_the_lookahead():
    import threading
    import time

    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))
        return i * i

    gen = prefetch(work, range(20), workers=3, depth=4)
    first = next(gen)
    assert first == (0, 0)
    time.sleep(0.05)
    assert len(started) <= 5  # the one handed out and at most depth ahead
    assert [out for _, out in gen] == [i * i for i in range(1, 20)]
    assert [o for _, o in prefetch(work, range(5), workers=0, depth=1)] == [0, 1, 4, 9, 16]


def test_predict_over_a_folder_reports_stages_and_equals_the_sequential_path(masked_model, tmp_path, capsys):
    from multiflow.cli import main

    root = tmp_path / "parts"
    for s in range(5):
        folder = root / "test" / "good" / f"s{s}"
        folder.mkdir(parents=True)
        for v, img in zip(VIEWS, _render(20 + s)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            (folder / f"{v}.png").write_bytes(buf.getvalue())
    runs = {}
    for name, extra in {"seq": ["--batch-size", "1", "--workers", "0", "--masks-backend", "numpy"],
                        "fast": ["--batch-size", "3", "--workers", "2", "--maps", "npy"]}.items():
        out = tmp_path / name
        assert main(["predict", "--model", str(masked_model), "--data", str(root), "--out", str(out),
                     "--device", "cpu", "--quiet", *extra]) == 0
        runs[name] = json.loads((out / "summary.json").read_text())
        runs[name]["rows"] = {r["sample_id"]: r for r in
                              (json.loads((out / f"good_s{s}" / "result.json").read_text()) for s in range(5))}
    assert sorted(p.name for p in (tmp_path / "fast" / "good_s0").iterdir()) == sorted(
        ["result.json"] + [f"{v}.npy" for v in VIEWS])  # --maps npy: no overlays
    assert len(list((tmp_path / "seq" / "good_s0").glob("*.png"))) == len(VIEWS)
    printed = capsys.readouterr().out
    assert "objects/s" in printed and "backbone" in printed
    for name, batch in (("seq", 1), ("fast", 3)):
        timing = runs[name]["timing"]
        assert timing["objects"] == 5 and timing["batch_size"] == batch and timing["objects_per_s"] > 0
        assert set(STAGES) <= set(timing["stages_s"]) and all(timing["stages_s"][k] > 0 for k in
                                                               ("decode", "masks", "backbone", "flow", "scoring", "write"))
        assert timing["dominant"] in STAGES
        assert (timing["stages_s"]["write_wait"] > 0) is (name == "fast")  # written by a thread with workers
    assert runs["fast"]["timing"]["masks_backend"] == "torch" and runs["seq"]["timing"]["masks_backend"] == "numpy"
    for sid, r in runs["seq"]["rows"].items():
        f = runs["fast"]["rows"][sid]
        assert f["sample_score"] == pytest.approx(r["sample_score"], rel=1e-4)
        assert f["decision"] == r["decision"]


def test_prepare_split_computes_masks_on_the_run_device_with_the_configured_backend(monkeypatch):
    """The mask cache of a split is computed where the run computes (``device``), by the backend
    ``masks.backend`` names."""
    import types

    import multiflow.engine.preprocess as pre
    import multiflow.features.cache as cache_mod
    import multiflow.features.masks as masks_mod
    from multiflow.config import load_config

    seen = {}
    monkeypatch.setattr(pre, "open_dataset", lambda *a, **k: _DS())
    monkeypatch.setattr(cache_mod, "extract_features", lambda *a, **k: types.SimpleNamespace(
        features=np.zeros((1, 3, 2, 1, 1)), sample_ids=["a"]))

    def fake_compute(ds, provider, root, **kw):
        seen["device"], seen["backend"] = kw.get("device"), provider.backend
        return types.SimpleNamespace(grid=np.ones((1, 3, 1, 1), dtype=bool))

    monkeypatch.setattr(masks_mod, "compute_masks", fake_compute)

    class Ext(torch.nn.Module):
        input_size = 96

        def feature_size(self, size):
            return (1, 1)

    for backend in ("torch", "numpy"):
        cfg = load_config(None, ["data.root=/nowhere", f"masks.backend={backend}", "masks.provider=threshold"])
        pre.prepare_split(cfg, "c", "test", Ext(), progress=False, device=torch.device("meta"))
        assert seen == {"device": torch.device("meta"), "backend": backend}


class _DS:
    """A one-sample split (only its length and views are read before the caches)."""

    view_names = list(VIEWS)

    def __len__(self) -> int:
        return 1
