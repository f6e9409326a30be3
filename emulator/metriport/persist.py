"""The fake Metriport's state on disk: a SQLite file beside the emulator's database (`medport emulate
--db FILE` puts it at `sibling_path(FILE)`), so restarting both services keeps them coherent — the
patients the Medplum Patients are linked to, their queries, the webhook settings and the delivery log, the
documents and the files behind presigned URLs, with their expiry.

Plain Python, thread-safe; the backend calls `put`/`delete` as it changes an object (write-through: a
`kill -9` loses nothing written before it). One row per object (`kind`, `key`, JSON); files in their own
table as blobs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from ..locks import OwnerLock, lock_path, open_versioned

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,
                                    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS files (token TEXT PRIMARY KEY, name TEXT NOT NULL, content_type TEXT NOT NULL,
                                  expires_at REAL NOT NULL, content BLOB NOT NULL);
"""


def sibling_path(db_path: str) -> str:
    """Where the fake keeps its state next to the emulator's SQLite file: `x/emulator.sqlite3` →
    `x/emulator.metriport.sqlite3`."""
    root, ext = os.path.splitext(db_path)
    return f"{root}.metriport{ext or '.sqlite3'}"


STORE_KIND, STORE_VERSION = "medport-fake-metriport", 1


class StateStore:
    def __init__(self, path: str):
        self.path = path
        # one fake per state file: two would hand out the same Metriport ids
        self.lock = OwnerLock(
            lock_path(path),
            f"the fake Metriport's state {path}",
            "stop it, or pass another file (medport emulate --db)",
        ).acquire()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                open_versioned(
                    self._conn, path, kind=STORE_KIND, version=STORE_VERSION, schema=SCHEMA, tables={"objects", "files"}
                )
        except BaseException:
            self.close()
            raise

    # -- objects ------------------------------------------------------------------------------
    def put(self, kind: str, key: str, data: Any) -> None:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            # an upsert that keeps the row's place (the delivery log is read back in insertion order)
            self._conn.execute(
                "INSERT INTO objects (kind, key, data) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data",
                (kind, key, text),
            )

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM objects WHERE kind = ? AND key = ?", (kind, key))

    def all(self, kind: str) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT key, data FROM objects WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()
        return [(k, json.loads(d)) for k, d in rows]

    def get(self, kind: str, key: str) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT data FROM objects WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    # -- files ---------------------------------------------------------------------------------
    def put_file(self, token: str, name: str, content_type: str, expires_at: float, content: bytes) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO files (token, name, content_type, expires_at, content) VALUES (?, ?, ?, ?, ?)",
                (token, name, content_type, expires_at, content),
            )

    def files(self) -> Iterator[tuple[str, str, str, float, bytes]]:
        with self._lock:
            rows = self._conn.execute("SELECT token, name, content_type, expires_at, content FROM files").fetchall()
        yield from rows

    # -- lifecycle -----------------------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM objects")
            self._conn.execute("DELETE FROM files")
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self.lock.release()
