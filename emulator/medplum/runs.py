"""Emulator-side SQLite: bot execution records for `/_emulator/runs` and small key/value metadata
(the per-install JWT secret). Kept in its own file next to the FHIR store (`<db>.meta.sqlite3`)
so it never contends with the store's write lock; in memory when the store is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..locks import open_versioned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  bot_id TEXT, bot_name TEXT, trigger TEXT, outcome TEXT,
  duration_ms REAL, logs TEXT, started TEXT, error TEXT,
  subscription_id TEXT, resource TEXT, audit_event TEXT, extra TEXT
);
CREATE INDEX IF NOT EXISTS runs_seq ON runs(seq);
CREATE INDEX IF NOT EXISTS runs_bot ON runs(bot_id);
"""

_FIELDS = (
    "id",
    "bot_id",
    "bot_name",
    "trigger",
    "outcome",
    "duration_ms",
    "logs",
    "started",
    "error",
    "subscription_id",
    "resource",
    "audit_event",
)


def meta_path_for(db_path: str | None) -> str | None:
    if not db_path:
        return None
    p = Path(db_path)
    return str(p.with_name(p.stem + ".meta.sqlite3"))


class RunStore:
    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        if path:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        open_versioned(
            self._conn, path, kind="medport-emulator-runs", version=1, schema=_SCHEMA, tables={"meta", "runs"}
        )
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM runs").fetchone()
        self._seq = int(row[0])

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- runs ---------------------------------------------------------------------------
    def add(self, run: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            values = [run.get(f) for f in _FIELDS]
            extra = {k: v for k, v in run.items() if k not in _FIELDS}
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs({', '.join(_FIELDS)}, seq, extra) VALUES "
                f"({', '.join('?' * len(_FIELDS))}, ?, ?)",
                (*values, self._seq, json.dumps(extra) if extra else None),
            )

    def list(
        self, bot: str | None = None, failed: bool | None = None, limit: int = 100, trigger: str | None = None
    ) -> list[dict]:
        sql = f"SELECT {', '.join(_FIELDS)}, extra FROM runs"
        where: list[str] = []
        args: list[str | int] = []
        if bot:
            where.append("(bot_id = ? OR bot_name = ?)")
            args += [bot, bot]
        if failed is True:
            where.append("outcome != 'success'")
        elif failed is False:
            where.append("outcome = 'success'")
        if trigger:
            where.append("trigger LIKE ?")
            args.append(trigger + "%")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(max(0, int(limit)))
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        out = []
        for row in rows:
            rec = dict(zip(_FIELDS, row[:-1]))
            if row[-1]:
                rec.update(json.loads(row[-1]))
            out.append(rec)
        return out

    def clear(self) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM runs")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
