"""Page-load and scrolling times of ``multiflow review`` at Real-IAD test-set size.

A synthetic tested run (``synthetic_run`` of ``tests/review/review_helpers.py``, the review tests'
helper: 1,000 objects x 5 views, ``--image-size`` px JPEG views, 16 x 16 maps; no training) is
served by the review app (uvicorn, in this process) and driven by Debian's headless ``chromium``
through Playwright. Measured:

- class page, server: wall time of ``GET /c/<class>`` (HTML of one page of ``--page-size`` objects),
  median of ``--repeats`` requests; also with all 1,000 objects on one page;
- class page, browser: DOMContentLoaded and first contentful paint (Navigation/Paint Timing);
- scrolling: every page of the class from top to bottom one viewport at a time, waiting at each
  step until the thumbnails in view are decoded: cold (thumbnails generated on demand) and warm
  (served from the run's cache);
- object page: DOMContentLoaded and the load event (all 5 views, overlays and outlines decoded),
  cold and warm, median over ``--objects`` objects.

    .venv/bin/python benchmarks/bench_review.py              # writes the "review" section
    .venv/bin/python benchmarks/bench_review.py --quick      # smoke check (200 objects, no report)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "review"))  # review_helpers

from _report import CpuShare, machine_line, peak_rss_mb, update_section
from review_helpers import LiveServer as Server, synthetic_run  # the review tests' helpers


NAV = """() => { const n = performance.getEntriesByType('navigation')[0];
  const p = performance.getEntriesByName('first-contentful-paint')[0];
  return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, fcp: p ? p.startTime : null}; }"""
VISIBLE_LOADED = """() => [...document.querySelectorAll('#objects img')].filter(i => {
  const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; })
  .every(i => i.complete && i.naturalWidth > 0)"""


def scroll_class(page, url: str) -> tuple[float, int]:
    """Seconds to walk every page of the class listing top to bottom; returns (seconds, pages)."""
    t0, pages = time.perf_counter(), 0
    while url:
        page.goto(url)
        pages += 1
        while True:
            page.wait_for_function(VISIBLE_LOADED, polling=20, timeout=120_000)
            done = page.evaluate("() => innerHeight + scrollY >= document.body.scrollHeight - 2")
            if done:
                break
            page.evaluate("() => scrollBy(0, innerHeight)")
        nxt = page.locator("#pager a", has_text="next")
        url = page.url.split("/c/")[0] + nxt.get_attribute("href") if nxt.count() else ""
    return time.perf_counter() - t0, pages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=1000, dest="n_objects")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-objects", type=int, default=5, dest="objects")
    ap.add_argument("--quick", action="store_true", help="200 objects, 1 repeat, no BENCHMARKS.md update")
    args = ap.parse_args()
    if args.quick:
        args.n_objects, args.repeats, args.objects = 200, 1, 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("Debian's chromium is needed: bash scripts/ensure_chromium.sh", file=sys.stderr)
        return 2
    import httpx
    from playwright.sync_api import sync_playwright

    from multiflow.review.app import ReviewSettings, create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        with CpuShare() as cpu:
            t0 = time.perf_counter()
            run = synthetic_run(tmp / "run", n_objects=args.n_objects, image_size=args.image_size)
            t_make = time.perf_counter() - t0
            srv = Server(lambda h, p: create_app(run, settings=ReviewSettings(page_size=args.page_size), host=h, port=p))
            one = Server(lambda h, p: create_app(run, settings=ReviewSettings(page_size=args.n_objects), host=h, port=p))
            cls = f"{srv.url}/c/widget"
            httpx.get(cls, timeout=60)  # loads the class (scores, maps index) once
            res: dict[str, float] = {}
            for key, url in (("server_page", cls), ("server_all", f"{one.url}/c/widget")):
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    r = httpx.get(url, timeout=60)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200
                res[key] = statistics.median(times)
                res[key + "_kb"] = len(r.content) / 1024
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                for key, url in (("page", cls), ("all", f"{one.url}/c/widget")):
                    nav = []
                    for _ in range(args.repeats):
                        page.goto(url, wait_until="domcontentloaded")
                        page.wait_for_timeout(50)
                        nav.append(page.evaluate(NAV))
                    res[f"dcl_{key}"] = statistics.median(n["dcl"] for n in nav) / 1000
                    res[f"fcp_{key}"] = statistics.median((n["fcp"] or 0) for n in nav) / 1000
                res["scroll_cold"], res["pages"] = scroll_class(page, cls)
                res["scroll_warm"], _ = scroll_class(page, cls)
                objs = [int(round(i)) for i in [k * (args.n_objects - 1) / max(1, args.objects - 1)
                                                for k in range(args.objects)]]
                for key in ("cold", "warm"):
                    nav = []
                    for i in objs:
                        page.goto(f"{cls}/o/{i}", wait_until="load")
                        nav.append(page.evaluate(NAV))
                    res[f"obj_dcl_{key}"] = statistics.median(n["dcl"] for n in nav) / 1000
                    res[f"obj_load_{key}"] = statistics.median(n["load"] for n in nav) / 1000
                browser.close()
            srv.stop()
            one.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n, v = args.n_objects, 5
    lines = [
        "## Review app (`multiflow review`): page load and scrolling",
        "",
        f"`benchmarks/bench_review.py`: a synthetic tested run of {n} objects x {v} views ({args.image_size} px "
        f"JPEG views, 16 x 16 maps; written in {t_make:.1f} s), served by the review app in-process (uvicorn) and "
        f"driven by Debian's headless chromium (Playwright), 1280 x 800 viewport, {args.page_size} objects per "
        f"page (each row: {v} lazy thumbnails). Medians of {args.repeats} loads.",
        "",
        "| measurement | time |",
        "|---|---:|",
        f"| class page, server (`GET`, {args.page_size} objects, {res['server_page_kb']:.0f} KiB HTML) | "
        f"{1000 * res['server_page']:.1f} ms |",
        f"| class page, browser DOMContentLoaded / first contentful paint | {1000 * res['dcl_page']:.0f} ms / "
        f"{1000 * res['fcp_page']:.0f} ms |",
        f"| all {n} objects on one page, server ({res['server_all_kb']:.0f} KiB HTML) | {1000 * res['server_all']:.1f} ms |",
        f"| all {n} objects on one page, browser DOMContentLoaded / first paint | {1000 * res['dcl_all']:.0f} ms / "
        f"{1000 * res['fcp_all']:.0f} ms |",
        f"| scroll through all {n} objects ({res['pages']} pages, {n * v} thumbnails), cold (generated on demand) "
        f"| {res['scroll_cold']:.1f} s |",
        f"| the same, warm (thumbnails cached in the run folder) | {res['scroll_warm']:.1f} s |",
        f"| object page ({v} full-size views + overlays), DOMContentLoaded / all pictures, cold | "
        f"{1000 * res['obj_dcl_cold']:.0f} ms / {1000 * res['obj_load_cold']:.0f} ms |",
        f"| object page, warm | {1000 * res['obj_dcl_warm']:.0f} ms / {1000 * res['obj_load_warm']:.0f} ms |",
        "",
        f"CPU share of this process (server + benchmark, not the browser): {100 * cpu.share:.0f} % of "
        f"{cpu.cores} cores over {cpu.wall:.0f} s; peak RSS {peak_rss_mb():.0f} MiB. {machine_line()}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        update_section("review", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
