"""Local state one process owns at a time, and stores that say which layout they hold.

`OwnerLock(path)`: an exclusive `flock` on a lock file beside what it guards (a SQLite store, the `.medport/`
folder). The kernel drops it when the process exits, even on `kill -9`, so a crash never leaves a stale lock.
Its file holds the owner's pid and, once known, its port and URL: a second process is refused with `InUse`, one
line naming the first. Where `fcntl` is missing (Windows) nothing is locked.

`open_versioned(conn, path, kind, version, schema, tables)`: every medport SQLite store carries a `medport_store`
table with two rows, `kind` and `version`. A new file is created at the current version; a file written before
stores had a version (only medport's own tables) is stamped; a newer version, another kind or foreign tables is
refused with `StoreRefused`, one line saying what to do.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class InUse(RuntimeError):
    """Another live process owns it; the message (one line) names that process and what to do."""


class StoreRefused(RuntimeError):
    """A store this medport cannot read (newer, other kind, not medport's); the message says what to do."""


def lock_path(path: str) -> str:
    return path + ".lock"


class OwnerLock:
    """An exclusive lock on `path` (a file created if missing), held until `release()` or process exit."""

    def __init__(self, path: str, what: str, hint: str):
        self.path, self.what, self.hint = path, what, hint
        self._fd: int | None = None

    def acquire(self) -> OwnerLock:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise InUse(
                    f"{self.what} is in use by another medport emulator ({describe_owner(owner)}): {self.hint}"
                ) from None
        self._fd = fd
        self.describe()
        return self

    def describe(self, **info) -> None:
        """Record who holds the lock (pid, and e.g. port and base_url once known) for a refused second process."""
        if self._fd is None:
            return
        body = json.dumps({"pid": os.getpid(), **info}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, body, 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_owner(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_owner(owner: dict) -> str:
    parts = [f"pid {owner['pid']}" if owner.get("pid") else "pid unknown"]
    if owner.get("port"):
        parts.append(f"port {owner['port']}")
    if owner.get("base_url"):
        parts.append(str(owner["base_url"]))
    if len(parts) == 1:
        parts.append("starting")
    return ", ".join(parts)


def open_versioned(
    conn: sqlite3.Connection,
    path: str | None,
    *,
    kind: str,
    version: int,
    schema: str,
    tables: set[str],
    migrations: dict[int, Callable[[sqlite3.Connection], None]] | None = None,
) -> int:
    """Create or check the store behind `conn` (see the module's docstring). `tables`: the tables `schema` makes
    (an unversioned file holding only these is an older medport's store). `migrations[n]` turns version n into
    n + 1. Returns the version the file had (0: unversioned or new)."""
    where = path or "the in-memory store"
    found = {
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not r[0].startswith("sqlite_")
    }
    stamp = {}
    if "medport_store" in found:
        stamp = dict(conn.execute("SELECT key, value FROM medport_store").fetchall())
    had = int(stamp.get("version") or 0) if str(stamp.get("version") or "0").isdigit() else -1
    if stamp.get("kind") not in (None, kind):
        raise StoreRefused(f"{where} holds a {stamp.get('kind')} store, not a {kind} store: pass another file")
    if had < 0 or had > version:
        raise StoreRefused(
            f"{where} was written by a newer medport (store version {stamp.get('version')}; this "
            f"medport reads {kind} version {version} at most): upgrade medport, or pass another file"
        )
    foreign = found - tables - {"medport_store"}
    if foreign and not stamp:
        raise StoreRefused(
            f"{where} is not a {kind} store (it has the tables {', '.join(sorted(foreign))}): pass another file"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS medport_store (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for statement in _statements(schema):
            conn.execute(statement)
        # a new file gets the current layout; an unversioned one is version 1, the layout before stores had one
        for n in range(had or (1 if found else version), version):
            (migrations or {})[n](conn)
        conn.execute("INSERT OR REPLACE INTO medport_store (key, value) VALUES ('kind', ?)", (kind,))
        conn.execute("INSERT OR REPLACE INTO medport_store (key, value) VALUES ('version', ?)", (str(version),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return had


def _statements(schema: str) -> list[str]:
    return [s.strip() for s in schema.split(";") if s.strip()]
