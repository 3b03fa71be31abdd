"""``multiflow fit``: train one flow per class on cached features."""

from __future__ import annotations

import argparse

from multiflow.commands._common import add_config_options, overrides_from

NAME = "fit"
HELP = ("train one Multi-Flow model per class, or one for all classes with --set model.unified=true "
        "(features and masks are extracted and cached first)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--out", help="results folder (default: results)")
    p.add_argument("--name", help="run name: the run goes to <out>/<name> (default: a time stamp)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in <out>/<name>")
    p.add_argument("--test", action="store_true", help="evaluate on the test split after training")


def run(args: argparse.Namespace) -> int:
    from multiflow.config import load_config
    from multiflow.engine.pipeline import evaluate_run, fit_run

    ov = overrides_from(args)
    if args.out:
        ov.append(f"out={args.out}")
    if args.name:
        ov.append(f"name={args.name}")
    cfg = load_config(args.config, ov)
    if args.resume and not cfg.name:
        from multiflow.errors import ConfigError

        raise ConfigError("--resume needs --name (the run to continue)")
    run_dir = fit_run(cfg, resume=args.resume, progress=not args.quiet)
    print(f"trained models in {run_dir}")
    if args.test:
        res = evaluate_run(run_dir, cfg, progress=not args.quiet)
        print(res["table"])
    return 0
