"""``multiflow serve``: HTTP inference service for one trained class model."""

from __future__ import annotations

import argparse

NAME = "serve"
HELP = "serve a trained class model over HTTP (POST /predict with one image per view, GET /health)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained class folder: results/<run>/<class>")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threshold", type=float, help="override the calibrated decision threshold")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="largest image in pixels (default 25e6)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: st-network convolutions in bf16 autocast (NLL in fp32)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from multiflow.deploy.serve import ServiceLimits, serve
    from multiflow.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.max_request_mb <= 0 or args.max_image_pixels <= 0:
        raise ConfigError("--max-request-mb and --max-image-pixels must be positive")
    limits = ServiceLimits(max_request_bytes=int(args.max_request_mb * 2**20), max_image_pixels=args.max_image_pixels)
    serve(args.model, host=args.host, port=args.port, threshold=args.threshold, limits=limits, log_level=args.log_level,
          device=args.device, precision=args.precision)
    return 0
