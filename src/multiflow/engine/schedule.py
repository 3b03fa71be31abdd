"""The optimiser of a training run: its parameter groups and its learning-rate schedule.

Parameter groups (:func:`param_groups`): with ``train.gamma_lr = 0`` every parameter is in one AdamW
group (the paper's optimiser). With ``gamma_lr > 0`` the fusion gates ``gamma_i`` of Eq. 4 (every
parameter whose own name is ``gamma``, :data:`GATE_NAME`) form a second group with that learning
rate and no weight decay. The gates start at 0 and Adam moves each by about its learning rate per
step whatever the gradient's size, so at the paper's lr they stay near 0 for a short run; their own
rate lets them open without raising the rate of the convolutions.

Schedule (:class:`LrSchedule`): a factor ``f(s)`` of the optimiser step ``s`` (0-based, counted over
the whole run: ``s = epoch * steps_per_epoch + batch``) multiplies every group's base learning rate
before step ``s``:

* warm-up (``warmup_epochs`` > 0, ``W = round(warmup_epochs * steps_per_epoch)`` steps):
  ``f(s) = (s + 1) / W`` for ``s < W``;
* then ``constant``: ``f = 1``; ``cosine``: ``f(s) = m + (1 - m) (1 + cos(pi p)) / 2`` with
  ``p = (s - W) / (T - W)``, ``T = epochs * steps_per_epoch`` (the *planned* steps) and
  ``m = lr_min / lr``, so the rate falls from ``lr`` to ``lr_min`` (the gates' from ``gamma_lr`` to
  ``gamma_lr * m``) over the planned run; early stopping may end it before.

The factor depends on the step number and the planned length only, so the schedule has no state of
its own beyond the step: a resumed run recomputes it from the epoch it restarts at and takes exactly
the steps of an uninterrupted one. Because the planned length shapes the cosine, ``train.epochs``
is a result-changing setting of a ``cosine`` run (:func:`multiflow.engine.train.resume_settings`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from multiflow.config import TrainConfig
from multiflow.errors import TrainingError

#: the name (last component of the parameter's dotted name) of a fusion gate (``MultiViewSubnet.gamma``)
GATE_NAME = "gamma"
SCHEDULES = ("constant", "cosine")


def gate_parameter_names(model: torch.nn.Module) -> list[str]:
    """Dotted names of the fusion gates ``gamma_i`` of ``model`` (one tensor per st-network)."""
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == GATE_NAME]


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: one (``gamma_lr = 0``), or the rest and then the gates (module docstring)."""
    if cfg.gamma_lr <= 0:
        return [{"params": list(model.parameters())}]
    gates = set(gate_parameter_names(model))
    rest = [p for n, p in model.named_parameters() if n not in gates]
    gated = [p for n, p in model.named_parameters() if n in gates]
    if not gated:
        raise TrainingError(f"train.gamma_lr={cfg.gamma_lr} is set, but the model has no fusion gates "
                            f"(no parameter named {GATE_NAME!r}); set train.gamma_lr=0")
    return [{"params": rest, "name": "flow"},
            {"params": gated, "name": "gates", "lr": float(cfg.gamma_lr), "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with ``train.lr``, ``betas``, ``weight_decay`` over :func:`param_groups`."""
    return torch.optim.AdamW(
        param_groups(model, cfg),
        lr=cfg.lr,
        betas=(float(cfg.betas[0]), float(cfg.betas[1])),
        weight_decay=cfg.weight_decay,
    )


class LrSchedule:
    """The learning rate of every optimiser step (module docstring).

    Args:
        kind: ``constant`` or ``cosine``.
        steps_per_epoch: optimiser steps of one epoch (``ceil(train samples / batch size)``).
        epochs: planned epochs (the cosine's length).
        warmup_epochs: linear warm-up length in epochs (0 = none).
        lr, lr_min: the base rate of the first group and the cosine's end rate (``m = lr_min / lr``).
    """

    def __init__(self, *, kind: str, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                 lr: float, lr_min: float = 0.0) -> None:
        if kind not in SCHEDULES:
            raise TrainingError(f"train.lr_schedule must be one of {list(SCHEDULES)}, got {kind!r}")
        if steps_per_epoch < 1 or epochs < 0:
            raise TrainingError(f"a schedule needs at least one step per epoch and epochs >= 0, got "
                                f"{steps_per_epoch} steps per epoch and {epochs} epochs")
        if not 0 <= lr_min <= lr:
            raise TrainingError(f"train.lr_min must be in [0, train.lr={lr}], got {lr_min}")
        self.kind, self.steps_per_epoch, self.epochs = kind, int(steps_per_epoch), int(epochs)
        self.total = self.steps_per_epoch * self.epochs
        self.warmup = min(int(round(warmup_epochs * self.steps_per_epoch)), self.total)
        self.floor = lr_min / lr

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int) -> "LrSchedule":
        return cls(kind=cfg.lr_schedule, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                   warmup_epochs=cfg.warmup_epochs, lr=cfg.lr, lr_min=cfg.lr_min)

    @property
    def is_constant(self) -> bool:
        """True when every factor is 1 (constant without warm-up): the rates are never touched."""
        return self.kind == "constant" and self.warmup == 0

    def factor(self, step: int) -> float:
        """``f(step)`` for the 0-based optimiser step ``step`` of the run."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        p = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every group's ``lr`` to its base rate (``initial_lr``) times ``f(step)``."""
        if self.is_constant:
            return
        f = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    @staticmethod
    def remember_base(optimizer: torch.optim.Optimizer) -> None:
        """Record each group's base rate as ``initial_lr`` (kept in the optimiser's state dict, hence in
        the resume state), unless a loaded state already holds it."""
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def meta(self, steps_done: int) -> dict[str, Any]:
        """What a resume state records of the schedule (informative; the factor has no other state)."""
        return {"kind": self.kind, "steps_per_epoch": self.steps_per_epoch, "planned_steps": self.total,
                "warmup_steps": self.warmup, "lr_min_factor": self.floor, "steps_done": int(steps_done)}
