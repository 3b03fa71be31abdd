"""The review package without a browser: test outputs, labels under concurrency, re-evaluation
against scikit-learn, threshold writes seen by the predictor, safe paths, incomplete runs."""

from __future__ import annotations

import csv
import json
import shutil
import threading

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from multiflow.errors import CheckpointError, DataError
from multiflow.review.labels import LABELS, LabelStore, read_labels
from multiflow.review.reevaluate import reevaluate_run
from multiflow.review.store import NotFound, RunStore, apply_threshold, resolve_under
from review_helpers import client, synthetic_run

CLASS = "toy_brick"  # the class of the `trained_run` fixture (conftest.py)


@pytest.fixture()
def fake_run(tmp_path):
    return synthetic_run(tmp_path / "fake", n_objects=60, n_views=3, image_size=32, grid=4, seed=2)


@pytest.mark.slow  # uses the session's trained run
def test_review_files_are_the_maps_and_paths_of_scores_csv(trained_run):
    folder = trained_run / CLASS
    rows = list(csv.DictReader(open(folder / "scores.csv")))
    maps = np.load(folder / "maps.npy")
    info = json.loads((folder / "samples.json").read_text())
    views = info["view_names"]
    assert maps.dtype == np.float16 and maps.shape[:2] == (len(rows), len(views)) and maps.ndim == 4
    assert [s["sample_id"] for s in info["samples"]] == [r["sample_id"] for r in rows]
    view_scores = np.array([[float(r[f"score_{v}"]) for v in views] for r in rows])
    # image score = max of the map (masks none in this run): float16 keeps ~3 significant digits
    np.testing.assert_allclose(maps.reshape(*maps.shape[:2], -1).max(-1), view_scores, rtol=2e-3)
    for s, r in zip(info["samples"], rows):
        assert len(s["image_paths"]) == len(views) and all(p.endswith(".jpg") for p in s["image_paths"])
        assert [m is not None for m in s["mask_paths"]] == [r[f"label_{v}"] == "1" for v in views]


def test_labels_are_safe_under_concurrent_writers(tmp_path):
    db = tmp_path / "review" / "labels.sqlite"
    LabelStore(db)
    errors = []

    def worker(k: int) -> None:
        try:
            store = LabelStore(db)  # each thread its own store, as each request its own connection
            for j in range(25):
                store.add("c", f"s{j % 5}", LABELS[(k + j) % 3], note=f"{k}-{j}", who=f"w{k}")
                store.current("c")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = LabelStore(db)
    lines = list(csv.DictReader(store.to_csv().splitlines()))
    assert len(lines) == 200 and len({r["id"] for r in lines}) == 200
    cur = store.current()
    assert set(cur) == {("c", f"s{j}") for j in range(5)}
    for (c, s), row in cur.items():  # the current label is the last written row of the object
        assert row["id"] == max(int(r["id"]) for r in lines if r["sample_id"] == s)
    assert read_labels(db) == {k: r["label"] for k, r in cur.items()}
    out = tmp_path / "labels.csv"
    out.write_text(store.to_csv())  # what /labels.csv sends
    assert read_labels(out) == read_labels(db)


def test_bad_labels_and_label_files_are_clear_errors(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    with pytest.raises(DataError, match="unknown label 'broken'"):
        store.add("c", "s", "broken")
    bad = tmp_path / "bad.csv"
    bad.write_text("category,sample_id,label\nc,s,maybe\n")
    with pytest.raises(DataError, match=r"bad.csv: line 2: unknown label 'maybe'"):
        read_labels(bad)
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="needs the columns"):
        read_labels(bad)
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "missing.csv")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00" * 300)
    with pytest.raises(DataError, match="junk.db"):
        read_labels(junk)


def test_reevaluation_with_corrected_labels_against_sklearn(fake_run, tmp_path):
    rows = list(csv.DictReader(open(fake_run / "widget" / "scores.csv")))
    ids = [r["sample_id"] for r in rows]
    scores = np.array([float(r["sample_score"]) for r in rows])
    truth = np.array([int(r["label"]) for r in rows])
    threshold = json.loads((fake_run / "widget" / "model.json").read_text())["threshold"]["value"]
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(ids), size=20, replace=False)
    given = {ids[i]: LABELS[k % 3] for k, i in enumerate(chosen)}
    path = tmp_path / "ops.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "sample_id", "label"])
        w.writerow(["widget", ids[chosen[0]], "unsure"])  # overwritten by the later row
        w.writerow(["other", ids[chosen[1]], "confirmed_defect"])  # another class: ignored
        for sid, lab in given.items():
            w.writerow(["widget", sid, lab])
    res = reevaluate_run(fake_run, path)["widget"]
    fixed = np.array([1 if given.get(s) == "confirmed_defect" else 0 if given.get(s) == "false_alarm" else t
                      for s, t in zip(ids, truth)])
    assert res["changed"] == int((fixed != truth).sum()) > 0
    assert res["ground_truth"]["s_auroc"] == pytest.approx(roc_auc_score(truth, scores))
    assert res["corrected"]["s_auroc"] == pytest.approx(roc_auc_score(fixed, scores))
    ng = scores > threshold
    c = res["corrected"]
    assert (c["false_positives"], c["false_negatives"]) == (int((ng & (fixed == 0)).sum()), int((~ng & (fixed == 1)).sum()))
    assert (c["true_positives"], c["true_negatives"]) == (int((ng & (fixed == 1)).sum()), int((~ng & (fixed == 0)).sum()))
    assert res["labelled"] == 20
    assert json.loads((fake_run / "widget" / "metrics_relabelled.json").read_text())["corrected"] == c


