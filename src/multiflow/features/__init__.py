"""Frozen features and foreground masks.

* :mod:`~multiflow.features.backbones`: :func:`build_backbone` -> :class:`FeatureExtractor`
  (frozen timm EfficientNet-Lite0 / B5 / any timm model cut at a layer; reports ``channels``,
  ``stride``, ``feature_size()``, ``digest``);
* :mod:`~multiflow.features.cache`: :func:`extract_features` -> :class:`CachedFeatures`
  (``(N, V, C, h, w)`` memmap, resumable, keyed by everything that changes the features);
* :mod:`~multiflow.features.masks`: mask providers (``isnet``, ``threshold``, ``file``,
  ``none``), the paper's post-processing, :func:`compute_masks` -> :class:`CachedMasks`;
* :mod:`~multiflow.features.isnet`: fetching and running the IS-Net ONNX model.
"""

from multiflow.features.backbones import FeatureExtractor, build_backbone
from multiflow.features.cache import CachedFeatures, extract_features
from multiflow.features.masks import CachedMasks, compute_masks, make_provider, postprocess_mask

__all__ = [
    "CachedFeatures",
    "CachedMasks",
    "FeatureExtractor",
    "build_backbone",
    "compute_masks",
    "extract_features",
    "make_provider",
    "postprocess_mask",
]
