"""``multiflow features``: extract and cache backbone features (and foreground masks) of a
Real-IAD-format data set, for the train and test splits of one class."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "features"
HELP = "Extract and cache frozen-backbone features (and foreground masks) of a Real-IAD-format data set."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data set root (holding realiad_<res>/ and the JSONs)")
    parser.add_argument("--category", required=True, help="object class, e.g. audiojack")
    parser.add_argument("--splits", default="train,test", help="comma-separated splits (default: train,test)")
    parser.add_argument("--resolution", default=None, help="image folder realiad_<resolution> (256, 512, 1024, raw)")
    parser.add_argument("--json-variant", default="realiad_jsons")
    parser.add_argument("--backbone", default="lite0", help="'lite0' (offline default), 'b5' (paper) or a timm name")
    parser.add_argument("--layers", default=None, help="layer spec for non-preset backbones: blocks:N or features:I")
    parser.add_argument("--weights", default=None, help="local weights file (else lite0: embedded; others: hub)")
    parser.add_argument("--random-weights", action="store_true", help="random initialisation (timing/shape tests)")
    parser.add_argument("--input-size", type=int, default=None, help="network input side (default: backbone's)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side images are loaded at (also the masks' resolution); default: the input size")
    parser.add_argument("--cache", required=True, help="cache folder for features and masks")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch (x views images)")
    parser.add_argument("--workers", type=int, default=0, help="data loading worker processes")
    parser.add_argument("--masks", choices=("none", "threshold", "isnet", "file"), default=None,
                        help="also compute foreground masks with this provider")
    parser.add_argument("--mask-root", default=None,
                        help="--masks file: folder mirroring the image folder (default: silhouettes_<res> next to realiad_<res>)")
    parser.add_argument("--isnet-variant", choices=("small", "medium"), default="medium")
    parser.add_argument("--keep-full-masks", action="store_true", help="also cache masks at image resolution")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--rebuild-corrupt", action="store_true", help="rebuild a corrupt cache entry instead of failing")


def _provider(args: argparse.Namespace, dataset):
    from multiflow.errors import ConfigError
    from multiflow.features.masks import make_provider

    if args.masks == "file":
        image_root = Path(getattr(dataset, "image_root", args.data))
        mask_root = Path(args.mask_root) if args.mask_root else None
        if mask_root is None:
            if not image_root.name.startswith("realiad_"):
                raise ConfigError("--masks file needs --mask-root (image folder is not realiad_<res>)")
            mask_root = image_root.parent / ("silhouettes_" + image_root.name[len("realiad_"):])
        return make_provider("file", mask_root=mask_root, image_root=image_root)
    if args.masks == "isnet":
        return make_provider("isnet", variant=args.isnet_variant)
    return make_provider(args.masks)


def run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the ranks share the samples; rank 0 writes the cache and reports."""
    from multiflow.data.realiad import RealIADDataset
    from multiflow.engine.distributed import init_distributed
    from multiflow.features.backbones import build_backbone
    from multiflow.features.cache import extract_features
    from multiflow.features.masks import compute_masks

    from multiflow.device import resolve_device

    ctx = init_distributed()
    say = print if ctx.is_main else (lambda *a, **k: None)
    progress = ctx.is_main and not args.quiet
    device = ctx.device if ctx.enabled else resolve_device(args.device)
    extractor = build_backbone(
        args.backbone, input_size=args.input_size, weights=args.weights,
        pretrained=not args.random_weights, layers=args.layers,
    ).to(device)
    image_size = args.image_size or extractor.input_size
    grid = extractor.feature_size()
    on_corrupt = "rebuild" if args.rebuild_corrupt else "error"
    say(f"backbone {extractor.name} ({extractor.weights_source}) on {device}: {extractor.channels} channels, "
          f"stride {extractor.stride}, input {extractor.input_size} -> grid {grid[0]}x{grid[1]}")
    resolution = args.resolution
    if resolution is not None and resolution.isdigit():
        resolution = int(resolution)
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        dataset = RealIADDataset(
            args.data, args.category, split=split, json_variant=args.json_variant, resolution=resolution,
            image_size=image_size, load_masks=False,
        )
        feats = extract_features(
            dataset, extractor, args.cache, batch_size=args.batch_size, dtype=args.dtype,
            num_workers=args.workers, on_corrupt=on_corrupt, progress=progress, ctx=ctx,
        )
        say(f"{split}: features {tuple(feats.features.shape)} {feats.features.dtype} -> {feats.path}")
        if args.masks:
            masks = compute_masks(
                dataset, _provider(args, dataset), args.cache, grid=grid, keep_full=args.keep_full_masks,
                batch_size=args.batch_size, num_workers=args.workers, on_corrupt=on_corrupt,
                progress=progress, ctx=ctx,
            )
            share = float(masks.grid.mean()) if masks.grid.size else 0.0
            say(f"{split}: masks ({args.masks}) {tuple(masks.grid.shape)}, foreground {share:.1%} -> {masks.path}")
    return 0
