"""Training the flow on cached features (paper Sec. 3.4, 4.3).

The flow never sees images: it is trained on a feature array ``(N, V, C, h, w)`` (usually a
memory-mapped cache) with foreground masks ``(N, V, h, w)``. The loss is the per-pixel NLL averaged
over foreground pixels only.

Reproducibility and resuming
----------------------------
Every epoch draws its batch order and its conditioning noise from generators seeded by
``(seed, epoch)``, so an epoch's work depends only on the model and optimiser state at its start.
The resume state (``state.safetensors``: model, AdamW state, and the best model so far unless it is
the current one; the rest as JSON in the file's metadata) is written atomically every
``checkpoint_minutes`` of wall clock, every ``checkpoint_every`` epochs if that is set, and at the
end; ``best.safetensors`` (weights only) is rewritten only when the selection loss improves. A
killed run resumed with ``resume=True`` restarts from the last state and ends with the same model
as an uninterrupted run with the same seed (when the state was written does not change the work).

Early stopping (``early_stopping_patience`` > 0): training ends when the held-out loss (the
training loss without held-out samples) has not improved by more than ``early_stopping_min_delta``
for that many epochs; the last history record says so (``stopped``). Resuming an early-stopped run
with ``early_stopping_patience=0`` continues it to ``epochs``, the same run the fixed schedule gives.

Device and precision: the model and each batch (one transfer per batch, pinned when CUDA) go to
``device``; with ``precision="bf16"`` the st-network convolutions run under bf16 autocast
(:mod:`multiflow.device`). The model is returned on the CPU.

View dropout (``cfg.view_dropout = p > 0``): every view of every training sample is dropped with
probability ``p``, independently, from a third per-epoch generator; a sample whose views would all
be dropped keeps one, drawn uniformly. The flow then runs on the subgraph of the present views and
the loss leaves the dropped views out (:mod:`multiflow.flow.model`), so the trained model scores
objects with any non-empty subset of cameras. With ``p = 0`` nothing is drawn and training is
exactly as without the option. Validation always uses every view.

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
import time
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
from multiflow.device import autocast, resolve_device, resolve_precision, to_device
from multiflow.engine.distributed import DistContext, ShardedLoss, all_reduce_sum, barrier, current_context, shard_range
from multiflow.errors import CheckpointError, TrainingError
from multiflow.scoring import masked_loss, masked_nll_sums, present_mask

STATE_FILE = "state.safetensors"
BEST_FILE = "best.safetensors"
STATE_FORMAT = "multiflow-train-state/1"


@dataclass
class TrainResult:
    """What a training run produced. ``history`` has one dict per finished epoch.

    ``stop_reason`` is empty unless early stopping ended the run. ``bytes_written`` and
    ``files_written`` count the checkpoint files (sizes after each write) of *this call*.
    """

    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None
    stop_reason: str = ""
    bytes_written: dict[str, int] = field(default_factory=dict)
    files_written: dict[str, int] = field(default_factory=dict)


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


def draw_present(batch: int, n_views: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """View dropout mask ``(batch, n_views)`` bool: each view present with probability ``1 - p``.

    A row that would be all False keeps one view chosen uniformly (also from ``generator``), so
    every sample keeps at least one view. Two draws per call: the Bernoulli matrix, then one
    uniform index per row (used only for empty rows), so the stream advances the same way
    whatever was dropped.
    """
    if not 0.0 <= p < 1.0:
        raise TrainingError(f"view dropout probability must be in [0, 1), got {p}")
    present = torch.rand(batch, n_views, generator=generator) >= p
    keep = torch.randint(n_views, (batch,), generator=generator)
    empty = ~present.any(dim=1)
    present[empty, keep[empty]] = True
    return present


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
def evaluate_loss(model, features, masks, index: np.ndarray, batch_size: int, ctx: DistContext | None = None,
                  *, device: torch.device | None = None, precision: str = "fp32") -> float:
    """Mean foreground NLL of ``index`` in eval mode (no noise), weighted by foreground pixels.

    With a distributed ``ctx`` each rank sums its shard of ``index`` and the sums are all-reduced.
    ``device`` (default: the model's) and ``precision`` as in :func:`train_flow`.
    """
    model.eval()
    num, den = 0.0, 0.0
    if device is None:
        device = next(model.parameters()).device
    if ctx is not None and ctx.enabled:
        lo, hi = shard_range(len(index), ctx.rank, ctx.world_size)
        index, device = index[lo:hi], ctx.device
    for start in range(0, len(index), batch_size):
        x, m = _batch(features, masks, index[start : start + batch_size])
        x = to_device(x, device)
        m = None if m is None else to_device(m, device)
        with autocast(device, precision):  # bf16: the st-networks only; the NLL stays fp32
            nll = model(x).nll
        n_sum, m_sum = masked_nll_sums(nll.float(), m)
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


def _save_state(path: Path, model, optimizer, best_state: dict | None, meta: dict[str, Any]) -> int:
    """Write the resume state atomically; ``best_state=None``: the best model is the current one
    (recorded as ``best_is_model`` and not stored twice). Returns the file's size in bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in (best_state or {}).items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{name}"] = t.detach().cpu().contiguous()
    meta = dict(meta, format=STATE_FORMAT, param_groups=opt["param_groups"], best_is_model=best_state is None)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    return path.stat().st_size


def _save_best(path: Path, best_state: dict, epoch: int, loss: float) -> int:
    """Write the best weights so far (no optimiser state) atomically; returns the file's size."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in best_state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"epoch": str(epoch), "loss": repr(float(loss))})
    return path.stat().st_size


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
    if meta.get("best_is_model"):
        best = {k: v.clone() for k, v in model_sd.items()}
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
    device: torch.device | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the selected weights (``cfg.select``), on the CPU.

    Args:
        model: a :class:`multiflow.flow.MultiFlow` whose output has ``.nll`` ``(B, V, h, w)``.
        features: array-like ``(N, V, C, h, w)`` of normal training samples (e.g. a memmap).
        masks: array-like ``(N, V, h, w)`` foreground masks, or None (all pixels count).
        cfg: optimisation settings (also ``device``, ``precision``, checkpoint and early stopping).
        state_dir: folder for ``state.safetensors`` and ``best.safetensors`` (created).
        resume: continue from ``state_dir/state.safetensors`` if it exists.
        stop_after_epochs: stop (as if killed) after this many epochs of *this call*; for tests.
        device: where to train (default: ``resolve_device(cfg.device)``); under DDP the rank's device.
        clock: seconds (monotonic) for the checkpoint interval; injectable for tests.
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
        device = ctx.device
        progress = progress and ctx.is_main
    elif device is None:
        device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, notice=ctx.is_main)
    model.to(device)
    optimizer = _optimizer(model, cfg)
    history: list[dict[str, float]] = []
    start_epoch = 0
    best_val = math.inf
    best_epoch = -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    es_best, es_wait, stop_reason = math.inf, 0, ""
    if state_path.exists():
        if not resume:
            raise CheckpointError(
                "a training state already exists here; pass resume=True (--resume) to continue it "
                "or choose another output folder",
                state_path,
            )
        best_state, meta = _load_state(state_path, model, optimizer)
        best_state = {k: v.to(device) for k, v in best_state.items()}
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
        es_best = float(meta.get("es_best", math.inf))
        es_wait = int(meta.get("es_wait", 0))
        stop_reason = str(meta.get("stop_reason", ""))
        if stop_reason and cfg.early_stopping_patience <= 0:
            # an early-stopped run resumed with early stopping off runs the rest of the schedule
            # (exactly as the uninterrupted schedule would have: the state is that of the stop epoch)
            stop_reason, es_best, es_wait = "", math.inf, 0

    sharded = ShardedLoss(model, ctx, precision=precision) if ctx.enabled else None
    bs = cfg.batch_size
    n_batches = math.ceil(len(train_idx) / bs)
    epochs_run = 0
    written = {"state": 0, "best": 0}
    n_written = {"state": 0, "best": 0}
    last_save = clock()
    epoch_bar = tqdm(total=cfg.epochs, initial=min(start_epoch, cfg.epochs), desc="training", unit="epoch",
                     disable=not progress, dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        if stop_reason or (stop_after_epochs is not None and epochs_run >= stop_after_epochs):
            break
        model.train()
        order_gen = _epoch_generator(cfg.seed, epoch, 0)
        noise_gen = _epoch_generator(cfg.seed, epoch, 1)
        drop_gen = _epoch_generator(cfg.seed, epoch, 2) if cfg.view_dropout > 0 else None
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
            present = None if drop_gen is None else draw_present(len(x), x.shape[1], cfg.view_dropout, drop_gen)
            if sharded is not None:
                loss, loss_value = sharded(x, m, noise_gen, present=present)
            else:
                x = to_device(x, device)
                m = None if m is None else to_device(m, device)
                p = None if present is None else to_device(present, device)
                with autocast(device, precision):  # bf16: the st-networks only; coupling math in fp32
                    out = model(x, generator=noise_gen, present=p)
                nll = out.nll.float()
                loss = masked_loss(nll, present_mask(m, p, nll))
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
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": running / max(seen, 1)}
        if len(val_idx):
            record["val_loss"] = evaluate_loss(model, features, masks, val_idx, bs, ctx, device=device,
                                               precision=precision)
        selector = record.get("val_loss", record["train_loss"])
        improved = cfg.select == "last" or selector < best_val
        if improved:
            best_val, best_epoch = selector, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg.early_stopping_patience > 0:
            if selector < es_best - cfg.early_stopping_min_delta:
                es_best, es_wait = selector, 0
            else:
                es_wait += 1
                if es_wait >= cfg.early_stopping_patience and epoch + 1 < cfg.epochs:
                    what = "val_loss" if "val_loss" in record else "train_loss"
                    stop_reason = (
                        f"early stopping after epoch {epoch + 1}: {what} did not improve by more than "
                        f"{cfg.early_stopping_min_delta:g} for {es_wait} epochs (best {es_best:.6f})"
                    )
                    record["stopped"] = stop_reason
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if progress:
            msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            tqdm.write(msg)
        epoch_bar.update(1)
        epochs_run += 1
        if improved and cfg.select != "last" and ctx.is_main:
            written["best"] += _save_best(state_dir / BEST_FILE, best_state, best_epoch, best_val)
            n_written["best"] += 1
        due = (
            epoch + 1 == cfg.epochs
            or bool(stop_reason)
            or (cfg.checkpoint_every > 0 and (epoch + 1 - start_epoch) % cfg.checkpoint_every == 0)
            or (cfg.checkpoint_minutes > 0 and clock() - last_save >= 60.0 * cfg.checkpoint_minutes)
        )
        if ctx.enabled:  # rank 0's clock decides for every rank
            due = bool(all_reduce_sum(torch.tensor([float(due and ctx.is_main)]), ctx)[0] > 0)
        if due:
            meta = {
                "epoch": epoch,
                "history": history,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "seed": cfg.seed,
                "n_samples": n,
                "es_best": es_best,
                "es_wait": es_wait,
                "stop_reason": stop_reason,
            }
            if ctx.is_main:
                same = best_epoch == epoch + 1
                written["state"] += _save_state(state_path, model, optimizer, None if same else best_state, meta)
                n_written["state"] += 1
            barrier(ctx)
            last_save = clock()
    epoch_bar.close()

    model.load_state_dict(best_state)
    model.to("cpu")
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        best_val_loss=best_val,
        history=history,
        train_index=train_idx,
        val_index=val_idx,
        stop_reason=stop_reason,
        bytes_written=written,
        files_written=n_written,
    )
