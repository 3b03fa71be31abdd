"""``multiflow serve``: HTTP inference service for one trained class model."""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "serve"
HELP = "serve a trained class model over HTTP (POST /predict with one image per view, GET /health)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained class folder: results/<run>/<class>")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=number_arg(integer=True, ge=1, le=65535), default=8000)
    p.add_argument("--threshold", type=number_arg(), help="override the calibrated decision threshold")
    p.add_argument("--max-request-mb", type=number_arg(gt=0), default=64.0, help="largest request body in MiB (default 64)")
    p.add_argument("--max-image-pixels", type=number_arg(integer=True, gt=0), default=25_000_000, help="largest image in pixels (default 25e6)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="bf16: st-network convolutions in bf16 autocast (NLL in fp32)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from multiflow.deploy.serve import ServiceLimits, serve

    # the numbers were checked while parsing (finite, in range: multiflow.numbers.number_arg)
    limits = ServiceLimits(max_request_bytes=int(args.max_request_mb * 2**20), max_image_pixels=args.max_image_pixels)
    serve(args.model, host=args.host, port=args.port, threshold=args.threshold, limits=limits, log_level=args.log_level,
          device=args.device, precision=args.precision)
    return 0
