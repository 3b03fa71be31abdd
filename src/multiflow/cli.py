"""The ``multiflow`` command line: one subcommand per module of :mod:`multiflow.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from multiflow import __version__, commands
from multiflow.errors import MultiflowError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            yield module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multiflow",
        description="Multi-view industrial anomaly detection with normalizing flows (Multi-Flow).",
    )
    parser.add_argument("--version", action="version", version=f"multiflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


#: set once :func:`main` has left a torch.distributed process group (read by :func:`entry`)
_IN_PROCESS_GROUP = False


def main(argv: Sequence[str] | None = None) -> int:
    global _IN_PROCESS_GROUP
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    finished = False
    try:
        code = int(args._run(args) or 0)
        finished = True
        return code
    except MultiflowError as exc:
        print(f"multiflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"multiflow {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:  # after a failure a peer may never reach the barrier: leave without waiting
        _IN_PROCESS_GROUP |= _leave_process_group(wait=finished)


def _leave_process_group(*, wait: bool) -> bool:
    """Under torchrun: all ranks leave the process group together (see shutdown_distributed)."""
    if "torch.distributed" not in sys.modules:  # never imported: no group, keep ``--help`` fast
        return False
    from multiflow.engine.distributed import shutdown_distributed

    return shutdown_distributed(wait=wait)


def entry() -> int:
    """The console script: :func:`main`, then, for a rank of a torchrun job, a plain process exit
    (:func:`multiflow.engine.distributed.exit_after_distributed`)."""
    code = main()
    if _IN_PROCESS_GROUP:
        from multiflow.engine.distributed import exit_after_distributed

        exit_after_distributed(code)
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
