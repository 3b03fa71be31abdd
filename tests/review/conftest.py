"""Fixtures of the review tests: ONE tiny trained and tested run per session, a live server on it,
and a headless Chromium (Debian's ``chromium`` package, found with ``shutil.which``).

The run: the synthetic Real-IAD-format data set (5 views, 96 px, 4 normal + 5 defective test
objects), a 2-block flow of hidden width 8 trained for 2 epochs, then ``multiflow test``.
Screenshots go to ``$MULTIFLOW_REVIEW_SCREENSHOTS`` (``docs/review`` for the README's pictures)
or a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from review_helpers import LiveServer

CLASS = "toy_brick"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    from multiflow import api
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("review")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=6, n_test_good=4, n_test_defect=5, size=96, seed=5,
                     progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{CLASS}]", "data.resolution=96", "features.input_size=96",
        f"features.cache_dir={root / 'cache'}", "model.hidden=8", "model.n_blocks=2", "model.kernel_sizes=[3,3]",
        "train.epochs=2", "train.batch_size=2", "train.lr=0.001", f"out={root / 'results'}", "name=run",
        "eval.pictures=false",
        "eval.image_score=max",  # the tests compare view scores with the maps' maxima
        # a threshold inside the tiny run's scores (the highest of its 2 calibration objects), so that
        # it has false alarms and misses to review; the default 1 % target puts it far above them
        "threshold.false_reject=0.5", "threshold.confidence=0.5",
    ]
    run_dir = api.fit(overrides=overrides, progress=False)
    api.evaluate(run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def live(trained_run):
    from multiflow.review.app import ReviewSettings, create_app

    settings = ReviewSettings(page_size=5, max_upload_bytes=300_000)
    srv = LiveServer(lambda host, port: create_app(trained_run, settings=settings, host=host, port=port))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it: scripts/ensure_chromium.sh)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    p = ctx.new_page()
    p.set_default_timeout(15_000)
    yield p
    ctx.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("MULTIFLOW_REVIEW_SCREENSHOTS")
    folder = Path(out) if out else tmp_path_factory.mktemp("shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
