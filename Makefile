# multiflow: set-up, tests and the end-to-end demo.  Every target installs what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench clean chromium review-screenshots

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	# ADEval (official evaluator, test-only oracle) declares opencv-python, which clashes with the
	# headless build in requirements-test.txt: install it without its dependencies.
	$(PY) -m pip install -q --no-deps adeval==1.1.0
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Debian's chromium for the browser tests of `multiflow review` (apt-get as root when missing).
chromium:
	@bash scripts/ensure_chromium.sh

## Run the whole test suite.
test: $(STAMP) chromium
	$(PY) -m pytest -q

## Re-take the README's screenshots of `multiflow review` (docs/review/*.png) with the browser tests.
review-screenshots: $(STAMP) chromium
	MULTIFLOW_REVIEW_SCREENSHOTS=docs/review $(PY) -m pytest -q tests/review/test_review_browser.py

## Generate synthetic data, extract features, compute masks, train, evaluate, report.
demo: $(STAMP)
	$(PY) -m multiflow demo --out results/demo

clean:
	rm -rf $(VENV) build src/*.egg-info
