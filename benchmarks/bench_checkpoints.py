"""Bytes written by training checkpoints per epoch: the old policy (whole state every epoch) vs the
defaults (resume state every ``train.checkpoint_minutes`` and at the end, best weights only when
the held-out loss improves).

The flow is the default one (``ModelConfig()``: 6 blocks, hidden 64, Real-IAD graph with 5 views) on
the default backbone's channels (Lite0: 192); the class is small and synthetic: ``--samples`` normal
samples of random-normal features with random foreground masks. Checkpoint sizes depend on the
parameter count only, not on the feature grid, so the grid is kept small (``--grid``) to make the
epochs cheap. Bytes are counted from the files themselves (their size after every write).

    .venv/bin/python benchmarks/bench_checkpoints.py             # writes the "checkpoints" section
    .venv/bin/python benchmarks/bench_checkpoints.py --no-write  # print only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_line, update_section  # noqa: E402


def run_policy(name: str, overrides: dict, args, feats, masks, *, old: bool = False) -> dict:
    """Train with ``overrides`` and record every checkpoint write. ``old``: reproduce the previous
    policy exactly: the whole state with a separate copy of the best model every epoch, no best file."""
    import multiflow.engine.train as tr
    from multiflow.config import ModelConfig, TrainConfig
    from multiflow.engine.pipeline import build_flow

    writes: list[tuple[str, int, int]] = []  # (file, epoch, bytes from the file's size)
    real_state, real_best = tr._save_state, tr._save_best

    def state_spy(path, model, optimizer, best_state, meta):
        if old and best_state is None:  # the old state always stored the best model separately
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        size = real_state(path, model, optimizer, best_state, meta)
        writes.append(("state", meta["epoch"] + 1, Path(path).stat().st_size))
        return size

    def best_spy(path, best_state, epoch, loss):
        if old:  # the old policy had no separate best file
            return 0
        size = real_best(path, best_state, epoch, loss)
        writes.append(("best", epoch, Path(path).stat().st_size))
        return size

    tr._save_state, tr._save_best = state_spy, best_spy
    try:
        cfg = TrainConfig(epochs=args.epochs, device="cpu", **overrides)
        model = build_flow(ModelConfig(), args.channels, [f"C{i}" for i in range(1, 6)], cfg.seed)
        n_params = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory(prefix=f"bench_ckpt_{name}_") as tmp:
            t0 = time.perf_counter()
            res = tr.train_flow(model, feats, masks, cfg, tmp, progress=False)
            wall = time.perf_counter() - t0
    finally:
        tr._save_state, tr._save_best = real_state, real_best
    epochs = len(res.history)
    total = sum(b for _, _, b in writes)
    return {
        "name": name, "epochs": epochs, "wall_s": wall, "params": n_params,
        "state_writes": sum(k == "state" for k, _, _ in writes),
        "best_writes": sum(k == "best" for k, _, _ in writes),
        "state_bytes": sum(b for k, _, b in writes if k == "state"),
        "best_bytes": sum(b for k, _, b in writes if k == "best"),
        "total_bytes": total, "bytes_per_epoch": total / max(epochs, 1),
        "largest_state": max((b for k, _, b in writes if k == "state"), default=0),
        "best_size": max((b for k, _, b in writes if k == "best"), default=0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--channels", type=int, default=192, help="feature channels (Lite0: 192)")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np

    from multiflow.config import TrainConfig

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(args.samples, 5, args.channels, args.grid, args.grid)).astype(np.float32)
    masks = rng.random((args.samples, 5, args.grid, args.grid)) > 0.3
    default = TrainConfig()
    policies = [
        ("old: whole state every epoch", {"checkpoint_every": 1, "checkpoint_minutes": 0.0}),
        (f"new defaults: state every {default.checkpoint_minutes:g} min + at the end, best on improvement", {}),
    ]
    rows = []
    for k, (name, over) in enumerate(policies):
        r = run_policy(name, over, args, feats, masks, old=k == 0)
        print(r, flush=True)
        rows.append(r)
    old, new = rows
    mb = 1e6

    def line(r: dict) -> str:
        return (f"| {r['name']} | {r['epochs']} | {r['state_writes']} | {r['best_writes']} | "
                f"{r['total_bytes'] / mb:.0f} | {r['bytes_per_epoch'] / mb:.0f} |")

    e_paper = 112
    md = "\n".join([
        "## Checkpoints: bytes written per epoch",
        "",
        "Rerun: `.venv/bin/python benchmarks/bench_checkpoints.py`",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Setting: the default flow (6 blocks, hidden 64, Real-IAD graph, 5 views) on {args.channels} channels "
        f"({old['params'] / 1e6:.1f} M parameters), a small synthetic class of {args.samples} samples "
        f"(random-normal features, {args.grid}x{args.grid} grid: sizes do not depend on the grid), "
        f"{args.epochs} epochs, default optimiser settings. Bytes = sizes of the files after each write.",
        "",
        "| policy | epochs | state writes | best writes | MB written | MB per epoch |",
        "|---|---|---|---|---|---|",
        line(old),
        line(new),
        "",
        f"Old whole state (model + best + AdamW moments): {old['largest_state'] / mb:.0f} MB; new resume state "
        f"(largest written): {new['largest_state'] / mb:.0f} MB (the best model is not stored twice when it is the "
        f"current one); best weights alone: {new['best_size'] / mb:.0f} MB. On random features the held-out "
        "loss improves every epoch of a short run, so every epoch writes the best weights here; a converging "
        "run writes them less often.",
        f"Over a {e_paper}-epoch run the old policy writes {e_paper} x {old['largest_state'] / mb:.0f} MB "
        f"= {e_paper * old['largest_state'] / 1e9:.1f} GB; the new one writes the resume state once per "
        f"{default.checkpoint_minutes:g} minutes plus once at the end, and the best weights once per improvement of "
        "the held-out loss (at most once per epoch, fewer as training converges).",
    ])
    print(md)
    if not args.no_write:
        update_section("checkpoints", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
