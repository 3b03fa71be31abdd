"""multiflow.numbers: the one check for numbers from outside (finite, right kind, in range), and
the numeric options of the commands that use it as their argparse type."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.cli import main
from multiflow.errors import ConfigError
from multiflow.numbers import check_number, number_arg


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), True, "1", None])
def test_check_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ConfigError, match="threshold must be"):
        check_number(value, "threshold")


def test_check_number_ranges_and_kinds():
    assert check_number(np.float32(2.5), "x") == 2.5 and isinstance(check_number(3, "x", integer=True), int)
    with pytest.raises(ConfigError, match=r"q must be in \[0, 1\), got 1.0"):
        check_number(1.0, "q", ge=0, lt=1)
    with pytest.raises(ConfigError, match="n must be an integer, got 2.0"):
        check_number(2.0, "n", integer=True)
    parse = number_arg(gt=0)
    assert parse("0.5") == 0.5
    for text in ["0", "nan", "inf", "x"]:
        with pytest.raises(Exception, match="must be"):
            parse(text)


@pytest.mark.parametrize("argv, words", [
    (["synth", "--out", "x", "--pose-jitter", "nan"], "argument --pose-jitter: must be a finite number, got nan"),
    (["synth", "--out", "x", "--pose-jitter=-1"], "argument --pose-jitter: must be in [0, inf), got -1"),
    (["review", "x", "--max-upload-mb", "inf"], "argument --max-upload-mb: must be a finite number, got inf"),
    (["params", "--channels", "0"], "argument --channels: must be in (0, inf), got 0"),
    (["export", "--model", "m", "--out", "o", "--opset", "0"], "argument --opset: must be in (0, inf), got 0"),
])
def test_numeric_options_of_other_commands_are_checked(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / a) if a in ("x", "m", "o") else a for a in argv]  # nothing lands outside tmp_path
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
