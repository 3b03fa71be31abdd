"""Print the parameter count of the paper configuration of Multi-Flow, per component.

Paper configuration: 304 channels, 5 views, Real-IAD graph, conv fusion, noise condition (one
channel), 6 blocks with kernels 3,3,3,3,3,5, hidden 64. Compared with the reference
implementation's 64,135,548 (see ``docs``/model spec). Options change the configuration.

    .venv/bin/python scripts/param_count.py
    .venv/bin/python scripts/param_count.py --share-side-weights --fusion cross_attention
"""

from __future__ import annotations

import argparse

from multiflow.flow import MultiFlow, ViewGraph
from multiflow.flow.fusion import FUSIONS
from multiflow.flow.noise import NOISE_SCHEMES
from multiflow.flow.summary import format_breakdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Multi-Flow parameter count per component")
    ap.add_argument("--channels", type=int, default=304)
    ap.add_argument("--fusion", default="conv", choices=sorted(FUSIONS))
    ap.add_argument("--noise", default="simplenet", choices=list(NOISE_SCHEMES))
    ap.add_argument("--share-side-weights", action="store_true")
    args = ap.parse_args(argv)
    model = MultiFlow(args.channels, ViewGraph.real_iad(), fusion=args.fusion, noise=args.noise,
                      share_side_weights=args.share_side_weights)
    print(format_breakdown(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
