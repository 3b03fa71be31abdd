"""Save / load a :class:`MultiFlow` as one safetensors file (no pickle, loading runs no code).

File layout (the same for every flow class of :mod:`multiflow.flow`): the model's ``state_dict``
tensors, plus the metadata entries ``"format": "multiflow.flow"``, ``"format_version": "1"`` and
``"config"`` (the JSON of :attr:`MultiFlow.config`, which includes the view graph: view names and
directed edges). The
write goes through :func:`multiflow._atomic.atomic_path`, so an interrupted save never leaves a
half-written checkpoint or a temporary file.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import torch

from multiflow._atomic import atomic_path
from multiflow.errors import CheckpointError, MultiflowError
from multiflow.flow.model import MultiFlow

FORMAT = "multiflow.flow"
FORMAT_VERSION = "1"


def save_flow(model: MultiFlow, path: str | PathLike) -> Path:
    """Write ``model`` (weights, buffers and config) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(model.config)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_flow(path: str | PathLike, map_location: str | torch.device = "cpu", *,
              flow_class: type[MultiFlow] = MultiFlow) -> MultiFlow:
    """Rebuild the :class:`MultiFlow` stored at ``path`` (see :func:`save_flow`) as ``flow_class``
    (a flow class whose config is a ``MultiFlow`` config, e.g.
    :class:`multiflow.flow.single_view.SingleViewFlow`; which one, the model bundle records).

    Raises:
        CheckpointError: the file is missing, not a safetensors file, not a multiflow flow, or its
            tensors do not match its config.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("flow checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
        raise CheckpointError(f"not a readable safetensors file ({exc})", path) from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a multiflow flow checkpoint (format={meta.get('format')!r})", path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported flow checkpoint version {meta.get('format_version')!r}", path)
    try:
        cfg = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"missing or malformed config metadata ({exc})", path) from exc
    try:
        model = flow_class.from_config(cfg)
    except MultiflowError as exc:
        raise CheckpointError(f"invalid config in checkpoint: {exc}", path) from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"tensors do not match the stored config: {exc}", path) from exc
    return model.to(map_location)
