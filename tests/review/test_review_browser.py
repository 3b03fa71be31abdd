"""The review app in a real headless Chromium (Playwright) on one tiny trained and tested run.

Every expectation is computed independently in Python from the run's ``scores.csv`` and
``model.json``; screenshots of each page (1280 x 800) are written to the ``shots`` folder.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # the session's tiny run is trained and tested first (~30 s on 2 cores)

CLASS = "toy_brick"  # the class of the `trained_run` fixture (conftest.py)


def scores_table(run):
    rows = list(csv.DictReader(open(run / CLASS / "scores.csv")))
    views = [k[len("score_"):] for k in rows[0] if k.startswith("score_")]
    ids = [r["sample_id"] for r in rows]
    scores = np.array([float(r["sample_score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    vs = np.array([[float(r[f"score_{v}"]) for v in views] for r in rows])
    threshold = json.loads((run / CLASS / "model.json").read_text())["threshold"]["value"]
    return ids, scores, labels, vs, views, threshold, [r["defect"] for r in rows]


def listed_ids(page) -> list[str]:
    """Object ids of every page of the current class listing (following the "next" links)."""
    out = []
    while True:
        out += page.locator("#objects a.obj").all_inner_texts()
        nxt = page.locator("#pager a", has_text="next")
        if not nxt.count():
            return out
        nxt.click()
        page.wait_for_load_state("domcontentloaded")


def test_overview_lists_the_class_with_its_metrics(page, live, trained_run, shots):
    m = json.loads((trained_run / CLASS / "metrics.json").read_text())
    page.goto(live.url + "/")
    row = page.locator("#classes tbody tr", has_text=CLASS)
    assert row.count() == 1
    assert f"{100 * m['s_auroc']:.2f}" in row.inner_text()
    assert page.locator("#defects tbody tr").count() == len(m["per_defect"])
    assert not page.locator("#run-incomplete").count()
    page.screenshot(path=str(shots / "overview.png"))
    row.locator("a", has_text=CLASS).click()
    assert page.url.endswith(f"/c/{CLASS}")


def test_class_page_sorts_filters_and_loads_thumbnails_lazily(page, live, trained_run, shots):
    ids, scores, labels, vs, views, t, defects = scores_table(trained_run)
    page.goto(f"{live.url}/c/{CLASS}")
    assert page.locator("#count").inner_text() == str(len(ids))
    thumbs = page.locator("#objects img")
    assert thumbs.count() == 5 * len(views)  # page size 5 in the test server
    assert all(thumbs.nth(k).get_attribute("loading") == "lazy" for k in range(thumbs.count()))
    page.wait_for_function("() => [...document.querySelectorAll('#objects img')].slice(0, 3)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "class.png"))
    assert listed_ids(page) == [ids[i] for i in np.argsort(-scores, kind="stable")]

    cases = {
        "fp": [i for i in range(len(ids)) if labels[i] == 0 and scores[i] > t],
        "fn": [i for i in range(len(ids)) if labels[i] == 1 and scores[i] <= t],
    }
    assert cases["fp"] and cases["fn"], "the tiny run should have both kinds of error"
    for kind, expect in cases.items():
        page.goto(f"{live.url}/c/{CLASS}")
        page.select_option("select[name=filter]", kind)
        page.click("#filters button")
        page.wait_for_load_state("domcontentloaded")
        assert f"filter={kind}" in page.url
        assert sorted(listed_ids(page)) == sorted(ids[i] for i in expect)

    code = sorted(set(defects) - {"OK"})[0]
    page.goto(f"{live.url}/c/{CLASS}")
    page.select_option("select[name=defect]", code)
    page.click("#filters button")
    assert sorted(listed_ids(page)) == sorted(ids[i] for i in range(len(ids)) if defects[i] == code)

    deciding = vs.argmax(1)
    v = views[int(deciding[0])]
    page.goto(f"{live.url}/c/{CLASS}")
    page.select_option("select[name=view]", v)
    page.click("#filters button")
    assert sorted(listed_ids(page)) == sorted(ids[i] for i in range(len(ids)) if views[deciding[i]] == v)


def test_object_page_keyboard_navigation_overlay_and_outline(page, live, trained_run, shots):
    ids, scores, labels, vs, views, t, _ = scores_table(trained_run)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    anomalous = [i for i in order if labels[i] == 1]
    page.goto(f"{live.url}/c/{CLASS}/o/{order[0]}")
    seen = [page.locator("h1").inner_text()]
    for key in ["ArrowRight", "j"] * len(ids):
        if len(seen) == len(ids):
            break
        with page.expect_navigation():
            page.keyboard.press(key)
        seen.append(page.locator("h1").inner_text())
    assert seen == [ids[i] for i in order]
    assert page.locator("#next").is_hidden()  # the last object
    with page.expect_navigation():
        page.keyboard.press("ArrowLeft")
    assert page.locator("h1").inner_text() == ids[order[-2]]

    # keyboard navigation stays inside the filter
    page.goto(f"{live.url}/c/{CLASS}/o/{anomalous[0]}?filter=anomalous")
    with page.expect_navigation():
        page.keyboard.press("ArrowRight")
    assert page.locator("h1").inner_text() == ids[anomalous[1]]

    i = anomalous[0]
    page.goto(f"{live.url}/c/{CLASS}/o/{i}")
    assert page.locator("figure.view").count() == len(views)
    assert page.locator("#decided-by").inner_text() == views[int(vs[i].argmax())]
    assert page.locator("#decision").inner_text() == ("NG" if scores[i] > t else "OK")
    for k, v in enumerate(views):
        assert f"{vs[i, k]:.3f}" in page.locator(f"figure.view[data-view={v}] figcaption").inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('figure img')].every(i => i.complete && i.naturalWidth)")
    size = page.evaluate("() => [document.querySelector('img.base').naturalWidth, "
                         "document.querySelector('img.heat').naturalWidth]")
    assert size == [96, 96]  # full resolution of the 96 px test images, map upsampled to it
    page.screenshot(path=str(shots / "object.png"))
    page.fill("#opacity", "80")
    assert page.evaluate("() => getComputedStyle(document.querySelector('img.heat')).opacity") == "0.8"
    gt = page.locator("img.gt")
    assert gt.count() >= 1 and gt.first.is_visible()
    page.uncheck("#gt-toggle")
    assert gt.first.is_hidden()
    page.check("#gt-toggle")
    assert gt.first.is_visible()


def test_threshold_page_live_counts_match_python(page, live, trained_run, shots):
    ids, scores, labels, _, _, t0, _ = scores_table(trained_run)
    page.goto(f"{live.url}/c/{CLASS}/threshold")
    assert float(page.locator("#current").inner_text()) == pytest.approx(t0, abs=1e-4)
    s = np.sort(scores)
    for t in [t0, s[0] - 1, (s[2] + s[3]) / 2, (s[-2] + s[-1]) / 2, s[-1] + 1]:
        page.fill("#t-value", f"{t:.6f}")
        t = float(f"{t:.6f}")
        ng = scores > t
        want = {"fp": (ng & (labels == 0)).sum(), "fn": (~ng & (labels == 1)).sum(),
                "tp": (ng & (labels == 1)).sum(), "tn": (~ng & (labels == 0)).sum()}
        got = {k: int(page.locator(f"#{k}").inner_text()) for k in want}
        assert got == {k: int(v) for k, v in want.items()}, t
        assert float(page.locator("#fpr").inner_text()) == pytest.approx(want["fp"] / (labels == 0).sum(), abs=1e-3)
        assert float(page.locator("#tpr").inner_text()) == pytest.approx(want["tp"] / (labels == 1).sum(), abs=1e-3)
    page.fill("#t-value", f"{t0:.6f}")
    page.screenshot(path=str(shots / "threshold.png"))


def test_label_an_object_and_read_it_back_from_sqlite(page, live, trained_run):
    ids, *_ = scores_table(trained_run)
    page.goto(f"{live.url}/c/{CLASS}/o/2")
    page.check("input[name=label][value=false_alarm]")
    page.fill("#label-form input[name=who]", "inspector A")
    page.fill("#label-form input[name=note]", "reflection on C3, not a scratch")
    page.click("#label-form button")
    page.wait_for_function("() => document.getElementById('label-status').textContent === 'saved'")
    assert page.locator("#current-label").inner_text() == "false alarm"
    con = sqlite3.connect(trained_run / "review" / "labels.sqlite")
    rows = con.execute("SELECT category, sample_id, label, note, who FROM labels").fetchall()
    con.close()
    assert (CLASS, ids[2], "false_alarm", "reflection on C3, not a scratch", "inspector A") in rows
    page.reload()
    assert page.locator("#current-label").inner_text() == "false alarm"
    assert page.locator("input[name=label][value=false_alarm]").is_checked()
    text = httpx.get(f"{live.url}/labels.csv").text
    assert f"{CLASS},{ids[2]},false_alarm" in text


def _png(size: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_try_a_part_upload_and_sample_pick(page, live, trained_run, tmp_path, shots):
    from multiflow.engine.predict import Predictor
    from multiflow.data.images import read_image_array

    ids, scores, *_ = scores_table(trained_run)
    samples = json.loads((trained_run / CLASS / "samples.json").read_text())["samples"]
    views = json.loads((trained_run / CLASS / "model.json").read_text())["view_names"]
    page.goto(f"{live.url}/c/{CLASS}/try")
    for v, p in zip(views, samples[0]["image_paths"]):
        page.set_input_files(f"input[name={v}]", p)
    with page.expect_navigation():
        page.click("#upload button")
    pred = Predictor(trained_run / CLASS)
    import torch

    imgs = torch.from_numpy(np.stack([read_image_array(p)[0] for p in samples[0]["image_paths"]]))
    want = pred.predict(imgs, views)
    assert page.locator("#try-decision").inner_text() == want.decision
    assert float(page.locator("#try-score").inner_text()) == pytest.approx(want.sample_score, abs=1e-3)
    # the predictor `serve` uses agrees with `multiflow test` (JPEG decoders differ by a few 1e-5 relative)
    assert want.sample_score == pytest.approx(scores[0], rel=1e-4)
    page.screenshot(path=str(shots / "try.png"))

    page.select_option("#pick select", "3")
    with page.expect_navigation():
        page.click("#pick button")
    assert float(page.locator("#try-score").inner_text()) == pytest.approx(scores[3], rel=1e-4)

    big = tmp_path / "big.png"
    big.write_bytes(_png(400, 1))  # ~480 kB, over the test server's 300 kB limit
    page.goto(f"{live.url}/c/{CLASS}/try")
    for v in views:
        page.set_input_files(f"input[name={v}]", str(big))
    with page.expect_navigation() as nav:
        page.click("#upload button")
    assert nav.value.status == 413
    assert "over the limit" in page.locator(".error").inner_text()

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.goto(f"{live.url}/c/{CLASS}/try")
    for v in views:
        page.set_input_files(f"input[name={v}]", str(bad))
    with page.expect_navigation() as nav:
        page.click("#upload button")
    assert nav.value.status == 400
    assert "not a readable image" in page.locator(".error").inner_text()


def test_unknown_pages_are_clear_404s_and_paths_cannot_leave_the_run(page, live, trained_run):
    for path, words in [(f"/c/nope", "no class 'nope'"), (f"/c/{CLASS}/o/999", "no test object #999"),
                        (f"/c/{CLASS}?page=9", "page 9 does not exist"),
                        (f"/img/{CLASS}/0/7/thumb.jpg", "no view #7"), ("/nowhere", "no page at /nowhere")]:
        resp = page.goto(live.url + path)
        assert resp.status == 404, path
        assert words in page.locator(".error").inner_text(), path
    (trained_run / "escape").symlink_to("/etc")
    try:
        for raw in ["/files/%2e%2e/%2e%2e/%2e%2e/etc/hostname", "/files/..%2F..%2F..%2Fetc%2Fhostname",
                    "/files/escape/hostname", "/files/%2Fetc%2Fhostname"]:
            r = httpx.get(live.url + raw)
            assert r.status_code == 404, raw
            assert "hostname" not in r.text or "outside the run folder" in r.text or "no file" in r.text
        r = httpx.get(live.url + "/files/escape/hostname")
        assert "outside the run folder" in r.text
        assert httpx.get(live.url + f"/files/{CLASS}/scores.csv").status_code == 200
    finally:
        (trained_run / "escape").unlink()


def test_apply_threshold_in_the_browser_then_predict_uses_it(page, live, trained_run):
    from multiflow.engine.predict import Predictor
    from multiflow.review.store import apply_threshold

    ids, scores, labels, _, _, t0, _ = scores_table(trained_run)
    s = np.sort(scores)
    t_new = float(f"{(s[-3] + s[-2]) / 2:.6f}")
    try:
        page.goto(f"{live.url}/c/{CLASS}/threshold")
        page.fill("#t-value", str(t_new))
        page.fill("#apply-form input[name=who]", "line engineer")
        page.fill("#apply-form input[name=reason]", "fewer false alarms")
        page.click("#apply-form button")
        page.wait_for_function("() => document.getElementById('apply-status').textContent.startsWith('applied')")
        meta = json.loads((trained_run / CLASS / "model.json").read_text())
        assert meta["threshold"]["value"] == pytest.approx(t_new)
        rec = meta["threshold"]["audit"][-1]
        assert rec["previous"] == pytest.approx(t0) and rec["who"] == "line engineer"
        assert rec["reason"] == "fewer false alarms" and rec["when"].endswith("Z")
        pred = Predictor(trained_run / CLASS)
        assert pred.threshold == pytest.approx(t_new)
        page.goto(f"{live.url}/c/{CLASS}?filter=ng")
        assert int(page.locator("#count").inner_text()) == int((scores > t_new).sum()) == 2
    finally:
        apply_threshold(trained_run / CLASS, t0, who="test", reason="restore")
