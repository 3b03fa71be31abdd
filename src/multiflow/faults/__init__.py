"""Camera faults, told apart from product defects: blur, over-/under-exposure, occlusion (dirt on the
lens), frozen frames and swapped cameras (README, "Camera faults and missing views").

Layout (each module only imports the ones above it in this list):

* :mod:`~multiflow.faults.stats`      per-view image statistics of one object;
* :mod:`~multiflow.faults.fit`        per-camera references, standardised checks, the cross-fitted
  object-level threshold with its false-alarm rate; :class:`CameraFaultModel` (``camera_faults.json``);
* :mod:`~multiflow.faults.detect`     the faults of one object, the frame memory (frozen, retries);
* :mod:`~multiflow.faults.decision`   ``OK`` / ``NG`` / ``CHECK CAMERA``;
* :mod:`~multiflow.faults.flow_swap`  swap evidence from the flow's per-camera likelihood.
"""

from multiflow.faults.decision import DECISIONS, decide_object
from multiflow.faults.detect import CameraCheck, CameraFault, FrameMemory, check_cameras, detect_faults, object_score
from multiflow.faults.fit import (FAULT_KINDS, MIN_OBJECTS, CameraFaultModel, Reference, calibrate,
                                  fit_camera_faults, min_objects)
from multiflow.faults.flow_swap import fit_flow_swap, flow_swap_batch, flow_swap_gains, with_flow_swap
from multiflow.faults.stats import ViewStats, grey, view_stats

__all__ = [
    "DECISIONS", "FAULT_KINDS", "MIN_OBJECTS", "CameraCheck", "CameraFault", "CameraFaultModel", "FrameMemory",
    "Reference", "ViewStats", "calibrate", "check_cameras", "decide_object", "detect_faults", "fit_camera_faults",
    "fit_flow_swap", "flow_swap_batch", "flow_swap_gains", "grey", "min_objects", "object_score", "view_stats",
    "with_flow_swap",
]
