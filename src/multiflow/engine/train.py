"""Training the flow on cached features (paper Sec. 3.4, 4.3).

The flow never sees images: it is trained on a feature array ``(N, V, C, h, w)`` (usually a
memory-mapped cache) with foreground masks ``(N, V, h, w)``. The loss is the per-pixel NLL averaged
over foreground pixels only.

Structure
---------
:func:`train_flow` prepares a run and walks its epochs; :func:`train_epoch` is the step loop of one
epoch (the loss of a batch comes from :class:`LocalLoss`, or from
:class:`multiflow.engine.distributed.ShardedLoss` under DDP). What happens around the steps are
small objects the epoch loop calls after every epoch, in this order: :func:`check_finite` (a
non-finite loss ends the run), :class:`BestSelection` (which weights the run returns),
:class:`EarlyStopping` (whether to stop) and :class:`Checkpointer` (when to write which file).

Reproducibility and resuming
----------------------------
Every epoch draws its batch order and its conditioning noise from generators seeded by
``(seed, epoch)``, and the learning rate of every step is a function of the step's number
(:mod:`multiflow.engine.schedule`), so an epoch's work depends only on the model and optimiser state
at its start. The resume state (``state.safetensors``: model, AdamW state with its parameter
groups, and the best model so far unless it is the current one; the rest as JSON in the file's
metadata) is written atomically every ``checkpoint_minutes`` of wall clock, every
``checkpoint_every`` epochs if that is set, and at the end; ``best.safetensors`` (weights only) is rewritten only when the selection loss improves. A
killed run resumed with ``resume=True`` restarts from the last state and ends with the same model
as an uninterrupted run with the same seed (when the state was written does not change the work).

What a resume may change. The state records the settings that decide what an epoch computes
(:func:`resume_settings`): ``seed``, the number of training samples, ``val_fraction`` (the held-out
split), ``batch_size``, ``lr``, ``betas``, ``weight_decay``, ``view_dropout``, ``select`` (which
epoch's weights are kept), the precision the run computed in (``precision`` after the bf16
fallback), the learning-rate schedule (``lr_schedule``, ``warmup_epochs``, ``lr_min``, ``gamma_lr``)
and, for a schedule other than a constant rate, ``epochs`` (the planned length shapes the cosine and
the warm-up). A resume with any of them changed is refused with a :class:`CheckpointError` that names
each changed setting with the state's and the new value, before anything is loaded: the continued
run would be trained by neither setting. Settings that only decide how long the run goes and where
or how often it writes may change: ``epochs`` of a constant rate (extending such a run continues it
as the longer schedule would have), ``early_stopping_patience`` and ``early_stopping_min_delta`` (they
apply from the resumed epoch on, to the counters in the state), ``checkpoint_minutes``,
``checkpoint_every``, ``threads`` and ``device`` (CPU and GPU arithmetic differ in rounding only).
``threshold_quantile`` is not used by training. A state written before the settings were recorded
is checked on what it holds (seed, samples, and the optimiser's ``lr``/``betas``/``weight_decay``),
with a warning naming the settings it cannot check; a state written before the schedule settings
existed was trained with a constant rate and one parameter group, and is checked as such.

Learning rate (:mod:`multiflow.engine.schedule`): ``lr_schedule`` ``constant`` (default, the paper's)
or ``cosine`` after an optional linear warm-up, set before every optimiser step; ``gamma_lr`` > 0
gives the fusion gates their own AdamW group (no weight decay). Each history record holds the rate
of the epoch's last step (``lr``; ``gamma_lr`` for the gates' group).

Early stopping (``early_stopping_patience`` > 0): training ends when the held-out loss (the
training loss without held-out samples) has not improved by more than ``early_stopping_min_delta``
for that many epochs; the last history record says so (``stopped``). With a cosine schedule the
planned ``epochs`` define the decay and early stopping may end the run before its end. Resuming an
early-stopped run with ``early_stopping_patience=0`` continues it to ``epochs``, the same run the
fixed schedule gives.

Divergence: a NaN or infinite training loss (checked on every batch, before the optimiser step) or
held-out loss ends the run with :class:`TrainingError` naming the epoch and the loss. Nothing of the
run is kept as a model: ``best.safetensors`` is removed and no weights are returned, so a caller
such as :func:`multiflow.engine.pipeline.fit_category` writes no bundle. The resume state of the last
checkpoint stays (it holds only epochs before the divergence). A run in which no epoch finished
(``epochs=0``) is an error too, instead of returning the initial flow as if it were trained.

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
validation samples (sums all-reduced), and only rank 0 writes the training state. Every rank sees
the same global losses, so a divergence stops all of them at the same batch or epoch.
"""

