"""Operator labels: an SQLite database in the run folder (``<run>/review/labels.sqlite``).

Every label is one row ``(id, category, sample_id, label, note, who, at)``; the current label of an
object is its latest row (the history is kept). ``label`` is one of :data:`LABELS`. The database is
in WAL mode and every operation opens its own connection (with a busy timeout), so concurrent
requests of the web server never share a connection.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from multiflow.errors import DataError

LABELS = ("confirmed_defect", "false_alarm", "unsure")
COLUMNS = ("id", "category", "sample_id", "label", "note", "who", "at")
MAX_NOTE = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    category TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('confirmed_defect', 'false_alarm', 'unsure')),
    note TEXT NOT NULL DEFAULT '',
    who TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_object ON labels (category, sample_id, id);
"""


class LabelStore:
    """The label database at ``path`` (created with its parents on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    def _connect(self) -> _Closing:
        try:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise DataError(f"cannot open the label database: {exc}", self.path) from None
        con.row_factory = sqlite3.Row
        return _Closing(con)

    def add(self, category: str, sample_id: str, label: str, *, note: str = "", who: str = "") -> dict[str, Any]:
        """Record a label; returns the stored row as a dict."""
        if label not in LABELS:
            raise DataError(f"unknown label {label!r} (one of {', '.join(LABELS)})", self.path)
        if len(note) > MAX_NOTE:
            raise DataError(f"note longer than {MAX_NOTE} characters", self.path)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO labels (category, sample_id, label, note, who, at) VALUES (?, ?, ?, ?, ?, ?)",
                (category, sample_id, label, note, who[:200], at),
            )
            row = con.execute("SELECT * FROM labels WHERE id = ?", (cur.lastrowid,)).fetchone()
        return dict(row)

    def current(self, category: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest label of every labelled object: ``{(category, sample_id): row}``."""
        q = ("SELECT l.* FROM labels l JOIN (SELECT MAX(id) AS id FROM labels"
             + (" WHERE category = ?" if category is not None else "") + " GROUP BY category, sample_id) m"
             " ON l.id = m.id ORDER BY l.id")
        with self._connect() as con:
            rows = con.execute(q, (category,) if category is not None else ()).fetchall()
        return {(r["category"], r["sample_id"]): dict(r) for r in rows}

    def history(self, category: str, sample_id: str) -> list[dict[str, Any]]:
        """Every label of one object, oldest first."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM labels WHERE category = ? AND sample_id = ? ORDER BY id",
                               (category, sample_id)).fetchall()
        return [dict(r) for r in rows]

    def to_csv(self) -> str:
        """Every row (the full history) as CSV text with the header :data:`COLUMNS` (``/labels.csv``)."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM labels ORDER BY id").fetchall()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])
        return buf.getvalue()


class _Closing:
    """A connection used as ``with``: commits (autocommit mode) and always closes."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()


def read_labels(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """Current labels ``{(category, sample_id): label}`` from a label database or its CSV export.

    In a CSV the last row of an object wins (the export is in time order); columns ``category``,
    ``sample_id`` and ``label`` are required.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("label file not found", path)
    if path.suffix.lower() in (".db", ".sqlite", ".sqlite3"):
        try:
            return {k: r["label"] for k, r in LabelStore(path).current().items()}
        except sqlite3.DatabaseError as exc:
            raise DataError(f"not a label database: {exc}", path) from None
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"category", "sample_id", "label"} <= set(reader.fieldnames):
                raise DataError(f"a label CSV needs the columns category, sample_id, label (has {reader.fieldnames})",
                                path)
            out: dict[tuple[str, str], str] = {}
            for n, row in enumerate(reader, start=2):
                if row["label"] not in LABELS:
                    raise DataError(f"line {n}: unknown label {row['label']!r} (one of {', '.join(LABELS)})", path)
                out[(row["category"], row["sample_id"])] = row["label"]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read labels: {exc}", path) from None
    return out
