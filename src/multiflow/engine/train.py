"""Training the flow on cached features (paper Sec. 3.4, 4.3).

The flow never sees images: it is trained on a feature array ``(N, V, C, h, w)`` (usually a
memory-mapped cache) with foreground masks ``(N, V, h, w)``. The loss is the per-pixel NLL averaged
over foreground pixels only.

Reproducibility and resuming
----------------------------
Every epoch draws its batch order and its conditioning noise from generators seeded by
``(seed, epoch)``, so an epoch's work depends only on the model and optimiser state at its start.
A checkpoint (``state.safetensors``: model, optimiser state, best model so far; the rest as JSON in
the file's metadata) is written atomically after every ``checkpoint_every`` epochs. A killed run
resumed with ``resume=True`` restarts from the last checkpoint and ends with the same model as an
uninterrupted run with the same seed.

Model selection uses only a held-out part of the *normal training* samples (``val_fraction``),
never the test set.

Distributed data parallel
-------------------------
Under ``torchrun`` (an initialised process group, see :mod:`multiflow.engine.distributed`) every
rank walks the same global batches and noise, computes the loss of its shard so that the averaged
gradient equals the single-process gradient of the global batch, evaluates its shard of the
validation samples (sums all-reduced), and only rank 0 writes the training state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from multiflow._atomic import atomic_path
from multiflow.config import TrainConfig
from multiflow.engine.distributed import DistContext, ShardedLoss, all_reduce_sum, barrier, current_context, shard_range
from multiflow.errors import CheckpointError, TrainingError
from multiflow.scoring import masked_loss, masked_nll_sums

STATE_FILE = "state.safetensors"
STATE_FORMAT = "multiflow-train-state/1"


@dataclass
class TrainResult:
    """What a training run produced. ``history`` has one dict per finished epoch."""

    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically hold out ``round(n * val_fraction)`` (at least 1 if fraction > 0) samples."""
    if n < 2 and val_fraction > 0:
        raise TrainingError(f"need at least 2 training samples to hold out validation data, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 else max(1, int(round(n * val_fraction)))
    n_val = min(n_val, n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1))
    return g


def _batch(features, masks, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    order = np.sort(idx)  # memory-mapped reads are faster in file order
    x = torch.from_numpy(np.array(features[order])).float()
    m = None if masks is None else torch.from_numpy(np.array(masks[order])).float()
    # restore the requested (shuffled) order
    inv = np.argsort(np.argsort(idx))
    x = x[torch.from_numpy(inv)]
    if m is not None:
        m = m[torch.from_numpy(inv)]
    return x, m


@torch.no_grad()
def evaluate_loss(model, features, masks, index: np.ndarray, batch_size: int, ctx: DistContext | None = None) -> float:
    """Mean foreground NLL of ``index`` in eval mode (no noise), weighted by foreground pixels.

    With a distributed ``ctx`` each rank sums its shard of ``index`` and the sums are all-reduced.
    """
    model.eval()
    num, den = 0.0, 0.0
    device = torch.device("cpu")
    if ctx is not None and ctx.enabled:
        lo, hi = shard_range(len(index), ctx.rank, ctx.world_size)
        index, device = index[lo:hi], ctx.device
    for start in range(0, len(index), batch_size):
        x, m = _batch(features, masks, index[start : start + batch_size])
        x = x.to(device)
        m = None if m is None else m.to(device)
        n_sum, m_sum = masked_nll_sums(model(x).nll, m)
        num += float(n_sum)
        den += float(m_sum)
    if ctx is not None and ctx.enabled:
        num, den = (float(v) for v in all_reduce_sum(torch.tensor([num, den], dtype=torch.float64), ctx))
    return num / max(den, 1.0)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=(float(cfg.betas[0]), float(cfg.betas[1])),
        weight_decay=cfg.weight_decay,
    )


def _save_state(path: Path, model, optimizer, best_state: dict, meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in best_state.items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{name}"] = t.detach().cpu().contiguous()
    meta = dict(meta, format=STATE_FORMAT, param_groups=opt["param_groups"])
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})