@pytest.mark.slow  # uses the session's trained run
def test_multiflow_test_labels_option(trained_run, tmp_path, capsys):
    from multiflow.cli import main

    rows = list(csv.DictReader(open(trained_run / CLASS / "scores.csv")))
    db = tmp_path / "labels.sqlite"
    normal = next(r["sample_id"] for r in rows if r["label"] == "0")
    LabelStore(db).add(CLASS, normal, "confirmed_defect", who="t")
    assert main(["test", str(trained_run), "--labels", str(db)]) == 0
    out = capsys.readouterr().out
    assert "| toy_brick | 1 | 1 |" in out
    res = json.loads((trained_run / CLASS / "metrics_relabelled.json").read_text())
    assert res["corrected"]["anomalous"] == res["ground_truth"]["anomalous"] + 1
    assert main(["test", str(trained_run), "--labels", str(tmp_path / "none.csv")]) == 1
    assert "label file not found" in capsys.readouterr().err


@pytest.mark.slow  # uses the session's trained run
def test_apply_threshold_is_audited_and_the_predictor_uses_it(trained_run, tmp_path):
    from multiflow.engine.predict import Predictor

    folder = tmp_path / CLASS
    shutil.copytree(trained_run / CLASS, folder)
    old = json.loads((folder / "model.json").read_text())
    rec = apply_threshold(folder, 12.5, who="ana", reason="line trial")
    apply_threshold(folder, 13.0, who="ben", reason="")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["threshold"]["value"] == 13.0
    before = list(old["threshold"]["audit"])  # the browser tests may have applied one already
    assert meta["threshold"]["audit"][: len(before)] == before
    new = meta["threshold"]["audit"][len(before):]
    assert [h["value"] for h in new] == [12.5, 13.0]
    assert new[0] == rec and rec["previous"] == old["threshold"]["value"] and rec["who"] == "ana"
    assert new[1]["previous"] == 12.5 and new[1]["who"] == "ben"
    assert {k: v for k, v in meta.items() if k != "threshold"} == {k: v for k, v in old.items() if k != "threshold"}
    assert not list(folder.glob(".*tmp*"))
    assert Predictor(folder).threshold == 13.0
    with pytest.raises(DataError, match="finite"):
        apply_threshold(folder, float("nan"), who="ana", reason="")
    with pytest.raises(CheckpointError, match="model.json not found"):
        apply_threshold(tmp_path, 1.0, who="ana", reason="")


def test_resolve_under_refuses_every_way_out(tmp_path):
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    (run / "a" / "f.txt").write_text("x")
    (run / "out").symlink_to(tmp_path)
    assert resolve_under(run, "a/f.txt") == (run / "a" / "f.txt").resolve()
    assert resolve_under(run, "out/run/a") == (run / "a").resolve()  # a link that comes back in is fine
    for bad in ["../x", "a/../../x", "/etc/passwd", "out/x", "out", "a/\x00"]:
        with pytest.raises(NotFound):
            resolve_under(run, bad)


def test_selection_filters_match_numpy(fake_run):
    d = RunStore(fake_run).get("widget")
    ng = d.scores > d.threshold
    expect = {"all": np.ones_like(ng), "fp": ng & (d.labels == 0), "fn": ~ng & (d.labels == 1), "ng": ng, "ok": ~ng}
    for kind, keep in expect.items():
        got = d.select(kind)
        assert sorted(got.tolist()) == np.flatnonzero(keep).tolist()
        assert np.all(np.diff(d.scores[got]) <= 0)  # highest score first
    got = d.select("all", defect="AK", view="C2")
    want = [i for i in range(len(ng)) if d.defects[i] == "AK" and d.view_scores[i].argmax() == 1]
    assert sorted(got.tolist()) == want
    with pytest.raises(NotFound, match="unknown filter"):
        d.select("nonsense")
    with pytest.raises(NotFound, match="no view 'C9'"):
        d.select("all", view="C9")


