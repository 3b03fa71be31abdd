"""The review app under attack and under load, on a synthetic tested run (no training).

Another web page in the user's browser and another local user can reach the app's port: state
changes need the session token, a same-origin request and JSON; every request needs this server's
Host. Plus: concurrent threshold writes keep every audit record, blocking work stays out of the
event loop, errors name no absolute server path, an oversized image is a 413, and the decisions
the pages count are those of ``predict`` (camera faults included).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sqlite3
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from review_helpers import HOST, PORT, LiveServer, client, synthetic_run, token_of

from multiflow.review.store import apply_threshold

CLASS = "widget"
ORIGIN = f"http://{HOST}:{PORT}"


@pytest.fixture()
def fake_run(tmp_path):
    return synthetic_run(tmp_path / "fake", n_objects=40, n_views=3, image_size=32, grid=4, seed=4)


def state(run: Path) -> tuple[float, int, int]:
    """(threshold, number of audit records, number of label rows) of the run."""
    meta = json.loads((run / CLASS / "model.json").read_text())
    db = run / "review" / "labels.sqlite"
    con = sqlite3.connect(db)
    n = con.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    con.close()
    return meta["threshold"]["value"], len(meta["threshold"]["audit"]), n


THRESHOLD = {"value": 99.0, "who": "attacker", "reason": "every defect passes"}
LABEL = {"index": 0, "label": "false_alarm", "who": "someone else", "note": "forged"}


def test_state_changes_need_the_session_token(fake_run):
    c = client(fake_run)
    before = state(fake_run)
    for headers in [{"Origin": ORIGIN}, {"Origin": ORIGIN, "X-Review-Token": "guess"},
                    {"Origin": ORIGIN, "X-Review-Token": c.token[:-1]}, {"X-Review-Token": ""}]:
        for url, body in [(f"/api/{CLASS}/threshold", THRESHOLD), (f"/api/{CLASS}/label", LABEL)]:
            r = c.post(url, json=body, headers=headers)
            assert r.status_code == 403, (url, headers)
            assert "review token" in r.json()["detail"]
    assert state(fake_run) == before
    # the token is per app: another instance's token does not open this one
    other = client(fake_run)
    assert other.token != c.token
    assert c.post(f"/api/{CLASS}/label", json=LABEL, headers={"X-Review-Token": other.token}).status_code == 403
    # with the page's token the same requests work
    assert c.post(f"/api/{CLASS}/label", json=LABEL, headers=c.api_headers).status_code == 200
    r = c.post(f"/api/{CLASS}/threshold", json=THRESHOLD | {"who": "line engineer"}, headers=c.api_headers)
    assert r.status_code == 200
    assert state(fake_run) == (99.0, before[1] + 1, before[2] + 1)


def test_every_page_carries_the_token_and_every_post_route_checks_it(fake_run):
    c = client(fake_run)
    for url in ["/", f"/c/{CLASS}", f"/c/{CLASS}/o/0", f"/c/{CLASS}/threshold", f"/c/{CLASS}/try"]:
        assert token_of(c.get(url).text) == c.token, url
    # error pages carry none (a refused DNS-rebinding page may read the answer to its request)
    for r in [c.get("/c/nope"), c.get("/", headers={"Host": f"evil.example:{PORT}"}),
              c.post(f"/api/{CLASS}/label", json=LABEL, headers={"Origin": "http://evil.example"})]:
        assert r.status_code in (400, 403, 404) and c.token not in r.text
    assert f'<input type="hidden" name="token" value="{c.token}">' in c.get(f"/c/{CLASS}/try").text
    from multiflow.review.routes import router  # every route of the app (the app mounts only this router)

    posts = [route.path for route in router.routes if "POST" in getattr(route, "methods", ())]
    assert sorted(posts) == ["/api/{name}/label", "/api/{name}/threshold", "/c/{name}/try"]
    before = state(fake_run)
    for path in posts:
        url = path.replace("{name}", CLASS)
        if url.endswith("/try"):  # a form post: the token is a form field
            r = c.post(url, files={"C1": ("a.png", _png(8, 8))}, headers={"Origin": ORIGIN})
        else:
            r = c.post(url, json=THRESHOLD | LABEL, headers={"Origin": ORIGIN})
        assert r.status_code == 403 and "review token" in r.text, url
    assert state(fake_run) == before


def test_foreign_origins_and_referers_are_refused(fake_run):
    c = client(fake_run)
    before = state(fake_run)
    h = {"X-Review-Token": c.token}
    for bad in [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://{HOST}:{PORT + 1}"},
                {"Origin": f"https://{HOST}:{PORT}"}, {"Referer": "http://evil.example/page.html"},
                {"Origin": "http://evil.example", "Referer": f"{ORIGIN}/c/{CLASS}/threshold"}]:
        for url, body in [(f"/api/{CLASS}/threshold", THRESHOLD), (f"/api/{CLASS}/label", LABEL)]:
            r = c.post(url, json=body, headers=h | bad)
            assert r.status_code == 403 and "cross-origin request refused" in r.json()["detail"], bad
    assert state(fake_run) == before
    r = c.post(f"/api/{CLASS}/label", json=LABEL, headers=h | {"Referer": f"{ORIGIN}/c/{CLASS}/o/0"})
    assert r.status_code == 200  # a same-origin Referer without Origin
    for ok in ["http://localhost:8765", "http://[::1]:8765"]:  # the other names of a loopback bind
        assert c.post(f"/api/{CLASS}/label", json=LABEL, headers=h | {"Origin": ok}).status_code == 200


def test_host_headers_not_naming_this_server_are_refused(fake_run):
    c = client(fake_run)
    before = state(fake_run)
    for host in ["evil.example", f"evil.example:{PORT}", f"{HOST}:{PORT + 1}", f"rebind.{HOST}.nip.io:{PORT}", ""]:
        r = c.get("/", headers={"Host": host})
        assert r.status_code == 400 and "is not this review server" in r.text, host
        r = c.post(f"/api/{CLASS}/threshold", json=THRESHOLD, headers=c.api_headers | {"Host": host})
        assert r.status_code == 400 and "Host header" in r.json()["detail"], host
        assert c.get("/labels.csv", headers={"Host": host}).status_code == 400
    assert state(fake_run) == before
    for host in [f"localhost:{PORT}", f"LOCALHOST:{PORT}", f"[::1]:{PORT}"]:
        assert c.get("/", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_follow_the_bind_address():
    from multiflow.review.security import allowed_hosts

    assert allowed_hosts("127.0.0.1", 8765) == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert allowed_hosts("::1", 80) == {"127.0.0.1:80", "localhost:80", "[::1]:80"}
    assert allowed_hosts("192.168.1.7", 9000) == {"192.168.1.7:9000"}
    assert allowed_hosts("192.168.1.7", 9000, ["inspect.lan"]) == {"192.168.1.7:9000", "inspect.lan:9000"}
    wild = allowed_hosts("0.0.0.0", 8765, ["Line3-PC"])
    assert {"127.0.0.1:8765", "localhost:8765", "line3-pc:8765"} <= wild
    assert not any(h.startswith(("0.0.0.0", ":")) for h in wild)


def test_json_endpoints_take_only_application_json(fake_run):
    c = client(fake_run)
    before = state(fake_run)
    body = json.dumps(THRESHOLD)
    for ctype in ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None]:
        headers = c.api_headers | ({"Content-Type": ctype} if ctype else {})
        r = c.post(f"/api/{CLASS}/threshold", content=body.encode(), headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["detail"], ctype
    r = c.post(f"/api/{CLASS}/threshold", data={"value": "99", "who": "x"}, headers=c.api_headers)
    assert r.status_code == 415
    r = c.post(f"/api/{CLASS}/label", files={"index": (None, "0"), "label": (None, "unsure")}, headers=c.api_headers)
    assert r.status_code == 415
    assert state(fake_run) == before
    r = c.post(f"/api/{CLASS}/threshold", content=body.encode(),
               headers=c.api_headers | {"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_threshold_writes_under_contention_keep_every_audit_record(fake_run):
    folder = fake_run / CLASS
    n_before = len(json.loads((folder / "model.json").read_text())["threshold"]["audit"])
    n, rounds = 8, 5
    barrier = threading.Barrier(n)
    errors = []

    def writer(k: int) -> None:
        try:
            for j in range(rounds):
                barrier.wait()
                apply_threshold(folder, 1.0 + k + j / 10, who=f"w{k}", reason=f"round {j}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    meta = json.loads((folder / "model.json").read_text())
    new = meta["threshold"]["audit"][n_before:]
    assert sorted((a["who"], a["reason"]) for a in new) == sorted(
        (f"w{k}", f"round {j}") for k in range(n) for j in range(rounds))
    # a chain: every record's `previous` is the value the record before it set
    assert all(b["previous"] == a["value"] for a, b in zip(new, new[1:]))
    assert meta["threshold"]["value"] == new[-1]["value"]


def test_threshold_writes_from_processes_keep_every_audit_record(fake_run):
    import multiprocessing as mp

    folder = fake_run / CLASS
    n_before = len(json.loads((folder / "model.json").read_text())["threshold"]["audit"])
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_thresholds, args=(str(folder), k, 6)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    new = json.loads((folder / "model.json").read_text())["threshold"]["audit"][n_before:]
    assert len(new) == 24 and len({(a["who"], a["reason"]) for a in new}) == 24


def _write_thresholds(folder: str, k: int, rounds: int) -> None:
    for j in range(rounds):
        apply_threshold(folder, 2.0 + k + j / 10, who=f"p{k}", reason=f"round {j}")


def test_blocking_work_runs_outside_the_event_loop(fake_run, monkeypatch):
    """SQLite, run files and image decoding are called from worker threads, never on the loop."""
    import multiflow.deploy.serve as serve
    from multiflow.review.labels import LabelStore
    from multiflow.review.store import RunStore

    calls: list[tuple[str, bool]] = []

    def watch(owner, name):
        original = getattr(owner, name)

        def wrapped(*a, **kw):
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            calls.append((name, on_loop))
            return original(*a, **kw)

        monkeypatch.setattr(owner, name, wrapped)

    for owner, name in [(RunStore, "get"), (LabelStore, "add"), (LabelStore, "current"), (LabelStore, "history"),
                        (LabelStore, "to_csv"), (serve, "collect_views")]:
        watch(owner, name)
    c = client(fake_run)
    for url in ["/", f"/c/{CLASS}", f"/c/{CLASS}/o/0", f"/c/{CLASS}/threshold", "/labels.csv",
                f"/img/{CLASS}/0/0/thumb.jpg"]:
        assert c.get(url).status_code == 200, url
    assert c.post(f"/api/{CLASS}/label", json=LABEL, headers=c.api_headers).status_code == 200
    assert c.post(f"/api/{CLASS}/threshold", json=THRESHOLD, headers=c.api_headers).status_code == 200
    r = c.post(f"/c/{CLASS}/try", data={"token": c.token}, headers={"Origin": ORIGIN},
               files=[(v, ("x.png", b"not an image")) for v in ("C1", "C2", "C3")])
    assert r.status_code == 400 and "not a readable image" in r.text
    names = {n for n, _ in calls}
    assert {"get", "add", "current", "history", "to_csv", "collect_views"} <= names
    assert [n for n, on_loop in calls if on_loop] == []


def _png(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` RGB pixels, with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * width + 1)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [6_000, 40_000])  # over our limit; over Pillow's own (decompression bomb) limit
def test_oversized_images_are_413_naming_the_limit(fake_run, side):
    from multiflow.review.app import ReviewSettings

    c = client(fake_run, settings=ReviewSettings(max_image_pixels=25_000_000))
    bomb = _png(side, side)
    assert len(bomb) < 300_000
    r = c.post(f"/c/{CLASS}/try", data={"token": c.token}, headers={"Origin": ORIGIN},
               files=[(v, (f"{v}.png", bomb)) for v in ("C1", "C2", "C3")])
    assert r.status_code == 413, r.text
    msg = re.search(r'<p class="error">(.*?)</p>', r.text).group(1)
    assert "more than 25000000 pixels" in msg and "DOS attack" not in msg and "could be" not in msg


def _no_server_paths(text: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in text
    assert not re.search(r"/(tmp|home|root|work|var|usr)/", text), text


def test_errors_name_no_absolute_server_paths(fake_run, tmp_path):
    c = client(fake_run, raise_server_exceptions=False)
    real = Path(str(fake_run)).resolve()
    (fake_run / "_images" / "view1.jpg").unlink()  # a view image of every object is gone
    r = c.get(f"/c/{CLASS}/try?sample=0")
    assert r.status_code == 500 and "view1.jpg" in r.text
    _no_server_paths(r.text, tmp_path, real)
    (fake_run / CLASS / "scores.csv").write_text("what,ever\n1,2\n")
    for r in [c.post(f"/api/{CLASS}/label", json=LABEL, headers=c.api_headers),
              c.post(f"/api/{CLASS}/threshold", json=THRESHOLD, headers=c.api_headers)]:
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert detail.startswith(f"{CLASS}/scores.csv: not a scores.csv of `multiflow test`"), detail
        _no_server_paths(detail, tmp_path, real)
    r = c.get(f"/c/{CLASS}")
    assert r.status_code == 500 and f"{CLASS}/scores.csv: not a scores.csv" in r.text
    _no_server_paths(r.text, tmp_path, real)
    (fake_run / CLASS / "model.json").write_text("{broken")
    r = c.post(f"/api/{CLASS}/label", json=LABEL, headers=c.api_headers)
    assert r.status_code == 400 and "model.json" in r.json()["detail"]
    _no_server_paths(r.json()["detail"], tmp_path, real)


def _with_camera_faults(run: Path, faulty: dict[int, str]) -> list[dict[str, str]]:
    """Add ``predict``'s ``camera_faults`` column to the run's scores.csv (row -> "view: fault")."""
    path = run / CLASS / "scores.csv"
    rows = list(csv.DictReader(open(path, newline="")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*rows[0], "camera_faults"])
    w.writeheader()
    for i, r in enumerate(rows):
        w.writerow(r | {"camera_faults": faulty.get(i, "")})
    path.write_text(buf.getvalue())
    return rows


def test_counts_and_decisions_are_those_of_predict_with_camera_faults(fake_run):
    from multiflow.faults import CameraFault
    from multiflow.faults import decide_object as decide

    meta = json.loads((fake_run / CLASS / "model.json").read_text())
    t = meta["threshold"]["value"]
    rows = list(csv.DictReader(open(fake_run / CLASS / "scores.csv", newline="")))
    scores = np.array([float(r["sample_score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    # a fault on a normal object above the threshold and on an anomalous one below it
    fp = int(np.flatnonzero((labels == 0) & (scores > t))[0])
    fn = int(np.flatnonzero((labels == 1) & (scores <= t))[0])
    ng = int(np.flatnonzero((labels == 1) & (scores > t))[0])
    faulty = {fp: "C2: blackout", fn: "C1: frozen; C3: blur", ng: "C1: blur"}
    _with_camera_faults(fake_run, faulty)
    want = [decide(scores[i], t, [CameraFault(view="C1", fault="x", reason="")] if i in faulty else [])[0]
            for i in range(len(rows))]
    assert {want[i] for i in faulty} == {"CHECK CAMERA"}
    c = client(fake_run)
    n_fp = sum(1 for i, d in enumerate(want) if d == "NG" and labels[i] == 0)
    n_fn = sum(1 for i, d in enumerate(want) if d == "OK" and labels[i] == 1)
    row = re.search(r"<tr><td><a href=\"/c/widget\">widget</a>.*?</tr>", c.get("/").text).group(0)
    assert f'?filter=fp">{n_fp}</a> / <a href="/c/{CLASS}?filter=fn">{n_fn}</a>' in row
    assert "3 check camera" in row
    page = c.get(f"/c/{CLASS}?filter=all").text
    shown = dict(re.findall(r'data-index="(\d+)">.*?<td class="decision [a-z-]+">([A-Z ]+)</td>', page))
    assert {int(i): d for i, d in shown.items()} == {i: want[i] for i in map(int, shown)}
    assert len(shown) == min(100, len(rows))
    camera = re.findall(r'data-index="(\d+)"', c.get(f"/c/{CLASS}?filter=camera").text)
    assert sorted(map(int, camera)) == sorted(faulty)
    assert str(fp) not in re.findall(r'data-index="(\d+)"', c.get(f"/c/{CLASS}?filter=fp").text)
    obj = c.get(f"/c/{CLASS}/o/{fn}").text
    assert 'class="decision check-camera">CHECK CAMERA</b>' in obj and "C1: frozen; C3: blur" in obj
    data = json.loads(re.search(r'id="page-data">(.*?)</script>', c.get(f"/c/{CLASS}/threshold").text).group(1))
    judged = [i for i in range(len(rows)) if i not in faulty]
    assert sorted(data["normal"]) == sorted(scores[[i for i in judged if labels[i] == 0]].tolist())
    assert sorted(data["anomalous"]) == sorted(scores[[i for i in judged if labels[i] == 1]].tolist())
    assert data["camera_checks"] == 3
    # `multiflow test --labels` re-evaluates with the same decisions
    from multiflow.review.reevaluate import reevaluate_class
    from multiflow.review.store import RunStore

    res = reevaluate_class(RunStore(fake_run).get(CLASS), {})["ground_truth"]
    assert (res["false_positives"], res["false_negatives"], res["check_camera"]) == (n_fp, n_fn, 3)


def test_a_stored_check_camera_decision_without_details_is_a_camera_check(fake_run):
    from multiflow.review.store import RunStore

    path = fake_run / CLASS / "scores.csv"
    rows = list(csv.DictReader(open(path, newline="")))
    rows[5]["decision"] = "CHECK CAMERA"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
    d = RunStore(fake_run).get(CLASS)
    assert np.flatnonzero(d.check_camera).tolist() == [5]
    assert d.counts()["check_camera"] == 1 and not d.decisions[5] and not d.passed[5]


def test_threshold_page_shows_the_estimate_and_its_warnings(fake_run):
    path = fake_run / CLASS / "model.json"
    meta = json.loads(path.read_text())
    meta["threshold"]["quantile"] = 0.99
    meta["threshold_warnings"] = ["only 12 held-out normal objects: the 1% target cannot be checked",
                                  "suspected outliers: S00003 <b>"]
    path.write_text(json.dumps(meta))
    c = client(fake_run)
    page = c.get(f"/c/{CLASS}/threshold").text
    warnings = re.search(r'<ul class="notice" id="threshold-warnings">(.*?)</ul>', page).group(1)
    from multiflow.engine.bundle import read_bundle

    own = list(read_bundle(fake_run / CLASS).threshold.warnings)  # the estimate's own (here: no stated target)
    assert own and re.findall(r"<li>(.*?)</li>", warnings) == [*own,
        "only 12 held-out normal objects: the 1% target cannot be checked", "suspected outliers: S00003 &lt;b&gt;"]
    estimate = re.search(r'<p id="threshold-estimate">(.*?)</p>', page).group(1)
    assert "quantile <b>0.99</b>" in estimate and "source <b>synthetic run (no trained flow)</b>" in estimate
    del meta["threshold_warnings"]
    path.write_text(json.dumps(meta))
    page = c.get(f"/c/{CLASS}/threshold").text
    warnings = re.search(r'<ul class="notice" id="threshold-warnings">(.*?)</ul>', page).group(1)
    assert re.findall(r"<li>(.*?)</li>", warnings) == own


# ------------------------------------------------------------------------------- in a browser
@pytest.fixture()
def served_fake(fake_run):
    from multiflow.review.app import create_app

    srv = LiveServer(lambda host, port: create_app(fake_run, host=host, port=port))
    yield srv
    srv.stop()


@pytest.fixture()
def evil_site():
    """Another origin (another port of 127.0.0.1) serving the attacker's pages, set by the test."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    pages: dict[str, str] = {}

    async def serve_page(request):
        return HTMLResponse(pages[request.path_params["name"]])

    srv = LiveServer(lambda host, port: Starlette(routes=[Route("/{name}", serve_page)]))
    srv.pages = pages
    yield srv
    srv.stop()


