"""The object decision from the product score and the camera faults (``OK`` / ``NG`` / ``CHECK CAMERA``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from multiflow.errors import DataError
from multiflow.faults.detect import CameraFault

DECISIONS = ("OK", "NG", "CHECK CAMERA")


def decide_object(product_score: float | None, threshold: float,
                  faults: Sequence[CameraFault]) -> tuple[str, str | None]:
    """``(decision, product_decision)`` of one object.

    ``product_decision`` is ``"NG"`` when ``product_score > threshold``, ``"OK"`` otherwise, and
    None when there is no product score (no view left to score). The decision is
    ``"CHECK CAMERA"`` whenever a camera fault was flagged, else the product decision.
    """
    product = None if product_score is None or not math.isfinite(product_score) else (
        "NG" if product_score > threshold else "OK"
    )
    if faults:
        return "CHECK CAMERA", product
    if product is None:
        raise DataError("no view to score and no camera fault: nothing to decide")
    return product, product
