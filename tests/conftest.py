"""Suite-wide set-up: ``tests/`` is importable, so helpers only tests use live in ``tests/support/``
(never in the package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
