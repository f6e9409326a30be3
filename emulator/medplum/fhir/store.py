"""SQLite-backed FHIR repository: current versions, full history, search index rows, change listeners.

One connection guarded by a re-entrant lock (the HTTP server is threaded; SQLite serialises writers
anyway). `transaction()` groups several writes into one SQLite transaction (nested = savepoint);
listeners run after the outermost commit, never for rolled-back or no-op writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from medport import jsoncodec

from ...locks import OwnerLock, lock_path, open_versioned
from ..errors import BadRequest, Gone, NotFound, PreconditionFailed
from ..ids import now_instant, uuid4
from . import values as V
from .search import SearchRequest, balanced, cursor_sql, filter_sql, parse_search, sort_sql
from .searchparams import patient_compartment_params, registry

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
  rid INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL, vid TEXT NOT NULL,
  lu REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, project TEXT, content TEXT NOT NULL,
  UNIQUE (type, id));
CREATE INDEX IF NOT EXISTS resources_type_lu ON resources (type, deleted, lu);
CREATE TABLE IF NOT EXISTS history (
  seq INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL, vid TEXT NOT NULL, lu REAL NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0, content TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_tid ON history (type, id);
CREATE UNIQUE INDEX IF NOT EXISTS history_vid ON history (type, id, vid);
CREATE TABLE IF NOT EXISTS idx_token (rid INTEGER NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT);
CREATE INDEX IF NOT EXISTS idx_token_v ON idx_token (param, code, system);
CREATE INDEX IF NOT EXISTS idx_token_r ON idx_token (rid);
CREATE TABLE IF NOT EXISTS idx_string (rid INTEGER NOT NULL, param TEXT NOT NULL, value TEXT, raw TEXT);
CREATE INDEX IF NOT EXISTS idx_string_v ON idx_string (param, value);
CREATE INDEX IF NOT EXISTS idx_string_r ON idx_string (rid);
CREATE TABLE IF NOT EXISTS idx_ref (rid INTEGER NOT NULL, param TEXT NOT NULL, ref TEXT);
CREATE INDEX IF NOT EXISTS idx_ref_v ON idx_ref (param, ref);
CREATE INDEX IF NOT EXISTS idx_ref_r ON idx_ref (rid);
CREATE TABLE IF NOT EXISTS idx_date (rid INTEGER NOT NULL, param TEXT NOT NULL, lo REAL, hi REAL);
CREATE INDEX IF NOT EXISTS idx_date_v ON idx_date (param, lo);
CREATE INDEX IF NOT EXISTS idx_date_r ON idx_date (rid);
CREATE TABLE IF NOT EXISTS idx_num (rid INTEGER NOT NULL, param TEXT NOT NULL, value REAL, system TEXT, code TEXT);
CREATE INDEX IF NOT EXISTS idx_num_v ON idx_num (param, value);
CREATE INDEX IF NOT EXISTS idx_num_r ON idx_num (rid);
CREATE TABLE IF NOT EXISTS idx_text (rid INTEGER NOT NULL, param TEXT NOT NULL, value TEXT, raw TEXT);
CREATE INDEX IF NOT EXISTS idx_text_v ON idx_text (param, value);
CREATE INDEX IF NOT EXISTS idx_text_r ON idx_text (rid);
CREATE TABLE IF NOT EXISTS binary_content (id TEXT NOT NULL, vid TEXT NOT NULL, content BLOB NOT NULL,
  PRIMARY KEY (id, vid));
"""
STORE_KIND, STORE_VERSION = "medport-emulator-fhir", 2


def _text_index_keeps_raw(c: sqlite3.Connection) -> None:
    """1 → 2: token texts keep their raw value (`idx_text.raw`); `binary_content` comes with the schema."""
    if "raw" not in {row[1] for row in c.execute("PRAGMA table_info(idx_text)")}:
        c.execute("ALTER TABLE idx_text ADD COLUMN raw TEXT")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _text_index_keeps_raw}