def _text_plain_form(action: str, body: dict) -> str:
    """An auto-submitting form whose ``text/plain`` body is the JSON ``body`` (``name=value``)."""
    text = json.dumps(body | {"pad": "PAD"})
    name, value = text.split("PAD")
    return (f'<!doctype html><form method="post" enctype="text/plain" action="{action}">'
            f"<input type=\"hidden\" name='{name}' value='{value}'></form>"
            "<script>addEventListener('load', () => document.forms[0].submit())</script>")


def test_a_cross_site_form_post_is_refused_in_the_browser(page, served_fake, evil_site, fake_run):
    live = served_fake.url
    before = state(fake_run)
    assert evil_site.url != live  # another origin: same host, another port
    evil_site.pages["threshold"] = _text_plain_form(f"{live}/api/{CLASS}/threshold", THRESHOLD)
    evil_site.pages["label"] = _text_plain_form(f"{live}/api/{CLASS}/label", LABEL)
    evil_site.pages["fetch"] = (
        "<!doctype html><script>fetch(" + json.dumps(f"{live}/api/{CLASS}/threshold") + ", {method: 'POST', "
        "mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: " + json.dumps(json.dumps(THRESHOLD))
        + "}).then(() => document.title = 'sent', () => document.title = 'failed')</script>")
    for name in ["threshold", "label"]:
        with page.expect_navigation(url=f"{live}/api/**") as nav:
            page.goto(f"{evil_site.url}/{name}", wait_until="commit")
        assert nav.value.status == 403, name
        assert "cross-origin request refused" in page.content()
    page.goto(f"{evil_site.url}/fetch")
    page.wait_for_function("() => document.title === 'sent' || document.title === 'failed'")
    assert state(fake_run) == before  # threshold, audit trail and labels untouched
    # the app's own page still applies a threshold (its script sends the token, same origin, JSON)
    page.goto(f"{live}/c/{CLASS}/threshold")
    page.fill("#t-value", "1.25")
    page.fill("#apply-form input[name=who]", "line engineer")
    page.click("#apply-form button")
    page.wait_for_function("() => document.getElementById('apply-status').textContent.startsWith('applied')")
    assert state(fake_run)[:2] == (1.25, before[1] + 1)


def test_review_command_passes_allowed_host_names(fake_run, monkeypatch):
    import multiflow.review.app as app_module
    from multiflow.cli import main
    from multiflow.review.security import allowed_hosts

    seen = {}
    monkeypatch.setattr(app_module, "serve_review", lambda run, **kw: seen.update(kw))
    assert main(["review", str(fake_run), "--host", "0.0.0.0", "--port", "9000", "--allow-host", "inspect.lan",
                 "--allow-host", "10.0.0.5"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 9000
    assert seen["settings"].allow_hosts == ("inspect.lan", "10.0.0.5")
    hosts = allowed_hosts(seen["host"], seen["port"], seen["settings"].allow_hosts)
    assert {"inspect.lan:9000", "10.0.0.5:9000", "localhost:9000"} <= hosts
