"""Write the README's demo section from a finished `make demo` run.

    /usr/bin/time -f %e make demo 2> /tmp/demo.time     # fresh clone: includes the set-up
    .venv/bin/python scripts/record_demo.py --run results/demo/run --wall "$(tail -1 /tmp/demo.time)"

Reads ``<run>/metrics.md`` and ``<run>/timing.json`` (written by ``multiflow demo``) and replaces the
text between ``<!-- BEGIN demo -->`` and ``<!-- END demo -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

from multiflow._atomic import write_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/demo/run")
    ap.add_argument("--wall", type=float, help="wall seconds of the whole `make demo` (set-up included)")
    ap.add_argument("--cpu-share", type=float, help="CPU share the run got (CPU s / (wall s x cores))")
    args = ap.parse_args()
    run = Path(args.run)
    table = (run / "metrics.md").read_text().split("\n\n")[0].strip()
    timing = json.loads((run / "timing.json").read_text())
    lines = [
        f"Last recorded `make demo` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores):",
        "",
    ]
    if args.wall:
        share = f", CPU share {args.cpu_share:.0%}" if args.cpu_share else ""
        lines.append(f"- whole `make demo` on a fresh clone, set-up included: **{args.wall / 60:.1f} min**{share}")
    lines.append(
        f"- `multiflow demo` itself: {timing['total_s'] / 60:.1f} min (data {timing['data_s']:.0f} s, features + masks + "
        f"training {timing['fit_s']:.0f} s, evaluation and pictures {timing['total_s'] - timing['data_s'] - timing['fit_s']:.0f} s)"
    )
    lines += ["", "Metrics (%, synthetic demo data, one seed):", "", table]
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = "<!-- BEGIN demo -->\n" + "\n".join(lines) + "\n<!-- END demo -->"
    text, n = re.subn(r"<!-- BEGIN demo -->.*?<!-- END demo -->", lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit("README.md has no demo section markers")
    write_text(readme, text)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
