"""Options shared by the training/evaluation subcommands."""

from __future__ import annotations

import argparse


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file (defaults: the paper's, with the offline Lite0 backbone)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one configuration value, e.g. --set train.epochs=20 (repeatable)")
    p.add_argument("--data", help="data root (same as --set data.root=...)")
    p.add_argument("--classes", help="comma-separated classes (default: every class found)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def overrides_from(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if getattr(args, "data", None):
        out.append(f"data.root={args.data}")
    if getattr(args, "classes", None):
        cats = [c.strip() for c in args.classes.split(",") if c.strip()]
        out.append("data.categories=[" + ",".join(cats) + "]")
    return out
