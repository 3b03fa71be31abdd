"""benchmarks/lib/results.py: one set of settings per results folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.lib.results import check_settings  # noqa: E402
from multiflow.errors import ConfigError  # noqa: E402


def test_first_run_writes_settings_and_a_later_run_must_match(tmp_path):
    check_settings(tmp_path, {"epochs": 1, "lr": 0.001})
    assert json.loads((tmp_path / "settings.json").read_text()) == {"epochs": 1, "lr": 0.001}
    check_settings(tmp_path, {"epochs": 1, "lr": 0.001})  # the same settings: fine
    with pytest.raises(ConfigError, match=r"epochs: 1 there, 2 now.*use another --out"):
        check_settings(tmp_path, {"epochs": 2, "lr": 0.001})
    with pytest.raises(ConfigError, match="batch: None there, 4 now"):  # a new key is a change too
        check_settings(tmp_path, {"epochs": 1, "lr": 0.001, "batch": 4})


def test_defaults_stand_in_for_keys_older_folders_lack(tmp_path):
    check_settings(tmp_path, {"epochs": 1})
    check_settings(tmp_path, {"epochs": 1, "patience": 0}, defaults={"patience": 0})
    with pytest.raises(ConfigError, match="patience: 0 there, 3 now"):
        check_settings(tmp_path, {"epochs": 1, "patience": 3}, defaults={"patience": 0})


def test_unreadable_settings_name_the_file(tmp_path):
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match="settings.json: unreadable settings"):
        check_settings(tmp_path, {"epochs": 1})
