"""The one check for numbers a user gives: finite, of the right kind, and inside the field's range.

Every entry point that takes a number from outside uses it: the command line (:func:`number_arg`
as an ``argparse`` type), the typed configuration (YAML files and ``--set`` overrides,
:mod:`multiflow.config`), the Python API (``multiflow.api.predict(threshold=...)``,
``Predictor(threshold=...)``) and the HTTP service (its limits and threshold). NaN compares false
with everything, so a NaN threshold silently turned every part OK; infinity does the same on the
other side. Both are refused here, with a message that names the key and the value.
"""

from __future__ import annotations

import argparse
import math
import numbers as _numbers  # the standard library's number tower (numpy scalars register there)
from collections.abc import Callable
from typing import Any

from multiflow.errors import ConfigError

__all__ = ["check_number", "number_arg", "number_problem"]


def _range_text(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = f"[{ge:g}" if ge is not None else (f"({gt:g}" if gt is not None else "(-inf")
    high = f"{le:g}]" if le is not None else (f"{lt:g})" if lt is not None else "inf)")
    return f"{low}, {high}"


def number_problem(value: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
                   lt: float | None = None, integer: bool = False) -> str | None:
    """What is wrong with ``value`` as a number of this kind and range, or ``None``.

    ``ge``/``gt``/``le``/``lt``: inclusive/exclusive bounds (``None`` = unbounded); ``integer``:
    an ``int`` is required (a float with an integral value is not accepted).
    """
    if isinstance(value, bool) or not isinstance(value, _numbers.Real):
        return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
    if integer and not isinstance(value, _numbers.Integral):
        return f"must be an integer, got {value!r}"
    if not math.isfinite(float(value)):
        return f"must be a finite number, got {float(value)!r}"
    outside = ((ge is not None and not value >= ge) or (gt is not None and not value > gt)
               or (le is not None and not value <= le) or (lt is not None and not value < lt))
    if outside:
        return f"must be in {_range_text(ge, gt, le, lt)}, got {value!r}"
    return None


def check_number(value: Any, name: str, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None, integer: bool = False) -> Any:
    """``value`` (as ``int`` when integral, else as ``float``) or :class:`ConfigError` naming
    ``name`` and the value: NaN, infinity, a non-number, or a value out of the given range."""
    problem = number_problem(value, ge=ge, gt=gt, le=le, lt=lt, integer=integer)
    if problem is not None:
        raise ConfigError(f"{name} {problem}")
    return int(value) if isinstance(value, _numbers.Integral) else float(value)


def number_arg(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
               lt: float | None = None, integer: bool = False) -> Callable[[str], Any]:
    """An ``argparse`` ``type=``: parses the text and applies :func:`check_number`'s rules, so
    ``--threshold nan`` exits with ``argument --threshold: must be a finite number, got nan``."""

    def parse(text: str) -> Any:
        try:
            value: Any = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if integer else 'a number'}, got {text!r}") from None
        problem = number_problem(value, ge=ge, gt=gt, le=le, lt=lt, integer=integer)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in some messages
    return parse
