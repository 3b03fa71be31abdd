"""The pages' HTML: Jinja2 templates in ``templates/`` (package data), autoescaped.

Each template receives the data of one page (built by :mod:`multiflow.review.pages`) as ``p``,
plus ``token`` (the session token, :mod:`multiflow.review.security`), ``title``, ``page`` (the
``data-page`` that ``static/review.js`` dispatches on), ``crumbs`` (``[(text, url or "")]``) and,
for the pages with a script, ``data`` (JSON for the script); every template extends ``base.html``. Filters: ``num(d)``
(fixed ``d`` decimals), ``fmt`` (``-`` for a missing or non-finite value), ``pct`` (x 100, two
decimals), ``plain`` (any JSON-like value as short text), ``seg`` (one percent-encoded URL path
segment).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

TEMPLATES = Path(__file__).with_name("templates")
STATUS_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 411: "Length required", 413: "Too large",
                 415: "Unsupported media type"}


def seg(name: Any) -> str:
    """``name`` as one URL path segment (percent-encoded)."""
    return quote(str(name), safe="")


def num(x: Any, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}"


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, (float, np.floating)) else str(x)


def pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def plain(x: Any) -> str:
    """Any JSON-like value as short text: numbers with 4 significant digits, lists joined by commas."""
    if isinstance(x, bool) or x is None:
        return str(x).lower() if x is not None else "-"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    if isinstance(x, dict):
        return ", ".join(f"{k}: {plain(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(plain(v) for v in x)
    return str(x)


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the review templates (autoescaping on for every template)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters.update(seg=seg, num=num, fmt=fmt, pct=pct, plain=plain)
    return env


def render(template: str, **context: Any) -> str:
    """The HTML of ``template`` with ``context`` (which must hold ``token``)."""
    return environment().get_template(template).render(**context)


def error_page(status: int, message: str) -> str:
    """The HTML error page: status, title and ``message``. It carries no session token: a refused
    request (a DNS-rebinding page sending its own ``Host``) may be able to read the answer."""
    title = f"{status} {STATUS_TITLES.get(status, 'Error')}"
    return render("error.html", token="", title=title, page="error", crumbs=[], message=message)
