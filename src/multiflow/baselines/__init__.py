"""Baselines the paper compares Multi-Flow against, run on the same cached features and masks.

- the single-view flow: the same flow without cross-view links, trained and scored view by view
  (every image an independent sample of one shared flow, ``V = 1``):
  :class:`~multiflow.flow.single_view.SingleViewFlow`, a flow with ``MultiFlow``'s interface built by
  the model factory for ``model.single_view=true``; re-exported here with its reshapes.
- :mod:`~multiflow.baselines.patchcore`: PatchCore (Roth et al., CVPR 2022) on our cached
  backbone features: a k-center-greedy coreset of normal patch features and nearest-neighbour
  distances as the anomaly map. Uses anomalib's ``KCenterGreedy`` when anomalib is installed.
"""

from multiflow.baselines.evaluate import evaluate_patchcore
from multiflow.baselines.patchcore import PatchCore, anomalib_available, kcenter_greedy
from multiflow.flow.single_view import (
    SingleViewFlow,
    from_single_view,
    single_view_indices,
    to_single_view,
)

__all__ = [
    "PatchCore",
    "SingleViewFlow",
    "anomalib_available",
    "evaluate_patchcore",
    "from_single_view",
    "kcenter_greedy",
    "single_view_indices",
    "to_single_view",
]