from __future__ import annotations

import json
import math
import time
import warnings
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
from multiflow.engine.schedule import LrSchedule, build_optimizer
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
            nll = model(x, fg=m).nll  # the masks are also the fusion operators' foreground
        n_sum, m_sum = masked_nll_sums(nll.float(), m)
        num += float(n_sum)
        den += float(m_sum)
    if ctx is not None and ctx.enabled:
        num, den = (float(v) for v in all_reduce_sum(torch.tensor([num, den], dtype=torch.float64), ctx))
    return num / max(den, 1.0)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`multiflow.engine.schedule.param_groups`, each group's base rate recorded."""
    optimizer = build_optimizer(model, cfg)
    LrSchedule.remember_base(optimizer)
    return optimizer


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


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a resume state (nothing loaded into a model yet)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read training state ({exc})", path) from None
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError("not a multiflow training state (format tag missing)", path)
    return tensors, meta


def _load_state(path: Path, model, optimizer, read: tuple[dict, dict[str, Any]] | None = None
                ) -> tuple[dict, dict[str, Any]]:
    """Load a resume state (``read``: what :func:`_read_state` returned, else read now) into ``model``
    and ``optimizer``; returns the best weights so far and the metadata."""
    tensors, meta = _read_state(path) if read is None else read
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
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the optimiser state does not fit this run's parameter groups: {exc}", path) from None
    return best, meta


# ------------------------------------------------------------------------------- resume settings
#: what the checks below call each recorded setting (the configuration key where there is one)
_SETTING_NAMES = {"n_samples": "number of training samples", "precision": "train.precision (as computed)",
                  "schedule_epochs": "train.epochs (the planned length of a scheduled learning rate)"}


def resume_settings(cfg: TrainConfig, n_samples: int, precision: str) -> dict[str, Any]:
    """The settings that decide what an epoch computes, as the resume state records them (JSON values).

    ``precision`` is the one the run computes in (after :func:`resolve_precision`'s fallback). A resume
    must match every one of them (:func:`check_resume_settings`); see the module docstring for the
    settings that may change.
    """
    return {
        "seed": int(cfg.seed),
        "n_samples": int(n_samples),
        "val_fraction": float(cfg.val_fraction),
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
        "betas": [float(b) for b in cfg.betas],
        "weight_decay": float(cfg.weight_decay),
        "view_dropout": float(cfg.view_dropout),
        "select": str(cfg.select),
        "precision": str(precision),
        "lr_schedule": str(cfg.lr_schedule),
        "warmup_epochs": float(cfg.warmup_epochs),
        "lr_min": float(cfg.lr_min),
        "gamma_lr": float(cfg.gamma_lr),
        # the planned length shapes a cosine (or a warm-up's share of the run); a constant rate does not care
        "schedule_epochs": None if cfg.lr_schedule == "constant" else int(cfg.epochs),
    }


#: values of result-changing settings in states written before the setting existed (what they trained with)
_LEGACY_SETTINGS: dict[str, Any] = {"lr_schedule": "constant", "warmup_epochs": 0.0, "lr_min": 0.0, "gamma_lr": 0.0,
                                    "schedule_epochs": None}