_INDEX_TABLES = ("idx_token", "idx_string", "idx_ref", "idx_date", "idx_num", "idx_text")
_INDEX_INSERTS = (
    "INSERT INTO idx_token (rid, param, system, code) VALUES (?,?,?,?)",
    "INSERT INTO idx_string (rid, param, value, raw) VALUES (?,?,?,?)",
    "INSERT INTO idx_ref (rid, param, ref) VALUES (?,?,?)",
    "INSERT INTO idx_date (rid, param, lo, hi) VALUES (?,?,?,?)",
    "INSERT INTO idx_num (rid, param, value, system, code) VALUES (?,?,?,?,?)",
    "INSERT INTO idx_text (rid, param, value, raw) VALUES (?,?,?,?)",
)


@dataclass
class ChangeEvent:
    interaction: str  # "create" | "update" | "delete"
    resource: dict  # the new version, or the deleted resource
    previous: dict | None


def _strip_meta(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "meta"}


def _meta_sans_server(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    return {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated", "author", "project", "compartment")}


def same_content(a: dict, b: dict) -> bool:
    """Equal ignoring server-managed meta (Medplum's no-op update detection)."""
    return _strip_meta(a) == _strip_meta(b) and (_meta_sans_server(a.get("meta")) or None) == (
        _meta_sans_server(b.get("meta")) or None
    )


_dumps = jsoncodec.dumps_text  # the stored JSON text: compact
_loads = jsoncodec.loads


class Repository:
    def __init__(self, path: str | None = None):
        self.path = path if path not in (None, "", ":memory:") else None
        # one emulator per database: a second one is refused before it touches the file
        self.lock = (
            OwnerLock(
                lock_path(self.path),
                f"the database {self.path}",
                "stop it, or pass --db with another file (or --memory)",
            ).acquire()
            if self.path
            else None
        )
        self._conn = sqlite3.connect(self.path or ":memory:", check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._depth = 0
        self.writes = 0  # resources written (and deleted) so far: tells a caller it wrote
        self._owner: int | None = None  # thread holding the outermost transaction
        self._pending: list[ChangeEvent] = []
        # token index rows written in the current outermost transaction: (type, param, system, code)
        self._tx_tokens: set[tuple] = set()
        # Index rows written in the open transaction but not yet inserted (one executemany per table at commit,
        # not ~5 per resource): every query of the index tables flushes them first (`_flush`).
        self._pend: tuple[list, ...] = tuple([] for _ in _INDEX_TABLES)
        self._pend_rids: set[int] = set()
        c = self._conn
        if self.path:
            c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA cache_size=-65536")
        if self.path:
            c.execute("PRAGMA wal_autocheckpoint=10000")
        try:
            open_versioned(
                c,
                self.path,
                kind=STORE_KIND,
                version=STORE_VERSION,
                schema=SCHEMA,
                tables={"resources", "history", "binary_content", *_INDEX_TABLES},
                migrations=MIGRATIONS,
            )
        except BaseException:
            self.close()
            raise
        self._params = registry()
        self._max_vars = c.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    # ------------------------------------------------------------------ infrastructure
    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self.lock is not None:
                self.lock.release()

    def add_listener(self, fn: Callable[[ChangeEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ChangeEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    @contextmanager
    def transaction(self) -> Iterator[Repository]:
        """All writes inside are atomic; nested use creates a savepoint. Listeners fire after the outer commit."""
        with self._lock:
            c = self._conn
            outer = self._depth == 0
            sp = f"sp{self._depth}"
            mark = len(self._pending)
            if outer:
                c.execute("BEGIN IMMEDIATE")
                self._owner = threading.get_ident()
                self._tx_tokens = set()
            else:
                self._flush()  # so a rollback to the savepoint can drop exactly the rows pending then
                c.execute(f"SAVEPOINT {sp}")
            self._depth += 1
            try:
                yield self
                if outer:
                    self._flush()
            except BaseException:
                self._depth -= 1
                del self._pending[mark:]
                self._drop_pending()
                if outer:
                    self._owner = None
                    c.execute("ROLLBACK")
                else:
                    c.execute(f"ROLLBACK TO {sp}")
                    c.execute(f"RELEASE {sp}")
                raise
            self._depth -= 1
            if outer:
                self._owner = None
                c.execute("COMMIT")
                events, self._pending = self._pending, []
            else:
                c.execute(f"RELEASE {sp}")
                events = []
        for ev in events:
            self._emit(ev)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """A transaction for one repository write: joins an enclosing transaction without a savepoint."""
        with self._lock:
            if self._depth > 0:
                yield
                return
        with self.transaction():
            yield

    def _flush(self) -> None:
        """Insert the pending index rows (callers hold the lock)."""
        if self._pend_rids:
            self._pend_rids.clear()
            c = self._conn
            for sql, rows in zip(_INDEX_INSERTS, self._pend):
                if rows:
                    c.executemany(sql, rows)
                    rows.clear()

    def _drop_pending(self) -> None:
        self._pend_rids.clear()
        for rows in self._pend:
            rows.clear()

    def in_transaction(self) -> bool:
        """Does the calling thread hold an open transaction (so nothing else can write until it ends)?"""
        return self._depth > 0 and self._owner == threading.get_ident()

    def token_written(self, rtype: str, param: str, system: str | None, code: str) -> bool:
        """In the calling thread's open transaction: was a resource of `rtype` written with this token index row
        (param, system, code)? (Rolled-back savepoints included: the answer errs on the side of yes.)"""
        return (rtype, param, system, code) in self._tx_tokens

    def _emit(self, ev: ChangeEvent) -> None:
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:  # a listener must never break a write
                pass

    def _event(self, ev: ChangeEvent) -> None:
        self._pending.append(ev)

    # ------------------------------------------------------------------ reads
    def _row(self, rtype: str, rid: str):
        return self._conn.execute(
            "SELECT rid, vid, deleted, content FROM resources WHERE type = ? AND id = ?", (rtype, rid)
        ).fetchone()

    def lookup(self, rtype: str, rid: str) -> tuple | None:
        """The stored row `(rowid, versionId, deleted, content)` of a resource, or None. Inside a transaction the
        caller then hands it to `update(..., known=row)`, which does not read it again."""
        with self._lock:
            return self._row(rtype, rid)

    def query(self, sql: str, args: list | tuple = ()) -> list[tuple]:
        """A read-only SQL query on the store's tables (for the FHIR service's own lookups)."""
        with self._lock:
            self._flush()
            return self._conn.execute(sql, args).fetchall()

    def read(self, rtype: str, rid: str) -> dict:
        with self._lock:
            row = self._row(rtype, rid)
        if row is None:
            raise NotFound()
        if row[2]:
            raise Gone()
        return _loads(row[3])

    def exists(self, rtype: str, rid: str) -> bool:
        with self._lock:
            row = self._row(rtype, rid)
        return bool(row and not row[2])

    def vread(self, rtype: str, rid: str, vid: str) -> dict:
        with self._lock:
            row = self._conn.execute(
                "SELECT deleted, content FROM history WHERE type=? AND id=? AND vid=?", (rtype, rid, vid)
            ).fetchone()
        if row is None:
            raise NotFound()
        if row[0]:
            raise Gone()
        return _loads(row[1])

    def history(self, rtype: str, rid: str | None = None, count: int = 100, offset: int = 0) -> tuple[list[dict], int]:
        """Versions newest first: [{"resource": dict, "deleted": bool, "lastUpdated": str, "versionId": str,
        "type": str, "id": str}], total."""
        with self._lock:
            if rid is not None:
                if self._row(rtype, rid) is None:
                    raise NotFound()
                where, args = "type = ? AND id = ?", [rtype, rid]
            else:
                where, args = "type = ?", [rtype]
            total = self._conn.execute(f"SELECT COUNT(*) FROM history WHERE {where}", args).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT type, id, vid, lu, deleted, content FROM history WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*args, count, offset],
            ).fetchall()
        out = []
        for t, i, vid, _lu, deleted, content in rows:
            res = _loads(content)
            out.append(
                {
                    "type": t,
                    "id": i,
                    "versionId": vid,
                    "deleted": bool(deleted),
                    "resource": res,
                    "lastUpdated": (res.get("meta") or {}).get("lastUpdated"),
                }
            )
        return out, total

    # ------------------------------------------------------------------ writes
    def _stamp(
        self, resource: dict, rid: str, project: str | None, author: str | None, previous: dict | None
    ) -> tuple[dict, float, dict | None]:
        lu_iso, lu = now_instant()
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = uuid4()
        meta["lastUpdated"] = lu_iso
        prev_meta = (previous or {}).get("meta") or {}
        proj = project or prev_meta.get("project")
        compartments = []
        if proj:
            meta["project"] = proj
            compartments.append(f"Project/{proj}")
        elif "project" in meta and not isinstance(meta.get("project"), str):
            meta.pop("project")
        # Medplum also places resources in their Patient compartments (compartmentdefinition-patient.json)
        known = None  # these parameters' reference values, handed to `_index` so it does not extract them again
        if resource["resourceType"] == "Patient":
            compartments.append(f"Patient/{rid}")
        else:
            for sp in patient_compartment_params(resource["resourceType"]):
                refs = V.reference_values(sp.extract(resource))
                # values read outside id/meta are the same in the stamped resource
                if (
                    sp.custom is None
                    and sp.first_names is not None
                    and "meta" not in sp.first_names
                    and "id" not in sp.first_names
                ):
                    if known is None:
                        known = {}
                    known[sp.code] = refs
                for ref in refs:
                    if ref.startswith("Patient/") and ref not in compartments:
                        compartments.append(ref)
        if compartments:
            meta["compartment"] = [{"reference": c} for c in compartments]
        else:
            meta.pop("compartment", None)
        if author:
            meta["author"] = {"reference": author}
        elif prev_meta.get("author") and "author" not in meta:
            meta["author"] = prev_meta["author"]
        out = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
        for k, v in resource.items():
            if k not in ("resourceType", "id", "meta"):
                out[k] = v
        return out, lu, known

    def _write(
        self,
        res: dict,
        lu: float,
        project: str | None,
        existing_rid: int | None,
        clear_index: bool = True,
        known_refs: dict | None = None,
        binary: bytes | None = None,
        previous: dict | None = None,
    ) -> None:
        self.writes += 1
        c = self._conn
        content = _dumps(res)
        rtype, rid, vid = res["resourceType"], res["id"], res["meta"]["versionId"]
        if rtype == "Binary":
            self._write_binary(res, binary, previous)
        proj = (res.get("meta") or {}).get("project")
        if existing_rid is None:
            cur = c.execute(
                "INSERT INTO resources (type, id, vid, lu, deleted, project, content) VALUES (?,?,?,?,0,?,?)",
                (rtype, rid, vid, lu, proj, content),
            )
            row_id = cur.lastrowid
            assert row_id is not None  # an INSERT sets it
        else:
            row_id = existing_rid
            c.execute(
                "UPDATE resources SET vid=?, lu=?, deleted=0, project=?, content=? WHERE rid=?",
                (vid, lu, proj, content, row_id),
            )
            if clear_index:
                self._clear_index(row_id)
        c.execute(
            "INSERT INTO history (type, id, vid, lu, deleted, content) VALUES (?,?,?,?,0,?)",
            (rtype, rid, vid, lu, content),
        )
        self._index(row_id, res, known_refs)

    def _write_binary(self, res: dict, binary: bytes | None, previous: dict | None) -> None:
        """Binary content kept beside the resource, per version (Medplum's binary storage, server repo.ts
        handleBinaryUpdate): raw bytes uploaded with this write; else, for an update without `data`, the previous
        version's content (copyBinary)."""
        vid = res["meta"]["versionId"]
        if binary is not None:
            self._conn.execute("INSERT INTO binary_content (id, vid, content) VALUES (?,?,?)", (res["id"], vid, binary))
        elif previous is not None and "data" not in res:
            prev_vid = (previous.get("meta") or {}).get("versionId")
            self._conn.execute(
                "INSERT INTO binary_content (id, vid, content) SELECT id, ?, content FROM binary_content "
                "WHERE id = ? AND vid = ?",
                (vid, res["id"], prev_vid),
            )

    def binary_content(self, rid: str, vid: str) -> bytes | None:
        """The stored content of a Binary version (raw upload or copied), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT content FROM binary_content WHERE id = ? AND vid = ?", (rid, vid)
            ).fetchone()
        return bytes(row[0]) if row else None

    def _clear_index(self, row_id: int) -> None:
        if row_id in self._pend_rids:
            self._flush()
        for t in _INDEX_TABLES:
            self._conn.execute(f"DELETE FROM {t} WHERE rid = ?", (row_id,))

    def _index(self, row_id: int, res: dict, known_refs: dict | None = None) -> None:
        params = self._params.for_type(res["resourceType"])
        tok, st, ref, dt, num, txt = V.index_rows(params, res, known_refs)
        if tok and self._depth > 0:
            rtype = res["resourceType"]
            self._tx_tokens.update((rtype, p, s, v) for p, s, v in tok)
        if not (tok or st or ref or dt or num or txt):
            return
        p_tok, p_st, p_ref, p_dt, p_num, p_txt = self._pend
        if tok:
            p_tok.extend([(row_id, p, s, v) for p, s, v in tok])
        if st:
            p_st.extend([(row_id, p, v, raw) for p, v, raw in st])
        if ref:
            p_ref.extend([(row_id, p, v) for p, v in ref])
        if dt:
            p_dt.extend([(row_id, p, lo, hi) for p, lo, hi in dt])
        if num:
            p_num.extend([(row_id, p, n, s, cd) for p, n, s, cd in num])
        if txt:
            p_txt.extend([(row_id, p, v, raw) for p, v, raw in txt])
        self._pend_rids.add(row_id)
        if self._depth == 0:
            self._flush()

    def create(
        self,
        resource: dict,
        *,
        id: str | None = None,
        project: str | None = None,
        author: str | None = None,
        binary: bytes | None = None,
    ) -> dict:
        """Store a new resource (server-assigned UUID unless `id` is given; `binary`: a Binary's raw content).
        Returns the stored resource."""
        with self._tx():
            rid = id or uuid4()
            row = self._row(resource["resourceType"], rid)
            if row is not None and not row[2]:
                raise BadRequest("Resource already exists")
            res, lu, known = self._stamp(resource, rid, project, author, None)
            self._write(res, lu, project, row[0] if row else None, clear_index=False, known_refs=known, binary=binary)
            self._event(ChangeEvent("create", res, None))
        return res

    def update(
        self,
        resource: dict,
        *,
        if_match: str | None = None,
        project: str | None = None,
        author: str | None = None,
        create_if_missing: bool = True,
        known: tuple | Literal[False] | None = False,
        previous: dict | None = None,
        binary: bytes | None = None,
    ) -> tuple[dict, bool, bool]:
        """Update (or create with the given id). Returns (resource, created, changed). `known`: the row
        `lookup()` answered (None = no row) within the caller's open transaction, and `previous` the resource
        parsed from it; both are then not read again."""
        rtype, rid = resource["resourceType"], resource.get("id")
        if not rid:
            raise BadRequest("Missing id")
        # `known` is trusted only when the caller's transaction was already open when it read the row (asked before
        # `_tx` opens one: inside it in_transaction() is always true); otherwise another write may have come since
        trusted = known is not False and self.in_transaction()
        with self._tx():
            row = known if trusted and known is not False else self._row(rtype, rid)
            if row is not known:
                previous = None
            if row is None or row[2]:
                if if_match is not None and row is not None:
                    raise PreconditionFailed()
                if not create_if_missing:
                    raise NotFound()
                res, lu, refs = self._stamp(resource, rid, project, author, None)
                self._write(
                    res, lu, project, row[0] if row else None, clear_index=False, known_refs=refs, binary=binary
                )
                self._event(ChangeEvent("create", res, None))
                return res, True, True
            if if_match is not None and if_match != row[1]:
                raise PreconditionFailed()
            if previous is None:
                previous = _loads(row[3])
            if same_content(previous, resource) and binary is None:
                return previous, False, False
            res, lu, refs = self._stamp(resource, rid, project, author, previous)
            self._write(res, lu, project, row[0], known_refs=refs, binary=binary, previous=previous)
            self._event(ChangeEvent("update", res, previous))
        return res, False, True

    def delete(self, rtype: str, rid: str) -> dict:
        """Delete; history keeps every version and a deletion marker. Returns the deleted resource."""
        with self._tx():
            row = self._row(rtype, rid)
            if row is None:
                raise NotFound()
            if row[2]:
                raise Gone()
            previous = _loads(row[3])
            self.writes += 1
            lu_iso, lu = now_instant()
            vid = uuid4()
            marker = {"resourceType": rtype, "id": rid, "meta": {"versionId": vid, "lastUpdated": lu_iso}}
            c = self._conn
            c.execute("UPDATE resources SET deleted=1, vid=?, lu=? WHERE rid=?", (vid, lu, row[0]))
            c.execute(
                "INSERT INTO history (type, id, vid, lu, deleted, content) VALUES (?,?,?,?,1,?)",
                (rtype, rid, vid, lu, _dumps(marker)),
            )
            self._clear_index(row[0])
            self._event(ChangeEvent("delete", previous, previous))
        return previous

    def reset(self, keep: Callable[[dict], bool] = lambda r: False) -> int:
        """Delete (with history and index rows) every resource for which keep(resource) is False."""
        removed = 0
        with self.transaction():
            c = self._conn
            rows = c.execute("SELECT rid, type, id, deleted, content FROM resources").fetchall()
            for row_id, t, i, deleted, content in rows:
                if not deleted and keep(_loads(content)):
                    continue
                c.execute("DELETE FROM resources WHERE rid = ?", (row_id,))
                c.execute("DELETE FROM history WHERE type = ? AND id = ?", (t, i))
                if t == "Binary":
                    c.execute("DELETE FROM binary_content WHERE id = ?", (i,))
                self._clear_index(row_id)
                removed += 1
        return removed

    # ------------------------------------------------------------------ search
    def search(
        self,
        req: SearchRequest | tuple[str, Any],
        *,
        extra_where: tuple[str, list] | None = None,
        count_total: bool | None = None,
    ) -> tuple[list[dict], int | None, bool]:
        """Run a search. Returns (resources (at most req.count), total or None, has_more)."""
        if isinstance(req, tuple):
            req = parse_search(req[0], req[1])
        params = self._params.for_type(req.resource_type)
        where = ["r.type = ?", "r.deleted = 0"]
        args: list[Any] = [req.resource_type]
        selective = False
        for f in req.filters:
            sql, a = filter_sql(f)
            where.append(sql)
            args += a
            selective = selective or sql.startswith(("r.rid IN", "(r.rid IN"))
        if selective:
            # let SQLite drive the query from the index sub-selects, not from a scan of the whole type
            where[0], where[1] = "+r.type = ?", "+r.deleted = 0"
        if extra_where:
            where.append(extra_where[0])
            args += extra_where[1]
        after = cursor_sql(req)
        wsql = balanced("AND", where)  # thousands of filters stay under SQLite's expression depth limit
        order, oargs = sort_sql(req, params)
        if len(args) + len(oargs) + 2 > self._max_vars:  # SQLite's limit (32,766 on many builds), not Medplum's
            raise BadRequest(f"Search has too many values (SQLite allows {self._max_vars} in one query)")
        want_total = count_total if count_total is not None else req.total in ("accurate", "estimate")
        with self._lock:
            self._flush()
            total = None
            if want_total:
                total = self._conn.execute(f"SELECT COUNT(*) FROM resources r WHERE {wsql}", args).fetchone()[0]
            rows = []
            if req.count > 0:
                page_sql, page_args = wsql, args
                if after is not None:  # the count ignores the cursor, as Medplum's does
                    page_sql, page_args = f"{wsql} AND {after[0]}", [*args, *after[1]]
                rows = self._conn.execute(
                    f"SELECT r.content FROM resources r WHERE {page_sql} {order} LIMIT ? OFFSET ?",
                    [*page_args, *oargs, req.count + 1, req.offset],
                ).fetchall()
        has_more = len(rows) > req.count
        return [_loads(r[0]) for r in rows[: req.count]], total, has_more

    def search_union(
        self,
        parts: list[tuple[SearchRequest, tuple[str, list] | None]],
        *,
        count: int,
        offset: int,
        sort: list[tuple[str, bool]],
        count_total: bool = False,
    ) -> tuple[list[dict], int | None, bool]:
        """System-level search: the union of one query per resource type (each with its filters and extra where
        clause), sorted by `_id` / `_lastUpdated` only. Returns (resources, total or None, has_more)."""
        ors, args = [], []
        for req, extra in parts:
            conds, a = ["r.type = ?"], [req.resource_type]
            for f in req.filters:
                sql, fa = filter_sql(f)
                conds.append(sql)
                a += fa
            if extra:
                conds.append(extra[0])
                a += extra[1]
            ors.append("(" + " AND ".join(conds) + ")")
            args += a
        wsql = "r.deleted = 0 AND (" + " OR ".join(ors or ["0"]) + ")"
        order = ", ".join(("r.id" if c == "_id" else "r.lu") + (" DESC" if d else " ASC") for c, d in sort)
        order = "ORDER BY " + (order + ", " if order else "") + "r.rid ASC"
        with self._lock:
            self._flush()
            total = None
            if count_total:
                total = self._conn.execute(f"SELECT COUNT(*) FROM resources r WHERE {wsql}", args).fetchone()[0]
            rows = []
            if count > 0:
                rows = self._conn.execute(
                    f"SELECT r.content FROM resources r WHERE {wsql} {order} LIMIT ? OFFSET ?",
                    [*args, count + 1, offset],
                ).fetchall()
        return [_loads(r[0]) for r in rows[:count]], total, len(rows) > count

    def search_ids(self, rtype: str, query, limit: int = 2) -> list[dict]:
        """Resources matching `query` (at most `limit`) — the conditional create/update/delete lookup."""
        req = parse_search(rtype, query)
        req.count, req.offset, req.sort = limit, 0, []
        return self.search(req, count_total=False)[0]

    def references_to(self, targets: list[str], rtype: str, param: str) -> list[dict]:
        """Resources of `rtype` whose `param` references one of targets ("Type/id") — for _revinclude."""
        if not targets:
            return []
        ph = ",".join("?" * len(targets))
        with self._lock:
            self._flush()
            rows = self._conn.execute(
                f"SELECT DISTINCT r.content FROM resources r JOIN idx_ref x ON x.rid = r.rid "
                f"WHERE r.type = ? AND r.deleted = 0 AND x.param = ? AND x.ref IN ({ph}) LIMIT 1000",
                [rtype, param, *targets],
            ).fetchall()
        return [_loads(r[0]) for r in rows]

    def read_many(self, refs: list[str]) -> list[dict]:
        out = []
        with self._lock:
            for ref in refs:
                t, _, i = ref.partition("/")
                row = self._row(t, i)
                if row and not row[2]:
                    out.append(_loads(row[3]))
        return out

    def count(self, rtype: str | None = None) -> int:
        with self._lock:
            if rtype:
                return self._conn.execute(
                    "SELECT COUNT(*) FROM resources WHERE type=? AND deleted=0", (rtype,)
                ).fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM resources WHERE deleted=0").fetchone()[0]
