"""``multiflow params``: print the flow's parameter count per component (paper config by default)."""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "params"
HELP = "print the Multi-Flow parameter count per component (default: the paper configuration)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", type=number_arg(integer=True, gt=0), default=304, help="feature channels C (default 304)")
    parser.add_argument("--views", type=int, default=5, help="views of the Real-IAD-style graph (top + sides)")
    from multiflow.flow.fusion import FUSIONS
    from multiflow.flow.noise import NOISE_SCHEMES

    parser.add_argument("--fusion", default="conv", choices=sorted(FUSIONS))
    parser.add_argument("--noise", default="simplenet", choices=list(NOISE_SCHEMES))
    parser.add_argument("--share-side-weights", action="store_true", help="tie weights of symmetric views")


def run(args: argparse.Namespace) -> int:
    from multiflow.errors import ConfigError
    from multiflow.flow import MultiFlow, ViewGraph
    from multiflow.flow.summary import PAPER_PARAMETER_COUNT, format_breakdown

    if args.views < 1:
        raise ConfigError(f"--views must be >= 1, got {args.views}")
    model = MultiFlow(args.channels, ViewGraph.real_iad(n_side=args.views - 1), fusion=args.fusion,
                      noise=args.noise, share_side_weights=args.share_side_weights)
    print(format_breakdown(model, PAPER_PARAMETER_COUNT))
    return 0
