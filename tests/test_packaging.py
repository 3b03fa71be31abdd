"""Packaging: the wheel installs into a fresh venv, declares its extras, and a missing extra is named.

The wheel is built from a copy of the project (no ``build/`` or ``*.egg-info`` left in the
checkout) and installed with ``--no-deps`` into a new venv; that venv sees the test interpreter's
installed dependencies (torch, ...) through a ``.pth`` file, so nothing is downloaded, while
``multiflow`` itself must come from the venv's own site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from multiflow import _optional
from multiflow.cli import main
from multiflow.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)])
    (found,) = (tmp / "dist").glob("multiflow-*.whl")
    return found


def test_wheel_declares_the_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
        assert "multiflow/_optional.py" in zf.namelist()
        names = set(zf.namelist())
    # the review app's pages: every template and static file of the source tree is in the wheel
    review = ROOT / "src" / "multiflow" / "review"
    for f in [*review.glob("templates/*.html"), *review.glob("static/*")]:
        assert f"multiflow/review/{f.parent.name}/{f.name}" in names, f.name
    assert any(n.startswith("multiflow/review/templates/") for n in names)
    extras = set(meta.get_all("Provides-Extra"))
    assert {"export", "serve", "all", "test"} <= extras
    requires = meta.get_all("Requires-Dist")

    def needs(extra: str) -> set[str]:
        return {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if f'extra == "{extra}"' in r}

    assert needs("export") == {"onnx"}
    assert needs("serve") == {"fastapi", "uvicorn", "python-multipart", "jinja2"}
    # every optional import the code guards is declared in the extra its error message names
    for dist, extra in _optional.OPTIONAL.values():
        assert dist in needs(extra), (dist, extra)
    core = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert not core & {"onnx", "fastapi", "uvicorn", "python-multipart"}


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the test interpreter's dependencies, appended after the venv's own site-packages
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    script = venv / ("Scripts/multiflow.exe" if os.name == "nt" else "bin/multiflow")
    out = _run([str(script), "--help"], cwd=tmp_path, env=env).stdout
    assert "usage: multiflow" in out and "export" in out and "serve" in out
    where = _run([str(py), "-c", "import multiflow; print(multiflow.__file__)"], cwd=tmp_path, env=env).stdout
    assert Path(where.strip()).resolve().is_relative_to(site.resolve())
    assert not Path(where.strip()).resolve().is_relative_to(ROOT / "src")


def _hide(monkeypatch, module: str) -> None:
    """Make ``import module`` fail as if the package were not installed."""
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("module, extra", [("onnx", "export"), ("fastapi", "serve"), ("uvicorn", "serve"),
                                           ("python_multipart", "serve"), ("jinja2", "serve")])
def test_require_names_the_extra(monkeypatch, module, extra):
    _hide(monkeypatch, module)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'multiflow\[{extra}\]'"):
        _optional.require(module, purpose="this feature")


def test_export_without_onnx_names_the_extra(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "onnx")
    code = main(["export", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 1
    assert "ONNX export needs the optional package 'onnx'" in err and "pip install 'multiflow[export]'" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module, dist", [("uvicorn", "uvicorn"), ("fastapi", "fastapi"),
                                          ("python_multipart", "python-multipart")])
def test_serve_without_its_packages_names_the_extra(monkeypatch, tmp_path, capsys, module, dist):
    _hide(monkeypatch, module)
    code = main(["serve", "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"multiflow serve needs the optional package '{dist}'" in err
    assert "pip install 'multiflow[serve]'" in err


def test_review_without_jinja2_names_the_extra(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "jinja2")
    code = main(["review", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "multiflow review needs the optional package 'jinja2'" in err and "pip install 'multiflow[serve]'" in err