def _load_state(path: Path, model, optimizer) -> tuple[dict, dict[str, Any]]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read training state ({exc})", path) from None
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError("not a multiflow training state (format tag missing)", path)
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"state does not fit this model configuration: {exc}", path) from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return best, meta


def train_flow(
    model,
    features,
    masks,
    cfg: TrainConfig,
    state_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the selected weights (``cfg.select``).

    Args:
        model: a :class:`multiflow.flow.MultiFlow` whose output has ``.nll`` ``(B, V, h, w)``.
        features: array-like ``(N, V, C, h, w)`` of normal training samples (e.g. a memmap).
        masks: array-like ``(N, V, h, w)`` foreground masks, or None (all pixels count).
        cfg: optimisation settings.
        state_dir: folder for ``state.safetensors`` (created).
        resume: continue from ``state_dir/state.safetensors`` if it exists.
        stop_after_epochs: stop (as if killed) after this many epochs of *this call*; for tests.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / STATE_FILE
    n = int(features.shape[0])
    train_idx, val_idx = split_train_val(n, cfg.val_fraction, cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    torch.manual_seed(cfg.seed)  # only for modules that draw at construction; flows use generators
    ctx = current_context()
    if ctx.enabled:
        model.to(ctx.device)
        progress = progress and ctx.is_main
    optimizer = _optimizer(model, cfg)
    history: list[dict[str, float]] = []
    start_epoch = 0
    best_val = math.inf
    best_epoch = -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if state_path.exists():
        if not resume:
            raise CheckpointError(
                "a training state already exists here; pass resume=True (--resume) to continue it "
                "or choose another output folder",
                state_path,
            )
        best_state, meta = _load_state(state_path, model, optimizer)
        best_state = {k: v.to(ctx.device) for k, v in best_state.items()}
        if meta.get("seed") != cfg.seed or meta.get("n_samples") != n:
            raise CheckpointError(
                f"state was written for seed={meta.get('seed')} and {meta.get('n_samples')} samples; "
                f"this run has seed={cfg.seed} and {n} samples",
                state_path,
            )
        start_epoch = int(meta["epoch"]) + 1
        history = list(meta.get("history", []))
        best_val = float(meta.get("best_val", math.inf))
        best_epoch = int(meta.get("best_epoch", -1))

    sharded = ShardedLoss(model, ctx) if ctx.enabled else None
    bs = cfg.batch_size
    n_batches = math.ceil(len(train_idx) / bs)
    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        model.train()
        order_gen = _epoch_generator(cfg.seed, epoch, 0)
        noise_gen = _epoch_generator(cfg.seed, epoch, 1)
        order = train_idx[torch.randperm(len(train_idx), generator=order_gen).numpy()]
        running, seen = 0.0, 0
        bar = tqdm(
            range(n_batches),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for b in bar:
            x, m = _batch(features, masks, order[b * bs : (b + 1) * bs])
            if sharded is not None:
                loss, loss_value = sharded(x, m, noise_gen)
            else:
                out = model(x, generator=noise_gen)
                loss = masked_loss(out.nll, m)
                loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss became {loss_value} at epoch {epoch + 1}, batch {b + 1}/{n_batches}; "
                    "lower train.lr or check the features for NaN/inf"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss_value * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": running / max(seen, 1)}
        if len(val_idx):
            record["val_loss"] = evaluate_loss(model, features, masks, val_idx, bs, ctx)
        selector = record.get("val_loss", record["train_loss"])
        if cfg.select == "last" or selector < best_val:
            best_val, best_epoch = selector, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if progress:
            msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            tqdm.write(msg)
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1 - start_epoch) % max(cfg.checkpoint_every, 1) == 0:
            meta = {
                "epoch": epoch,
                "history": history,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "seed": cfg.seed,
                "n_samples": n,
            }
            if ctx.is_main:
                _save_state(state_path, model, optimizer, best_state, meta)
            barrier(ctx)
        epochs_run += 1

    model.load_state_dict(best_state)
    if ctx.enabled:
        model.to("cpu")
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        best_val_loss=best_val,
        history=history,
        train_index=train_idx,
        val_index=val_idx,
    )