def test_incomplete_runs_are_shown_not_errors(fake_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = client(empty).get("/")
    assert r.status_code == 200 and "no trained class model yet" in r.text
    (fake_run / "metrics.json").unlink()
    (fake_run / "widget" / "maps.npy").unlink()
    c = client(fake_run)
    r = c.get("/")
    assert r.status_code == 200 and "This run is incomplete" in r.text and "missing maps.npy" in r.text
    r = c.get("/c/widget")
    assert r.status_code == 200 and "class-incomplete" in r.text
    r = c.get("/c/widget/o/0")
    assert r.status_code == 404 and "not evaluated yet" in r.text


def test_broken_run_files_name_the_file(fake_run):
    (fake_run / "widget" / "scores.csv").write_text("what,ever\n1,2\n")
    r = client(fake_run, raise_server_exceptions=False).get("/c/widget")
    assert r.status_code == 500 and "scores.csv: not a scores.csv of `multiflow test`" in r.text


def test_api_rejects_bad_bodies(fake_run):
    c = client(fake_run)
    h = c.api_headers
    assert c.post("/api/widget/label", content=b"{", headers=h | {"Content-Type": "application/json"}).status_code == 400
    r = c.post("/api/widget/label", json={"index": 0, "label": "great"}, headers=h)
    assert r.status_code == 400 and "label must be one of" in r.json()["detail"]
    r = c.post("/api/widget/label", json={"index": 10_000, "label": "unsure"}, headers=h)
    assert r.status_code == 404 and "no test object #10000" in r.json()["detail"]
    r = c.post("/api/widget/threshold", json={"value": 1.0, "who": " "}, headers=h)
    assert r.status_code == 400 and "who" in r.json()["detail"]
    r = c.post("/api/widget/threshold", content=b"x" * 70_000, headers=h | {"Content-Type": "application/json"})
    assert r.status_code == 413


def test_thumbnails_are_flipped_like_the_maps(tmp_path):
    from PIL import Image

    from multiflow.review.images import small_rgb, view_rgb

    arr = np.zeros((400, 600, 3), dtype=np.uint8)
    arr[:100, :150] = (250, 20, 20)  # a red block in the top-left corner
    path = tmp_path / "v.jpg"
    Image.fromarray(arr).save(path, quality=95)
    for flip in [None, "lr", "ud", "lrud"]:
        full = view_rgb(str(path), flip).astype(float)  # the reference: the data loader's flip
        small = np.asarray(small_rgb(str(path), flip, size=60), dtype=float)
        assert small.shape == (40, 60, 3)
        ref = np.asarray(Image.fromarray(full.astype(np.uint8)).resize((60, 40), Image.BILINEAR), dtype=float)
        assert np.abs(small - ref).mean() < 12, flip


def test_pages_link_classes_by_their_url_encoded_name(tmp_path):
    run = synthetic_run(tmp_path / "r", category="cap #2", n_objects=6, n_views=2, image_size=32, grid=4)
    c = client(run)
    assert 'href="/c/cap%20%232"' in c.get("/").text
    page = c.get("/c/cap%20%232")
    assert page.status_code == 200 and 'href="/c/cap%20%232/o/' in page.text
    first = page.text.split('href="/c/cap%20%232/o/')[1].split('"')[0]
    obj = c.get(f"/c/cap%20%232/o/{first}")
    assert obj.status_code == 200 and "/img/cap%20%232/" in obj.text
    assert c.get("/img/cap%20%232/0/1/thumb.jpg").headers["content-type"] == "image/jpeg"


def test_decisions_after_test_time_overrides_use_the_refitted_threshold(tmp_path):
    """``multiflow test --aggregation mean`` refits the threshold for the overridden scoring: the review
    app decides with that one (not the model's), and says so; without a refit it warns instead."""
    run = synthetic_run(tmp_path / "ov", n_objects=30, n_views=3, image_size=32, grid=4, seed=2)
    folder = run / "widget"
    metrics_path = run / "widget" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    model_thr = json.loads((folder / "model.json").read_text())["threshold"]["value"]
    scores = RunStore(run).get("widget").scores
    refit = float(np.median(scores))
    assert refit != model_thr
    metrics.update(overrides={"aggregation": "mean"}, threshold=refit, threshold_refitted_for_overrides=True)
    metrics_path.write_text(json.dumps(metrics))
    c = RunStore(run).get("widget")
    assert c.threshold == refit
    assert list(c.decision == "NG") == list(c.scores > refit)
    assert any("refitted" in w for w in c.threshold_warnings)
    metrics.update(threshold=None, threshold_refitted_for_overrides=False)
    metrics_path.write_text(json.dumps(metrics))
    c = RunStore(run).get("widget")
    assert c.threshold == model_thr and any("no threshold was fitted" in w for w in c.threshold_warnings)
