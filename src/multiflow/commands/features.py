"""``multiflow features``: extract and cache backbone features (and foreground masks) of the
train and test splits of every class, exactly as ``multiflow fit`` will read them.

The backbone, the mask provider and the cache are built from the same configuration and the same
factories as ``fit`` (:mod:`multiflow.engine.factories`, :func:`multiflow.engine.preprocess.prepare_split`):
give the same ``--config``/``--set`` options and ``fit`` finds every entry ready.
"""

from __future__ import annotations

import argparse

from multiflow.commands._common import add_config_options, overrides_from

NAME = "features"
HELP = "Extract and cache frozen-backbone features and foreground masks, as `multiflow fit` reads them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)
    parser.add_argument("--category", help="one class (same as --classes NAME)")
    parser.add_argument("--cache", help="cache folder (same as --set features.cache_dir=...)")
    parser.add_argument("--splits", default="train,test", help="comma-separated splits (default: train,test)")
    parser.add_argument("--device", help="auto (CUDA when available), cpu, cuda or cuda:N (same as --set train.device=...)")
    parser.add_argument("--rebuild-corrupt", action="store_true", help="rebuild a corrupt cache entry instead of failing")


def config_from(args: argparse.Namespace):
    """The run configuration these arguments describe (what ``fit`` gets from the same options)."""
    from multiflow.config import load_config

    ov = overrides_from(args)
    if args.category:
        ov.append(f"data.categories=[{args.category}]")
    if args.cache:
        ov.append(f"features.cache_dir={args.cache}")
    if getattr(args, "device", None):
        ov.append(f"train.device={args.device}")
    return load_config(args.config, ov).validate()


def run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the ranks share the samples; rank 0 writes the cache and reports."""
    from multiflow.engine.distributed import init_distributed
    from multiflow.engine.factories import build_extractor, list_categories, run_device
    from multiflow.engine.preprocess import prepare_split

    cfg = config_from(args)
    ctx = init_distributed()
    say = print if ctx.is_main else (lambda *a, **k: None)
    device, _ = run_device(cfg.train)
    extractor = build_extractor(cfg.features).to(device)
    grid = extractor.feature_size()
    say(f"backbone {extractor.name} ({extractor.weights_source}) on {device}: {extractor.channels} channels, "
        f"stride {extractor.stride}, input {extractor.input_size} -> grid {grid[0]}x{grid[1]}")
    on_corrupt = "rebuild" if args.rebuild_corrupt else "error"
    for category in list_categories(cfg.data):
        for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
            prep = prepare_split(cfg, category, split, extractor, progress=ctx.is_main and not args.quiet,
                                 on_corrupt=on_corrupt, device=device)
            say(f"{category} {split}: features {tuple(prep.features.shape)} {prep.features.dtype}")
            if prep.masks is not None:
                share = float(prep.masks.mean()) if prep.masks.size else 0.0
                say(f"{category} {split}: masks ({cfg.masks.provider}) {tuple(prep.masks.shape)}, "
                    f"foreground {share:.1%}")
    return 0
