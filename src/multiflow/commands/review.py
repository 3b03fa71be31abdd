"""``multiflow review``: a local web app to inspect a tested run, label objects, choose thresholds."""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "review"
HELP = "review a tested run in the browser: objects by score, all views, threshold, operator labels, try a part"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `multiflow fit` + `multiflow test` (results/<run>)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a further host name the browser may use to reach the server (repeatable; e.g. the machine's "
                   "name on the network with --host 0.0.0.0); requests naming any other Host are refused")
    p.add_argument("--page-size", type=int, default=100, help="objects per page of a class (default 100)")
    p.add_argument("--max-upload-mb", type=number_arg(gt=0), default=64.0, help="largest 'try a part' upload in MiB (default 64)")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="largest uploaded image in pixels")
    p.add_argument("--device", default="auto", help="where 'try a part' scores: auto (CUDA when available), cpu, "
                   "cuda or cuda:N")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from multiflow._optional import require
    from multiflow.errors import CheckpointError, ConfigError

    for module in ("fastapi", "uvicorn", "python_multipart", "jinja2"):
        require(module, purpose="multiflow review")
    from multiflow.review.app import ReviewSettings, serve_review

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.page_size < 1 or args.max_upload_mb <= 0 or args.max_image_pixels <= 0:
        raise ConfigError("--page-size, --max-upload-mb and --max-image-pixels must be positive")
    if not Path(args.run).is_dir():
        raise CheckpointError("run folder not found", args.run)
    settings = ReviewSettings(page_size=args.page_size, max_upload_bytes=int(args.max_upload_mb * 2**20),
                              max_image_pixels=args.max_image_pixels, device=args.device,
                              allow_hosts=tuple(args.allow_host))
    serve_review(args.run, host=args.host, port=args.port, settings=settings, log_level=args.log_level)
    return 0
