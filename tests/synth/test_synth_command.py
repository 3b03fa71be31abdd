"""The ``multiflow synth`` subcommand end to end."""

from __future__ import annotations

import json

from multiflow.cli import main


def test_cli_writes_dataset_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["synth", "--out", str(out), "--classes", "cap", "--train", "1", "--test-good", "0",
               "--test-defect", "1", "--defects", "ZW", "--size", "32", "--views", "3", "--seed", "1",
               "--workers", "1"])
    assert rc == 0
    doc = json.loads((out / "realiad_jsons" / "bottle_cap.json").read_text())
    assert len(doc["train"]) == 3 and len(doc["test"]) == 3
    assert all("_C4_" not in e["image_path"] for e in doc["test"])
    assert "bottle_cap: 3 train / 3 test images" in capsys.readouterr().out
    rc = main(["synth", "--out", str(tmp_path / "bad"), "--classes", "teapot", "--workers", "1"])
    assert rc == 1
    assert "unknown synthetic class 'teapot'" in capsys.readouterr().err


def test_cli_defaults_match_the_library():
    import argparse

    from multiflow.commands import synth as cmd
    from multiflow.synth import DEFAULT_CLASSES, DEFAULT_DEFECTS

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(["--out", "x"])
    assert tuple(args.classes.split(",")) == DEFAULT_CLASSES
    assert tuple(args.defects.split(",")) == DEFAULT_DEFECTS