def _recorded_settings(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The settings a state was written with; for a state from before they were recorded, what it holds."""
    if "settings" in meta:
        return {**_LEGACY_SETTINGS, **meta["settings"]}
    group = (meta.get("param_groups") or [{}])[0]
    recorded = {"seed": meta.get("seed"), "n_samples": meta.get("n_samples"), "lr": group.get("lr"),
                "betas": group.get("betas"), "weight_decay": group.get("weight_decay"), **_LEGACY_SETTINGS}
    unchecked = ["batch_size", "val_fraction", "view_dropout", "select", "precision"]
    warnings.warn(f"{path}: written by an older multiflow that did not record {', '.join(unchecked)}; "
                  "this resume cannot check that they are unchanged", stacklevel=3)
    return recorded


def check_resume_settings(recorded: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a resume whose result-changing settings (:func:`resume_settings`) differ from the state's.

    Raises:
        CheckpointError: naming every changed setting with the state's and the new value.
    """
    changed = [
        f"{_SETTING_NAMES.get(key, 'train.' + key)}: {recorded[key]!r} in the state, {value!r} now"
        for key, value in current.items()
        if key in recorded and recorded[key] != value
    ]
    if changed:
        raise CheckpointError(
            "cannot resume: settings that change the trained model differ from the state's ("
            + "; ".join(changed) + "). Resume with the state's values, or start a new run in another folder "
            "(epochs unless the learning rate is scheduled, early stopping, checkpoint interval, threads and device may "
            "change on resume)",
            path,
        )


# ------------------------------------------------------------------- what happens around the steps
def check_finite(record: dict[str, Any]) -> None:
    """Raise :class:`TrainingError` if a loss of an epoch's ``record`` is NaN or infinite."""
    for key, what in (("train_loss", "training loss"), ("val_loss", "held-out loss")):
        if key in record and not math.isfinite(record[key]):
            raise TrainingError(
                f"the {what} ({key}) is {record[key]} at epoch {record['epoch']}; training stopped and no model "
                "was kept. Lower train.lr or check the features of the training samples for NaN/inf"
            )


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class BestSelection:
    """Which weights a run returns (``cfg.select``): those after the epoch with the lowest selection
    loss (``best_val``; the held-out loss, or the training loss without held-out samples), or the
    last epoch's (``last``). ``epoch`` is 1-based (-1 before any epoch); ``weights`` start as the
    initial model's."""

    def __init__(self, select: str, model) -> None:
        self.select = select
        self.loss, self.epoch = math.inf, -1
        self.weights = _weights(model)

    def update(self, epoch: int, loss: float, model) -> bool:
        """Consider the model after ``epoch`` (1-based); returns whether it is the new selection."""
        improved = self.select == "last" or loss < self.loss
        if improved:
            self.loss, self.epoch, self.weights = loss, epoch, _weights(model)
        return improved

    def meta(self) -> dict[str, Any]:
        return {"best_val": self.loss, "best_epoch": self.epoch}

    def restore(self, meta: dict[str, Any], weights: dict[str, torch.Tensor], device: torch.device) -> None:
        self.weights = {k: v.to(device) for k, v in weights.items()}
        self.loss = float(meta.get("best_val", math.inf))
        self.epoch = int(meta.get("best_epoch", -1))


class EarlyStopping:
    """Stop when the selection loss has not improved by more than ``min_delta`` for ``patience``
    epochs (``patience=0``: never). A stop on the schedule's last epoch is no stop."""

    def __init__(self, patience: int, min_delta: float, epochs: int) -> None:
        self.patience, self.min_delta, self.epochs = patience, min_delta, epochs
        self.best, self.wait, self.reason = math.inf, 0, ""

    def update(self, epoch: int, loss: float, what: str) -> str:
        """Count ``epoch`` (1-based) with selection loss ``loss`` (named ``what``); returns the stop
        reason if the run stops after it, else ''."""
        if self.patience <= 0:
            return ""
        if loss < self.best - self.min_delta:
            self.best, self.wait = loss, 0
            return ""
        self.wait += 1
        if self.wait >= self.patience and epoch < self.epochs:
            self.reason = (
                f"early stopping after epoch {epoch}: {what} did not improve by more than "
                f"{self.min_delta:g} for {self.wait} epochs (best {self.best:.6f})"
            )
        return self.reason

    def meta(self) -> dict[str, Any]:
        return {"es_best": self.best, "es_wait": self.wait, "stop_reason": self.reason}

    def restore(self, meta: dict[str, Any]) -> None:
        self.best = float(meta.get("es_best", math.inf))
        self.wait = int(meta.get("es_wait", 0))
        self.reason = str(meta.get("stop_reason", ""))
        if self.reason and self.patience <= 0:
            # an early-stopped run resumed with early stopping off runs the rest of the schedule
            # (exactly as the uninterrupted schedule would have: the state is that of the stop epoch)
            self.best, self.wait, self.reason = math.inf, 0, ""


class Checkpointer:
    """The checkpoint policy (module docstring; BENCHMARKS.md "Checkpoints").

    ``best.safetensors`` whenever the selection improves (not with ``select="last"``); the resume
    state at the end of the schedule, after an early stop, every ``checkpoint_every`` epochs of this
    call and when ``checkpoint_minutes`` of ``clock`` have passed since the last write (or the
    start). Only the main rank writes; under DDP rank 0's clock decides for every rank.
    ``bytes_written``/``files_written`` count this call's writes (file sizes after each write).
    """

    def __init__(self, state_dir: Path, cfg: TrainConfig, ctx: DistContext, clock: Callable[[], float],
                 start_epoch: int, settings: dict[str, Any], schedule: LrSchedule | None = None) -> None:
        self.state_path, self.best_path = state_dir / STATE_FILE, state_dir / BEST_FILE
        self.epochs, self.every, self.minutes = cfg.epochs, cfg.checkpoint_every, cfg.checkpoint_minutes
        self.ctx, self.clock, self.start_epoch, self.settings = ctx, clock, start_epoch, settings
        self.schedule = schedule
        self.bytes_written = {"state": 0, "best": 0}
        self.files_written = {"state": 0, "best": 0}
        self.last_save = clock()

    def improved(self, selection: BestSelection) -> None:
        """The selection changed: rewrite the best weights."""
        if selection.select != "last" and self.ctx.is_main:
            self.bytes_written["best"] += _save_best(self.best_path, selection.weights, selection.epoch,
                                                     selection.loss)
            self.files_written["best"] += 1

    def epoch_end(self, epoch: int, model, optimizer, history: list[dict[str, Any]], selection: BestSelection,
                  stopping: EarlyStopping) -> None:
        """After epoch ``epoch`` (0-based): write the resume state if it is due."""
        due = (
            epoch + 1 == self.epochs
            or bool(stopping.reason)
            or (self.every > 0 and (epoch + 1 - self.start_epoch) % self.every == 0)
            or (self.minutes > 0 and self.clock() - self.last_save >= 60.0 * self.minutes)
        )
        if self.ctx.enabled:  # rank 0's clock decides for every rank
            due = bool(all_reduce_sum(torch.tensor([float(due and self.ctx.is_main)]), self.ctx)[0] > 0)
        if not due:
            return
        if self.ctx.is_main:
            meta = {"epoch": epoch, "history": history, **selection.meta(), "seed": self.settings["seed"],
                    "n_samples": self.settings["n_samples"], **stopping.meta(), "settings": self.settings}
            if self.schedule is not None:  # informative: the rates are a function of the step (engine.schedule)
                meta["schedule"] = self.schedule.meta((epoch + 1) * self.schedule.steps_per_epoch)
            best = None if selection.epoch == epoch + 1 else selection.weights
            self.bytes_written["state"] += _save_state(self.state_path, model, optimizer, best, meta)
            self.files_written["state"] += 1
        barrier(self.ctx)
        self.last_save = self.clock()

    def discard_model(self) -> None:
        """The run failed: remove the best weights, so that nothing of it looks like a trained model."""
        if self.ctx.is_main:
            self.best_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- the loop
class LocalLoss:
    """The masked training loss of a whole batch in this process (:class:`ShardedLoss` under DDP).

    ``__call__(x, m, generator, present)`` moves the batch to ``device`` (one transfer each), runs the
    flow with noise from ``generator`` (bf16 autocast for the st-networks with ``precision="bf16"``)
    and returns ``(loss, loss value)``: the masked NLL mean of the present views.
    """

    def __init__(self, model, device: torch.device, precision: str) -> None:
        self.model, self.device, self.precision = model, device, precision

    def __call__(self, x: torch.Tensor, m: torch.Tensor | None, generator: torch.Generator,
                 present: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        x = to_device(x, self.device)
        m = None if m is None else to_device(m, self.device)
        p = None if present is None else to_device(present, self.device)
        with autocast(self.device, self.precision):  # bf16: the st-networks only; coupling math in fp32
            out = self.model(x, generator=generator, present=p, fg=m)
        nll = out.nll.float()
        loss = masked_loss(nll, present_mask(m, p, nll))
        return loss, float(loss.detach())


def train_epoch(model, optimizer: torch.optim.Optimizer, loss_fn: Callable, features, masks, train_idx: np.ndarray,
                cfg: TrainConfig, epoch: int, *, progress: bool = False, schedule: LrSchedule | None = None) -> float:
    """The optimiser steps of epoch ``epoch`` (0-based); returns the sample-weighted mean training loss.

    Batch order, conditioning noise and view dropout come from the epoch's generators, so the epoch's
    work depends only on the model and optimiser state at its start. ``schedule`` sets the learning
    rates before each step (step ``epoch * steps_per_epoch + batch`` of the run; None: the rates stay).
    A non-finite batch loss raises :class:`TrainingError` (naming epoch and batch) before its step.
    """
    model.train()
    order_gen = _epoch_generator(cfg.seed, epoch, 0)
    noise_gen = _epoch_generator(cfg.seed, epoch, 1)
    drop_gen = _epoch_generator(cfg.seed, epoch, 2) if cfg.view_dropout > 0 else None
    order = train_idx[torch.randperm(len(train_idx), generator=order_gen).numpy()]
    bs = cfg.batch_size
    n_batches = math.ceil(len(order) / bs)
    running, seen = 0.0, 0
    bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False,
               dynamic_ncols=True)
    for b in bar:
        x, m = _batch(features, masks, order[b * bs : (b + 1) * bs])
        present = None if drop_gen is None else draw_present(len(x), x.shape[1], cfg.view_dropout, drop_gen)
        loss, value = loss_fn(x, m, noise_gen, present)
        if not math.isfinite(value):
            raise TrainingError(
                f"the training loss became {value} at epoch {epoch + 1}, batch {b + 1}/{n_batches}; training "
                "stopped and no model was kept. Lower train.lr or check the features for NaN/inf"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if schedule is not None:
            schedule.apply(optimizer, epoch * n_batches + b)
        optimizer.step()
        running += value * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{running / seen:.4f}")
    bar.close()
    return running / max(seen, 1)


def _restart(state_path: Path, resume: bool, model, optimizer, settings: dict[str, Any],
             selection: BestSelection, stopping: EarlyStopping, device: torch.device) -> tuple[int, list[dict]]:
    """The first epoch to run and the history so far: ``(0, [])``, or those of the resume state."""
    if not state_path.exists():
        return 0, []
    if not resume:
        raise CheckpointError(
            "a training state already exists here; pass resume=True (--resume) to continue it "
            "or choose another output folder",
            state_path,
        )
    read = _read_state(state_path)
    check_resume_settings(_recorded_settings(read[1], state_path), settings, state_path)  # before loading anything
    weights, meta = _load_state(state_path, model, optimizer, read)
    selection.restore(meta, weights, device)
    stopping.restore(meta)
    return int(meta["epoch"]) + 1, list(meta.get("history", []))


def _epoch_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates of the epoch's last step: ``lr`` (the flow's) and ``gamma_lr`` (the gates'
    group, when they have one)."""
    rates = {"lr": float(optimizer.param_groups[0]["lr"])}
    for group in optimizer.param_groups[1:]:
        if group.get("name") == "gates":
            rates["gamma_lr"] = float(group["lr"])
    return rates


def _log_epoch(record: dict[str, Any]) -> None:
    tqdm.write(", ".join((f"{k} {v:.3g}" if k.endswith("lr") else f"{k} {v:.4f}") if isinstance(v, float)
                         else f"{k} {v}" for k, v in record.items()))


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
    until_epoch: int | None = None,
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
        until_epoch: train only up to this epoch (counted from the run's start, so a resumed run
            stops at the same place); the schedule keeps ``cfg.epochs`` as its planned length. The
            cross-fit folds stop at the flow's selected epoch this way.
        device: where to train (default: ``resolve_device(cfg.device)``); under DDP the rank's device.
        clock: seconds (monotonic) for the checkpoint interval; injectable for tests.

    Raises:
        TrainingError: a NaN/inf loss (the best weights of the run are removed) or no epoch trained.
        CheckpointError: a state exists without ``resume``, is unreadable, or was written with other
            result-changing settings (module docstring).
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    n = int(features.shape[0])
    train_idx, val_idx = split_train_val(n, cfg.val_fraction, cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # only for modules that draw at construction; flows use generators
    ctx = current_context()
    if ctx.enabled:
        device, progress = ctx.device, progress and ctx.is_main
    elif device is None:
        device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, notice=ctx.is_main)
    model.to(device)
    optimizer = _optimizer(model, cfg)
    schedule = LrSchedule.from_config(cfg, max(math.ceil(len(train_idx) / cfg.batch_size), 1))
    selection = BestSelection(cfg.select, model)
    stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta, cfg.epochs)
    settings = resume_settings(cfg, n, precision)
    start_epoch, history = _restart(state_dir / STATE_FILE, resume, model, optimizer, settings, selection,
                                    stopping, device)
    loss_fn = ShardedLoss(model, ctx, precision=precision) if ctx.enabled else LocalLoss(model, device, precision)
    checkpoints = Checkpointer(state_dir, cfg, ctx, clock, start_epoch, settings, schedule)
    epoch_bar = tqdm(total=cfg.epochs, initial=min(start_epoch, cfg.epochs), desc="training", unit="epoch",
                     disable=not progress, dynamic_ncols=True)
    try:
        last = cfg.epochs if until_epoch is None else min(cfg.epochs, int(until_epoch))
        for epoch in range(start_epoch, last):
            if stopping.reason or (stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs):
                break
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_epoch(
                model, optimizer, loss_fn, features, masks, train_idx, cfg, epoch, progress=progress,
                schedule=schedule)}
            record |= _epoch_rates(optimizer)
            if len(val_idx):
                record["val_loss"] = evaluate_loss(model, features, masks, val_idx, cfg.batch_size, ctx,
                                                   device=device, precision=precision)
            check_finite(record)
            what = "val_loss" if "val_loss" in record else "train_loss"
            improved = selection.update(epoch + 1, record[what], model)
            if stopping.update(epoch + 1, record[what], what):
                record["stopped"] = stopping.reason
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if progress:
                _log_epoch(record)
            epoch_bar.update(1)
            if improved:
                checkpoints.improved(selection)
            checkpoints.epoch_end(epoch, model, optimizer, history, selection, stopping)
    except TrainingError:
        checkpoints.discard_model()
        raise
    finally:
        epoch_bar.close()
    if selection.epoch < 0 and stop_after_epochs is None:
        raise TrainingError(f"no epoch was trained (train.epochs={cfg.epochs}); there is no model to return")
    model.load_state_dict(selection.weights)
    model.to("cpu")
    model.eval()
    return TrainResult(
        best_epoch=selection.epoch,
        best_val_loss=selection.loss,
        history=history,
        train_index=train_idx,
        val_index=val_idx,
        stop_reason=stopping.reason,
        bytes_written=checkpoints.bytes_written,
        files_written=checkpoints.files_written,
    )
