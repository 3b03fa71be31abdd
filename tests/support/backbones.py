"""The full ImageNet classifier behind a backbone preset, for the tests that check the weight mapping."""

from __future__ import annotations

import os

from torch import nn

from multiflow.errors import ConfigError
from multiflow.features.backbones import PRESETS, lite0_package_weights_path, load_weights_file


def build_classifier(name: str = "lite0", weights: str | os.PathLike | None = None) -> tuple[nn.Module, tuple, tuple]:
    """The full ImageNet classifier behind a preset, with the same weights as
    :func:`build_backbone` (used to check that the weight mapping is right). Returns
    ``(model in eval mode, mean, std)``; inputs are normalised ``(x - mean) / std``."""
    import timm

    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"no classifier preset {name!r}")
    model = timm.create_model(preset.timm_name, pretrained=False)
    load_weights_file(model, weights if weights is not None else lite0_package_weights_path())
    return model.eval(), preset.mean, preset.std
