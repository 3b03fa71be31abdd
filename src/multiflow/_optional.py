"""Optional dependencies: the extras of ``pyproject.toml`` and a clear error when one is missing.

The core install (``pip install multiflow``) trains, tests and predicts. ONNX export and the HTTP
service need the packages of an extra (``pip install 'multiflow[export]'``, ``'multiflow[serve]'``,
or ``'multiflow[all]'``); :func:`require` imports such a package or raises
:class:`~multiflow.errors.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from multiflow.errors import MissingDependencyError

#: import name -> (distribution name, extra that installs it); mirrors pyproject.toml's extras
OPTIONAL: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "export"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "jinja2": ("jinja2", "serve"),
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import the optional package ``module`` (a key of :data:`OPTIONAL`) for ``purpose``.

    Raises:
        MissingDependencyError: the package cannot be imported; the message names the package,
            what needs it and the ``pip install 'multiflow[<extra>]'`` command.
    """
    dist, extra = OPTIONAL[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {dist!r}, which cannot be imported ({exc}); "
            f"install it with: pip install 'multiflow[{extra}]'"
        ) from None
