"""Write one benchmark's section of ``BENCHMARKS.md`` (regenerated, never edited by hand).

Each benchmark script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``;
re-running it replaces exactly that section and leaves the others alone.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

from multiflow._atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every section below is written by the script it names; rerun that script to regenerate it.\n"
    "Timings come from a 2-core CPU machine unless stated; each section reports the CPU share the\n"
    "run got (process CPU time / (wall time x cores)), since anything else running slows torch.\n"
)


def update_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``name`` of ``BENCHMARKS.md`` with ``markdown``, atomically."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(path, text)


class CpuShare:
    """Context manager measuring the share of the machine's CPU this process got.

    ``share = (user + system CPU seconds) / (wall seconds * cores)``.
    """

    def __enter__(self) -> "CpuShare":
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.cores = os.cpu_count() or 1
        self.share = self.cpu / max(self.wall * self.cores, 1e-9)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_line() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, {time.strftime('%Y-%m-%d')}"
    )
