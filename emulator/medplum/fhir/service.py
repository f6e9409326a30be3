"""The FHIR REST interactions of the emulator as plain Python: `FhirService.handle(...) -> FhirResponse`.

No HTTP here: the Flask layer parses the request (path relative to /fhir/R4/, query pairs, JSON body,
headers) and renders the FhirResponse. Every error is an OperationOutcome with Medplum's status.

Medplum facts kept (server fhir/batch.ts, repo.ts, @medplum/core access.ts / outcomes):
- batch and transaction entries are processed in interaction order (delete, create, update, patch,
  operations, search, read, history) while results keep their input positions; entry response
  `{outcome, status: "<code>", location: "Type/id"}` plus the resource (no etag, no lastModified);
- `urn:uuid:` placeholders anywhere in an entry (also inside longer strings) are rewritten to "Type/id";
  resources to be created get their ids before any entry runs, so forward references work;
- a transaction is all-or-nothing: the first failing entry's OperationOutcome and status are returned;
  over 50 update (PUT) entries -> 400 "Transaction contains more update operations than allowed";
  any conditional entry and more than 8 entries -> 400
  "Transaction requires strict isolation but has too many entries";
- conditional create `If-None-Exist`: 0 -> 201, 1 -> 200 with the existing resource, more -> 412;
  conditional update: 0 -> 201 create (a body id is rejected: "Cannot provide ID for create by update"
  inside transactions), 1 -> 200 update, more -> 412 multiple-matches;
- conditional create, conditional update and patch are atomic (fhir-router repo.ts runs the search and the
  write in one SERIALIZABLE transaction; patchResource reads and writes in one transaction): two
  simultaneous requests with the same condition create one resource, the second sees it. In a batch, an
  unmatched conditional PUT gets its id in preprocessing but is re-checked when it runs (conditionalUpdate
  with assignedId): if another request created the resource meanwhile, that entry answers 400 "Resource ID
  did not match resolved ID" rather than creating a second one. `inject_conflicts(n)`: the next n
  conditional writes answer 409 with Postgres' serialization failure (40001), what Medplum answers when its
  one retry also conflicts;
- an update equal to the stored version (ignoring meta) creates no version: 200 with the stored resource.
"""

from __future__ import annotations

import base64
import copy
import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, quote

from ..errors import (
    BadRequest,
    FhirError,
    Forbidden,
    MultipleMatches,
    NotFound,
    PreconditionFailed,
    ServerError,
    StructureError,
    UnsupportedMediaType,
    ValidationFailed,
    all_ok,
    status_of,
)
from ..releases import NEWEST_RELEASE, Release
from . import policy as P
from .batch import BatchOperations
from .capability import capability_statement
from .patch import apply_patch
from .principal import Principal
from .response import FhirResponse
from .schema import ID_RE, Validator, default_validator, resource_types
from .search import (
    MAX_COUNT,
    Filter,
    SearchRequest,
    can_use_cursor,
    filter_sql,
    format_cursor,
    js_parse_int,
    parse_search,
    subset,
)
from .searchparams import registry
from .store import Repository
from .store import _dumps as store_dumps
from .store import _loads as store_loads
from .values import date_range, reference_values

log = logging.getLogger("medport.emulator.medplum.fhir")

_URI_SAFE = "-_.!~*'()"
_IF_MATCH_RE = re.compile(r'"([^"]+)"')
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# a Reference whose `reference` is a search ("Patient?identifier=..."), found in a resource's compact JSON
_CONDITIONAL_REF = re.compile(r'"reference":"[^"?]*\?')
# server src/fhir/search.ts getExtraEntries: rounds of _include/_revinclude (:iterate) before it gives up
MAX_INCLUDE_DEPTH = 5


def _is_uuid(s: str) -> bool:
    return bool(_UUID_RE.match(s))


def parse_if_match(header: str | None) -> str | None:
    """fhir-router fhirrouter.ts parseIfMatchHeader: the text between the first pair of double quotes
    (`W/"abc"` -> abc); a header without quotes is ignored."""
    if not header:
        return None
    m = _IF_MATCH_RE.search(header)
    return m.group(1) if m else None


def _etag(res: dict) -> str:
    return f'W/"{(res.get("meta") or {}).get("versionId", "")}"'


_HTTP_DATES: dict[str, str] = {}


def _http_date(iso: str | None) -> str | None:
    # the store writes "YYYY-MM-DDTHH:MM:SS.mmmZ": the HTTP date depends on the seconds only (cached)
    key = iso[:19] if iso and len(iso) == 24 and iso[-1] == "Z" else None
    if key is not None:
        hit = _HTTP_DATES.get(key)
        if hit is not None:
            return hit
    r = date_range(iso) if iso else None
    out = formatdate(r[0], usegmt=True) if r else None
    if key is not None and out is not None:
        if len(_HTTP_DATES) > 4096:
            _HTTP_DATES.clear()
        _HTTP_DATES[key] = out
    return out


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _js_date_string(iso: str | None) -> str:
    """`'' + date` of a JavaScript Date in a UTC server: "Tue Jan 02 2024 10:00:00 GMT+0000 (Coordinated
    Universal Time)" (server repo.ts readHistory concatenates the pg Date of a deletion)."""
    r = date_range(iso) if iso else None
    if r is None:
        return "Invalid Date"
    t = time.gmtime(int(r[0]))
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT+0000 (Coordinated Universal Time)"
    )


def _res_headers(res: dict) -> dict[str, str]:
    h = {"ETag": _etag(res)}
    lm = _http_date((res.get("meta") or {}).get("lastUpdated"))
    if lm:
        h["Last-Modified"] = lm
    return h


def _ok(oo: dict) -> bool:
    return status_of(oo) < 400


SERIALIZATION_FAILURE_TEXT = "could not serialize access due to read/write dependencies among transactions"


def serialization_conflict() -> FhirError:
    """Medplum's normalizeDatabaseError for Postgres 40001: 409 conflict(err.message, '40001')."""
    return FhirError(
        {
            "resourceType": "OperationOutcome",
            "id": "conflict",
            "issue": [
                {
                    "severity": "error",
                    "code": "conflict",
                    "details": {"coding": [{"code": "40001"}], "text": SERIALIZATION_FAILURE_TEXT},
                }
            ],
        }
    )


class FhirService(BatchOperations):
    def __init__(
        self,
        repo: Repository,
        base_url: str,
        validator: Validator | None = None,
        *,
        transactions: bool | Callable[[Principal], bool] = True,
        release: Release = NEWEST_RELEASE,
    ):
        self.repo = repo
        self.release = release  # the Medplum release whose rules differ from others' (releases.py)
        # Medplum only runs a `transaction` Bundle atomically when transactions are enabled: server fhir/routes.ts
        # passes `transactions: project.features includes 'transaction-bundles'` to the router; otherwise it is
        # processed entry by entry like a batch (fhir-router batch.ts isTransaction()). A callable decides per
        # caller (the emulator asks the caller's Project).
        self.transactions = transactions
        # Elements the emulated release's StructureDefinitions lack, per resource type (a newer release's Bot
        # fields): Medplum's validator refuses each as an additional property (core typeschema/validation.ts).
        self.unknown_elements: dict[str, frozenset[str]] = {}
        b = base_url.rstrip("/")
        self.fhir_base = b + "/" if b.endswith("/fhir/R4") else b + "/fhir/R4/"
        self.validator = validator or default_validator()
        self._conflicts_lock = threading.Lock()
        self._conflicts_next = 0
        self.batch_delay_s = 0.0  # developer API: latency added to every batch/transaction (a slow database)
        self._raw = threading.local()  # raw_content: the bytes the next Binary write on this thread stores

    @contextmanager
    def raw_content(self, content: bytes):
        """The content of a raw Binary upload, stored with this thread's Binary write inside the block (after
        validation and access checks) beside the resource, as Medplum keeps it in binary storage (server binary.ts
        uploadBinaryData): not in the resource (a FHIR read shows no `data`), not held to a JSON Binary's 1 MiB
        `data`. One write, one version, as on Medplum."""
        self._raw.content = content
        try:
            yield
        finally:
            self._raw.content = None

    @contextmanager
    def _verdict_first(self, res: dict):
        """Medplum's verdict on `res` (strict validation runs in Node) fetched before the caller takes the store's
        write lock, so no other request waits on Node meanwhile; inside a batch the bundle has done this."""
        if self.repo.in_transaction() or not self.validator.strict:
            yield
            return
        self.validator.prevalidate_async([res])
        self.validator.prevalidate([])  # wait for the answer here, outside the lock
        try:
            yield
        finally:
            self.validator.clear_prevalidated()

    def _raw_bytes(self, res: dict) -> bytes | None:
        return getattr(self._raw, "content", None) if res.get("resourceType") == "Binary" else None

    # ================================================================== faults (developer API)
    def inject_conflicts(self, n: int) -> int:
        """The next `n` conditional writes (conditional create/update, batch create-by-update) answer 409 like
        a serialization failure that survived Medplum's retry. Returns the number still pending."""
        with self._conflicts_lock:
            self._conflicts_next = max(0, int(n))
            return self._conflicts_next

    def conflicts_pending(self) -> int:
        with self._conflicts_lock:
            return self._conflicts_next

    def _maybe_conflict(self) -> None:
        with self._conflicts_lock:
            if self._conflicts_next <= 0:
                return
            self._conflicts_next -= 1
        raise serialization_conflict()

    # ================================================================== entry point
    def handle(
        self,
        principal: Principal,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> FhirResponse:
        """Run one FHIR interaction. Never raises: errors are OperationOutcome responses."""
        try:
            hdrs = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
            q = [(str(k), str(v)) for k, v in (query or [])]
            return self._dispatch(principal, str(method).upper(), str(path or ""), q, body, hdrs)
        except FhirError as e:
            return FhirResponse(e.status, e.outcome, {})
        except RecursionError:
            err = BadRequest("Resource is nested too deeply")
            return FhirResponse(err.status, err.outcome, {})
        except Exception:  # pragma: no cover - a bug; still an OperationOutcome, the details only in the log
            log.exception("unexpected error in %s %s", method, str(path).split("?")[0][:200])  # no query: no PHI
            return FhirResponse(500, ServerError().outcome, {})

    # ================================================================== routing
    def _dispatch(  # noqa: C901 — the route table of Medplum's FHIR router
        self,
        pr: Principal,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        headers: dict[str, str],
    ) -> FhirResponse:
        if "?" in path:
            path, _, qs = path.partition("?")
            query = parse_qsl(qs, keep_blank_values=True) + query
        parts = [p for p in path.strip("/").split("/") if p != ""]
        if not parts:
            if method == "POST":
                return self.batch(pr, body)
            if method == "GET":
                # fhir-router fhirrouter.ts: `GET ''` is searchMultipleTypes (interaction search-system)
                return self.search_system(pr, query)
            raise NotFound()
        rtype = parts[0]
        if parts == ["metadata"] and method == "GET":
            return FhirResponse(200, self.capability_statement(), {})
        if len(parts) == 2 and parts[1] == "$validate" and method == "POST":
            return self.validate_operation(body)
        if rtype.startswith("$") or (len(parts) > 1 and parts[-1].startswith("$")):
            raise NotFound()
        n = len(parts)
        if rtype not in resource_types():
            # server repo.ts readResourceImpl checks the id (UUID) before validateResourceType: `GET Foo/1` is
            # 404 Not found; otherwise @medplum/core validateResourceType: 400 "Unknown resource type" (structure)
            if n >= 2 and method in ("GET", "DELETE") and not _is_uuid(parts[1]):
                raise NotFound()
            raise StructureError("Unknown resource type")
        if n == 1:
            if method == "GET":
                return self.search(pr, rtype, query)
            if method == "POST":
                return self.create(pr, rtype, body, headers)
            # fhir-router fhirrouter.ts routes `PUT|DELETE|PATCH :resourceType` to the conditional interaction with
            # whatever query it has: with none, the search runs over the whole type (count 2)
            if method == "PUT":
                return self.conditional_update(pr, rtype, query, body, headers)
            if method == "DELETE":
                return self.conditional_delete(pr, rtype, query)
            if method == "PATCH":
                return self.conditional_patch(pr, rtype, query, body, headers)
            raise NotFound()
        if n == 2 and parts[1] == "_search" and method == "POST":
            return self.search(pr, rtype, query + _form_params(body))
        rid = parts[1]
        if n == 2:
            if method == "GET":
                return self.read(pr, rtype, rid)
            if method == "PUT":
                return self.update(pr, rtype, rid, body, headers)
            if method == "PATCH":
                return self.patch(pr, rtype, rid, body, headers)
            if method == "DELETE":
                return self.delete(pr, rtype, rid, if_match=parse_if_match(headers.get("if-match")))
            raise NotFound()
        if n == 3 and parts[2] == "_history" and method == "GET":
            return self.history(pr, rtype, rid, query)
        if n == 4 and parts[2] == "_history" and method == "GET":
            return self.vread(pr, rtype, rid, parts[3])
        raise NotFound()

    # ================================================================== access helpers
    def _access(self, pr: Principal) -> P.Access:
        a = pr.access if isinstance(pr.access, P.Access) else P.Access(None)
        if (pr.superuser and not a.superuser) or (pr.admin and not a.admin):
            a = copy.copy(a)
            a.superuser = a.superuser or pr.superuser
            a.admin = a.admin or pr.admin
        return a

    def _check_type(self, pr: Principal, interaction: str, rtype: str) -> P.Access:
        a = self._access(pr)
        if not a.can(interaction, rtype):
            raise Forbidden()
        return a

    def _visible(self, pr: Principal, res: dict) -> bool:
        if pr.superuser or not pr.project_id:
            return True
        proj = (res.get("meta") or {}).get("project")
        return proj is None or proj == pr.project_id

    def _project_for_write(self, pr: Principal, body: dict) -> str | None:
        if pr.superuser:
            return (
                ((body.get("meta") or {}).get("project") if isinstance(body.get("meta"), dict) else None)
                or pr.project_id
                or None
            )
        return pr.project_id or None

    def _out(self, a: P.Access, res: dict) -> dict:
        return a.hide(res) if not a.full else res

    # ================================================================== read / vread / history
    def _read_visible(self, pr: Principal, rtype: str, rid: str, interaction: str = P.READ) -> tuple[P.Access, dict]:
        a = self._check_type(pr, interaction, rtype)
        res = self.repo.read(rtype, rid)
        if not self._visible(pr, res) or not a.matches(res, interaction):
            raise NotFound()
        return a, res

    def read(self, pr: Principal, rtype: str, rid: str) -> FhirResponse:
        a, res = self._read_visible(pr, rtype, rid)
        return FhirResponse(200, self._out(a, res), _res_headers(res))

    def vread(self, pr: Principal, rtype: str, rid: str, vid: str) -> FhirResponse:
        a = self._check_type(pr, P.VREAD, rtype)
        res = self.repo.vread(rtype, rid, vid)
        if not self._visible(pr, res) or not a.matches(res, P.VREAD):
            raise NotFound()
        return FhirResponse(200, self._out(a, res), _res_headers(res))

    def history(self, pr: Principal, rtype: str, rid: str, query: list[tuple[str, str]]) -> FhirResponse:
        """Instance history like Medplum (fhir-router fhirrouter.ts readHistory; server repo.ts readHistory):
        newest first, `_count` (default 100, at most 1000) and `_offset` parsed with parseInt (last one wins),
        `total` = every version; no paging links. Each entry: fullUrl, `request: {method: "GET", url:
        "Type/id/_history/vid"}` (always GET, the vread URL), `response: {status, outcome}` and the version; a
        deletion is `410` with a `gone` outcome "Deleted on <Date.toString()>" and no resource.
        (fhir-router has no type-level `Type/_history` route: that URL is a read of id "_history" -> 404.)"""
        a = self._check_type(pr, P.HISTORY, rtype)
        count, offset = 100, 0
        for k, value in query:
            if k == "_count":
                n = js_parse_int(value)
                count = 100 if n is None else max(0, min(n, 1000))
            elif k == "_offset":
                n = js_parse_int(value)
                offset = 0 if n is None else min(max(0, n), 10**9)  # past any history, within SQLite's integers
        current = None
        try:
            current = self.repo.read(rtype, rid)
        except FhirError as e:
            if e.status != 410:
                raise
        if current is not None and (not self._visible(pr, current) or not a.matches(current, P.HISTORY)):
            raise NotFound()
        versions, total = self.repo.history(rtype, rid, count, offset)
        entries = []
        for v in versions:
            item: dict[str, Any] = {
                "fullUrl": f"{self.fhir_base}{v['type']}/{v['id']}",
                "request": {"method": "GET", "url": f"{v['type']}/{v['id']}/_history/{v['versionId']}"},
            }
            if v["deleted"]:
                gone = {
                    "resourceType": "OperationOutcome",
                    "id": "gone",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "deleted",
                            "details": {"text": "Deleted on " + _js_date_string(v["lastUpdated"])},
                        }
                    ],
                }
                item["response"] = {"status": "410", "outcome": gone}
            else:
                item["response"] = {"status": "200", "outcome": all_ok()}
                item["resource"] = self._out(a, v["resource"])
            entries.append(item)
        return FhirResponse(200, {"resourceType": "Bundle", "type": "history", "entry": entries, "total": total}, {})

    # ================================================================== search
    def _policy_where(self, pr: Principal, a: P.Access, rtype: str) -> tuple[str, list] | None:
        clauses, args = [], []
        if not pr.superuser and pr.project_id:
            clauses.append("(r.project = ? OR r.project IS NULL)")
            args.append(pr.project_id)
        crits = a.search_filters(rtype)
        if crits is not None:
            if not crits:
                clauses.append("0")
            else:
                ors = []
                for c in crits:
                    try:
                        sreq = parse_search(rtype, c)
                    except BadRequest:
                        ors.append("0")
                        continue
                    ands = []
                    for f in sreq.filters:
                        s, fa = filter_sql(f)
                        ands.append(s)
                        args += fa
                    ors.append("(" + (" AND ".join(ands) or "1") + ")")
                clauses.append("(" + " OR ".join(ors) + ")")
        if not clauses:
            return None
        return " AND ".join(clauses), args

    def search_resources(self, pr: Principal, rtype: str, query: list[tuple[str, str]] | str) -> list[dict]:
        """Plain-Python helper: matching resources (first page) as the principal may see them."""
        resp = self.search(
            pr, rtype, parse_qsl(query.lstrip("?"), keep_blank_values=True) if isinstance(query, str) else query
        )
        if resp.status != 200:
            raise FhirError(resp.body)
        return [e["resource"] for e in resp.body.get("entry", []) if (e.get("search") or {}).get("mode") == "match"]

    def search(self, pr: Principal, rtype: str, query: list[tuple[str, str]]) -> FhirResponse:
        if rtype == "Binary":
            raise BadRequest("Cannot search on Binary resource type")
        a = self._check_type(pr, P.SEARCH, rtype)
        req = parse_search(rtype, query, self.release)
        req.types = None
        self._check_search_types(pr, req)
        where = self._policy_where(pr, a, rtype)
        nxt = None
        if can_use_cursor(req):
            # one more resource than the page: the next page's cursor is its lastUpdated
            req.count += 1
            resources, total, _ = self.repo.search(req, extra_where=where)
            req.count -= 1
            nxt = resources[req.count] if len(resources) > req.count else None
            resources, has_more = resources[: req.count], nxt is not None
        else:
            resources, total, has_more = self.repo.search(req, extra_where=where)
        return self._searchset(pr, a, req, resources, total, has_more, nxt)

    def _check_search_types(self, pr: Principal, req: SearchRequest) -> None:
        """server search.ts validateSearchResourceTypes / buildChainedSearch: every type a chain reaches and every
        _include / _revinclude source type must be a known, searchable type the caller may search (else 400 / 403)."""
        types = [inc.split(":", 1)[0] for inc in (*req.include, *req.revinclude)]
        todo: list[Any] = list(req.filters)  # filters, and the tuples of an OR
        while todo:
            f = todo.pop()
            if isinstance(f, tuple):
                todo.extend(f[1:])
                continue
            if f.chain is not None:
                types += [link.target for link in f.chain]
                todo.append(f.inner)
            if f.tree is not None:
                todo.append(f.tree)
        for t in dict.fromkeys(types):
            if t not in resource_types():
                raise StructureError("Unknown resource type")
            if t == "Binary":
                raise BadRequest("Cannot search on Binary resource type")
            self._check_type(pr, P.SEARCH, t)

    def search_system(self, pr: Principal, query: list[tuple[str, str]]) -> FhirResponse:
        """`GET [base]?_type=A,B&...` (fhir-router fhirrouter.ts searchMultipleTypes; server search.ts):
        no `_type` -> 400 "No types specified"; each type validated (validateResourceType: "Resource type is
        null" / "Unknown resource type", Binary -> "Cannot search on Binary resource type", no access -> 403);
        every parameter must be one of each listed type's (else "Unknown search parameter: <code>"); `_sort`
        only by `_id`/`_lastUpdated`. Links name the pseudo type `MultipleTypes` and carry `_type=`."""
        types: list[str] | None = None
        for k, v in query:
            if k == "_type":
                types = v.split(",")
        if not types:
            raise BadRequest("No types specified")
        for t in types:
            if not t:
                raise StructureError("Resource type is null")
            if t not in resource_types():
                raise StructureError("Unknown resource type")
            if t == "Binary":
                raise BadRequest("Cannot search on Binary resource type")
            self._check_type(pr, P.SEARCH, t)
        for k, v in query:
            if k == "_sort":
                for c in v.split(","):
                    c = c.strip().lstrip("-")
                    if c and c not in ("_id", "_lastUpdated"):
                        raise BadRequest(f"Unknown search parameter: {c}")
        a = self._access(pr)
        parts = []
        req = None
        for t in dict.fromkeys(types):
            r = parse_search(t, query, self.release)
            for f in r.filters:
                if f.chain is not None:
                    raise BadRequest(f"Unknown search parameter: {f.code}")
            parts.append((r, self._policy_where(pr, a, t)))
            req = req or r
        assert req is not None
        resources, total, has_more = self.repo.search_union(
            parts, count=req.count, offset=req.offset, sort=req.sort, count_total=req.total in ("accurate", "estimate")
        )
        req = SearchRequest(
            resource_type="MultipleTypes",
            filters=req.filters,
            count=req.count,
            offset=req.offset,
            sort=req.sort,
            total=req.total,
            summary=req.summary,
            fields=req.fields,
            query=req.query,
            count_text=req.count_text,
            types=types,
        )
        return self._searchset(pr, a, req, resources, total, has_more)

    def _searchset(
        self,
        pr: Principal,
        a: P.Access,
        req: SearchRequest,
        resources: list[dict],
        total: int | None,
        has_more: bool,
        nxt: dict | None = None,
    ) -> FhirResponse:
        """server search.ts searchImpl: `{resourceType, type: searchset, entry, total, link}`; `entry` only when the
        query ran (count > 0); `total` only with `_total=accurate|estimate` (or `_summary=count`). `_summary` /
        `_elements` subset every entry's resource (removeResourceFields)."""
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if req.summary == "count" or req.count <= 0:
            if total is not None:
                bundle["total"] = total
            bundle["link"] = [{"relation": "self", "url": self._search_url(req, req.offset, req.cursor)}]
            return FhirResponse(200, bundle, {})
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": f"{self.fhir_base}{r['resourceType']}/{r['id']}",
                "search": {"mode": "match"},
                "resource": self._out(a, r),
            }
            for r in resources
        ]
        if req.types is None:
            entries += self._includes(pr, req, resources)
        if req.fields is not None or req.summary:
            for e in entries:
                e["resource"] = subset(e["resource"], req)
        bundle["entry"] = entries
        if total is not None:
            bundle["total"] = total
        bundle["link"] = self._search_links(req, entries, has_more, nxt)
        return FhirResponse(200, bundle, {})

    def _search_links(self, req: SearchRequest, entries: list[dict], has_more: bool, nxt: dict | None) -> list[dict]:
        """server search.ts getSearchLinks: self always; first/next (and previous with an offset) when the page has
        entries — as `_cursor` links when sorted by `_lastUpdated` ascending from offset 0 with 20 or more a page
        (canUseCursorLinks): next = `2-<lastUpdated ms of the next resource>[-ids on this page updated then]`."""
        links = [{"relation": "self", "url": self._search_url(req, req.offset, req.cursor)}]
        if req.count <= 0 or not entries:
            return links
        if nxt is not None:
            next_lu = (nxt.get("meta") or {}).get("lastUpdated")
            # Medplum answers 500 "Cursor fails to make progress" when the next page would start where this one did
            # (more than a page updated in the same millisecond); the emulator pages by offset instead
            if (entries[0]["resource"].get("meta") or {}).get("lastUpdated") != next_lu:
                excluded = [
                    e["resource"]["id"]
                    for e in entries
                    if (e["resource"].get("meta") or {}).get("lastUpdated") == next_lu
                ]
                next_range = date_range(next_lu)
                assert next_range is not None  # a stored lastUpdated
                cursor = format_cursor(next_range[0], excluded)
                links.append({"relation": "first", "url": self._search_url(req, 0, None)})
                links.append({"relation": "next", "url": self._search_url(req, 0, cursor)})
                return links
        links.append({"relation": "first", "url": self._search_url(req, 0, None)})
        if has_more:
            links.append({"relation": "next", "url": self._search_url(req, req.offset + req.count, None)})
        if req.offset > 0:
            links.append({"relation": "previous", "url": self._search_url(req, max(0, req.offset - req.count), None)})
        return links

    def _search_url(self, req: SearchRequest, offset: int, cursor: str | None) -> str:
        """Like @medplum/core formatSearchQuery: `_fields`, filters, _sort, _cursor, _offset (if not 0), _count,
        _total, _type, includes; each `name=encodeURIComponent(value)`, sorted."""
        items = []
        for k, v in req.query:
            code = k.partition(":")[0]
            if code in (
                "_count",
                "_offset",
                "_total",
                "_sort",
                "_include",
                "_revinclude",
                "_cursor",
                "_format",
                "_pretty",
                "_summary",
                "_type",
                "_elements",
                "_fields",
                "_",
            ):
                continue
            items.append(f"{k}={quote(v, safe=_URI_SAFE)}")
        if req.fields is not None:
            items.append("_fields=" + ",".join(req.fields))
        if req.sort:
            items.append("_sort=" + ",".join(("-" if d else "") + c for c, d in req.sort))
        if cursor is not None:
            items.append("_cursor=" + quote(cursor, safe=_URI_SAFE))
        if offset:
            items.append(f"_offset={offset}")
        items.append(f"_count={req.count_text or req.count}")
        if req.types:
            items.append("_type=" + ",".join(req.types))
        if req.total:
            items.append(f"_total={req.total}")
        for key, targets, iterate in (
            ("_include", req.include, req.include_iterate),
            ("_revinclude", req.revinclude, req.revinclude_iterate),
        ):
            items += [
                f"{key}{':iterate' if i in iterate else ''}={quote(v, safe=_URI_SAFE + ':')}"
                for i, v in enumerate(targets)
            ]
        items.sort()
        return f"{self.fhir_base}{req.resource_type}?" + "&".join(items)

    def _includes(self, pr: Principal, req: SearchRequest, resources: list[dict]) -> list[dict]:
        """server search.ts getExtraEntries: every _include / _revinclude on the matches, then the `:iterate` ones
        again on what the previous round found (all of it, seen or not) until a round finds nothing; five rounds or
        more than 1,000 entries -> 400 "Search with _(rev)include reached query scope limit"."""
        if not req.include and not req.revinclude:
            return []
        a = self._access(pr)
        seen = {f"{r['resourceType']}/{r['id']}" for r in resources}
        out: list[dict] = []
        base, first, depth = resources, True, 0
        while base:
            if depth >= MAX_INCLUDE_DEPTH or len(resources) + len(out) > MAX_COUNT:
                raise BadRequest(
                    f"Search with _(rev)include reached query scope limit: depth={depth}, "
                    f"results={len(resources) + len(out)}"
                )
            found: list[dict] = []
            for i, inc in enumerate(req.include):
                if first or i in req.include_iterate:
                    found += self._include_round(pr, a, inc, base)
            for i, inc in enumerate(req.revinclude):
                if first or i in req.revinclude_iterate:
                    found += self._revinclude_round(pr, a, inc, base)
            for res in found:
                key = f"{res['resourceType']}/{res['id']}"
                if key not in seen:
                    seen.add(key)
                    out.append(
                        {
                            "fullUrl": f"{self.fhir_base}{key}",
                            "search": {"mode": "include"},
                            "resource": self._out(a, res),
                        }
                    )
            base, first, depth = found, False, depth + 1
        return out

    def _include_round(self, pr: Principal, a: P.Access, inc: str, base: list[dict]) -> list[dict]:
        """server search.ts getSearchIncludeEntries: the resources `Type:param[:target]` references from `base`
        that the caller may read."""
        src, _, code = inc.partition(":")
        code, _, target = code.partition(":")
        sp = registry().get(src, code)
        if sp is None:
            raise BadRequest(f"Invalid include parameter: {src}:{code}")
        if sp.type != "reference":
            return []
        refs = []
        for r in base:
            if r["resourceType"] == src:
                refs += [x for x in reference_values(sp.extract(r)) if not target or x.startswith(target + "/")]
        return [
            res
            for res in self.repo.read_many(refs)
            if self._visible(pr, res) and a.can(P.READ, res["resourceType"]) and a.matches(res, P.READ)
        ]

    def _revinclude_round(self, pr: Principal, a: P.Access, inc: str, base: list[dict]) -> list[dict]:
        """server search.ts getSearchRevIncludeEntries: a search of `Type?param=<base references>` (count 1000)."""
        src, _, code = inc.partition(":")
        code, _, target = code.partition(":")
        sp = registry().get(src, code)
        if sp is None:
            raise BadRequest(f"Invalid include parameter: {src}:{code}")
        refs = [f"{r['resourceType']}/{r['id']}" for r in base if not target or r["resourceType"] == target]
        if not refs or sp.type != "reference":
            return []
        req = SearchRequest(
            resource_type=src, count=MAX_COUNT, filters=[Filter(code, None, list(dict.fromkeys(refs)), sp)]
        )
        return self.repo.search(req, extra_where=self._policy_where(pr, a, src), count_total=False)[0]

    def _find(self, pr: Principal, rtype: str, query: list[tuple[str, str]] | str, limit: int = 2) -> list[dict]:
        """Conditional-interaction lookup: at most `limit` matches visible to the principal."""
        a = self._access(pr)
        req = parse_search(rtype, query, self.release)
        req.count, req.offset, req.sort, req.include, req.revinclude = limit, 0, [], [], []
        req.cursor = req.after = None
        return self.repo.search(req, extra_where=self._policy_where(pr, a, rtype), count_total=False)[0]

    # ================================================================== operations and metadata
    def capability_statement(self) -> dict:
        """server src/fhir/metadata.ts getCapabilityStatement (public: `GET metadata` needs no login)."""
        return capability_statement(self.fhir_base[: -len("fhir/R4/")], self.release.version)

    def validate_operation(self, body: Any) -> FhirResponse:
        """server src/fhir/routes.ts `POST /:resourceType/$validate`: the body is the resource; Medplum's strict
        validation (validateRepositoryResourceStrictly) -> 200 All OK, or 400 with its OperationOutcome. Nothing is
        written and the resource type in the URL is not compared with the body's."""
        if not isinstance(body, dict):
            raise BadRequest("Missing resourceType")
        self._validate(body)
        return FhirResponse(200, all_ok(), {})

    def binary_content(self, pr: Principal, rid: str, vid: str | None = None) -> tuple[dict, bytes]:
        """A Binary read as its raw content (server fhir/response.ts sendBinaryResponse): the resource (read or vread
        with the caller's access) and its bytes — its `data` when it has one, else what a raw upload stored."""
        if vid is None:
            _, res = self._read_visible(pr, "Binary", rid)
        else:
            a = self._check_type(pr, P.VREAD, "Binary")
            res = self.repo.vread("Binary", rid, vid)
            if not self._visible(pr, res) or not a.matches(res, P.VREAD):
                raise NotFound()
        data = res.get("data")
        if isinstance(data, str):
            try:
                return res, base64.b64decode(data)
            except ValueError:
                return res, b""
        stored = self.repo.binary_content(rid, (res.get("meta") or {}).get("versionId", ""))
        return res, stored or b""

    def _resolve_conditional_references(self, pr: Principal, res: dict) -> dict:
        """server src/fhir/references.ts replaceConditionalReferences (on every create and update, before
        validation): a Reference whose `reference` is a search ("Patient?identifier=s|v") becomes a reference to the
        one resource the caller finds with it — `{reference: "Patient/<id>", display}` as createReference makes it;
        none or several -> 400 "Conditional reference '<search>' did not match any / matched multiple resources"
        with the element's path. Nothing to do (and no cost but one JSON dump) for a resource without one."""
        try:
            text = store_dumps(res)
        except (TypeError, ValueError):
            return res
        if not _CONDITIONAL_REF.search(text):
            return res
        res = store_loads(text)
        found: list[tuple[Any, Any, str, str]] = []  # (container, key, path, search)
        _conditional_references(res, res.get("resourceType") or "", found)
        targets = []
        for _container, _key, path, search in found:
            rtype, _, qs = search.partition("?")
            rtype = rtype.rsplit("/", 1)[-1]
            if rtype not in resource_types():
                raise StructureError("Unknown resource type")
            matches = self._find(pr, rtype, qs, limit=2)
            if len(matches) != 1:
                how = "matched multiple" if matches else "did not match any"
                raise BadRequest(f"Conditional reference '{search}' {how} resources", path)
            targets.append(matches[0])
        for (container, key, _, _), target, display in zip(found, targets, self._displays(targets)):
            ref: dict[str, Any] = {"reference": f"{target['resourceType']}/{target['id']}"}
            if display and display != ref["reference"]:
                ref["display"] = display
            container[key] = ref
        return res

    def _displays(self, resources: list[dict]) -> list[str | None]:
        """The display @medplum/core createReference gives each resource (Medplum's own code, in the validator's
        Node process); without it, none."""
        if not resources or not self.validator.strict:
            return [None] * len(resources)
        from .strict import default_strict_validator

        try:
            return default_strict_validator().displays(resources)
        except (RuntimeError, OSError, ValueError):
            return [None] * len(resources)

    # ================================================================== writes
    def _body_resource(self, body: Any, rtype: str, mismatch: str = "Incorrect resource type") -> dict:
        if not isinstance(body, dict):
            raise BadRequest("Missing resource" if body is None else "Invalid resource")
        if body.get("resourceType") != rtype:
            raise BadRequest(mismatch)
        return body

    def _validate(self, res: dict) -> None:
        unknown = self.unknown_elements.get(str(res.get("resourceType")))
        if unknown:
            extra = [k for k in res if k in unknown]
            if extra:
                raise ValidationFailed(
                    [(f'Invalid additional property "{k}"', f"{res['resourceType']}.{k}") for k in extra]
                )
        self.validator.validate(res)

    def transactions_for(self, pr: Principal) -> bool:
        return self.transactions(pr) if callable(self.transactions) else bool(self.transactions)

    def create(
        self,
        pr: Principal,
        rtype: str,
        body: Any,
        headers: dict[str, str],
        *,
        assigned_id: str | None = None,
        trusted: bool = False,
    ) -> FhirResponse:
        # fhir-router fhirrouter.ts: createResourceImpl names both types; a conditional create goes through
        # repo.ts conditionalCreate, whose check is on the search type
        found_type = body.get("resourceType") if isinstance(body, dict) else None
        res = self._body_resource(
            body,
            rtype,
            "Search type must match resource type for conditional update"
            if headers.get("if-none-exist")
            else f"Incorrect resource type: expected {rtype}, but found {found_type or '<EMPTY>'}",
        )
        a = self._check_type(pr, P.CREATE, rtype)
        ine = headers.get("if-none-exist")
        if not ine:
            return self._create_new(pr, a, rtype, res, assigned_id, trusted)
        # Medplum repo.conditionalCreate: the search and the create in one SERIALIZABLE transaction.
        with self._verdict_first(res), self.repo.transaction():
            self._maybe_conflict()
            found = self._find(pr, rtype, ine.lstrip("?"))
            if len(found) > 1:
                raise MultipleMatches()
            if len(found) == 1:
                r = found[0]
                return FhirResponse(200, self._out(a, r), _res_headers(r))
            return self._create_new(pr, a, rtype, res, assigned_id)

    def _create_new(
        self, pr: Principal, a: P.Access, rtype: str, res: dict, assigned_id: str | None, trusted: bool = False
    ) -> FhirResponse:
        res = {k: v for k, v in res.items() if k != "id"}
        res = a.protect_readonly(res, None, P.CREATE) if not a.full else res
        if not trusted:  # trusted: written by the emulator itself from a fixed shape (execution AuditEvents)
            res = self._resolve_conditional_references(pr, res)
            self._validate(res)
        if not a.matches(res, P.CREATE):
            raise Forbidden()
        stored = self.repo.create(
            res,
            id=assigned_id,
            project=self._project_for_write(pr, res),
            author=pr.profile or None,
            binary=self._raw_bytes(res),
        )
        return FhirResponse(201, self._out(a, stored), {**_res_headers(stored), "Location": self._location(stored)})

    def _location(self, r: dict) -> str:
        """server fhir/response.ts sendResponseHeaders: `Location` only when the outcome is `created`, the
        resource's full URL (getFullUrl), no /_history/ part."""
        return f"{self.fhir_base}{r['resourceType']}/{r['id']}"

    def update(self, pr: Principal, rtype: str, rid: str, body: Any, headers: dict[str, str]) -> FhirResponse:
        res = self._body_resource(body, rtype)
        if res.get("id") != rid:
            raise BadRequest("Incorrect resource ID")  # fhir-router fhirrouter.ts updateResourceImpl
        if not ID_RE.match(rid):
            raise BadRequest("Invalid id")
        return self._do_update(pr, res, headers.get("if-match"))

    def _do_update(
        self, pr: Principal, res: dict, if_match_header: str | None, *, create_by_id: bool = False
    ) -> FhirResponse:
        """PUT Type/id. Like Medplum repo.ts checkExistingResource: a deleted resource may be restored by anyone
        allowed to update; a never-existing id is 404 unless the caller is a super admin (canSetId) — then it is
        created and answered 200 like any update. `create_by_id` = a server-assigned id (batch conditional PUT)."""
        rtype, rid = res["resourceType"], res["id"]
        a = self._check_type(pr, P.UPDATE, rtype)
        existing = None
        row = self.repo.lookup(rtype, rid)
        if row is None:
            if not (pr.superuser or create_by_id):
                raise NotFound()
        elif not row[2]:  # a deleted resource (410 on read) may be restored: existing stays None
            existing = store_loads(row[3])
        if existing is not None:
            if not self._visible(pr, existing):
                raise NotFound()
            if not a.matches(existing, P.UPDATE):
                raise Forbidden()
            res = a.protect_readonly(res, existing, P.UPDATE) if not a.full else res
        else:
            if not a.can(P.CREATE, rtype):
                raise Forbidden()
            res = a.protect_readonly(res, None, P.CREATE) if not a.full else res
        res = self._resolve_conditional_references(pr, res)
        self._validate(res)
        if not a.matches(res, P.UPDATE if existing is not None else P.CREATE):
            raise Forbidden()
        if_match = parse_if_match(if_match_header)
        if if_match is not None and existing is None:
            raise PreconditionFailed()
        # inside a transaction (a batch entry, a conditional update) nothing else wrote since `lookup`: the store
        # does not read the row again
        stored, created, _changed = self.repo.update(
            res,
            if_match=if_match,
            project=self._project_for_write(pr, res),
            author=pr.profile or None,
            known=row,
            previous=existing,
            binary=self._raw_bytes(res),
        )
        headers = _res_headers(stored)
        if created and create_by_id:
            headers["Location"] = self._location(stored)
            return FhirResponse(201, self._out(a, stored), headers)
        return FhirResponse(200, self._out(a, stored), headers)

    def conditional_update(
        self, pr: Principal, rtype: str, query: list[tuple[str, str]], body: Any, headers: dict[str, str]
    ) -> FhirResponse:
        res = self._body_resource(body, rtype, "Search type must match resource type for conditional update")
        # Medplum repo.conditionalUpdate: the search and the write in one SERIALIZABLE transaction.
        with self._verdict_first(res), self.repo.transaction():
            self._maybe_conflict()
            found = self._find(pr, rtype, query)
            if len(found) > 1:
                raise MultipleMatches()
            if not found:
                if res.get("id"):
                    raise BadRequest("Cannot perform create as update with client-assigned ID", f"{rtype}.id")
                return self.create(pr, rtype, res, {})
            target = found[0]
            if res.get("id") and res["id"] != target["id"]:
                raise BadRequest("Resource ID did not match resolved ID", f"{rtype}.id")
            res = {**res, "id": target["id"]}
            return self._do_update(pr, res, headers.get("if-match"))

    def patch(self, pr: Principal, rtype: str, rid: str, body: Any, headers: dict[str, str]) -> FhirResponse:
        ctype = headers.get("content-type", "application/json-patch+json").split(";")[0].strip().lower()
        if ctype and ctype not in ("application/json-patch+json", "application/json", "application/fhir+json"):
            raise UnsupportedMediaType()
        a = self._check_type(pr, P.UPDATE, rtype)
        # Medplum repo.patchResource reads, patches and writes in one transaction: a JSON Patch `test` on
        # meta.versionId is a compare-and-set.
        with self.repo.transaction():
            current = self.repo.read(rtype, rid)
            if not self._visible(pr, current):
                raise NotFound()
            if not a.matches(current, P.UPDATE):
                raise Forbidden()
            patched = apply_patch(current, body)
            # server repo.ts patchResource checks type and id BEFORE patching, then runs updateResourceImpl on the
            # patched resource: a patched resourceType/id is simply the resource that gets updated (a type or id that
            # does not exist -> 404 Not found for anyone but a super admin; an unknown type -> "Unknown resource type").
            ptype, pid = patched.get("resourceType"), patched.get("id")
            if not isinstance(pid, str) or not pid:
                raise BadRequest("Missing id")
            if not ID_RE.match(pid):
                raise BadRequest("Invalid id")
            if ptype != rtype:
                if not isinstance(ptype, str) or not ptype:
                    raise StructureError("Resource type is null")
                if ptype not in resource_types():
                    raise StructureError("Unknown resource type")
            return self._do_update(pr, patched, headers.get("if-match"))

    def conditional_patch(self, pr: Principal, rtype: str, query, body: Any, headers: dict[str, str]) -> FhirResponse:
        found = self._find(pr, rtype, query)
        if len(found) > 1:
            raise MultipleMatches()
        if not found:
            raise NotFound()
        return self.patch(pr, rtype, found[0]["id"], body, headers)

    def delete(self, pr: Principal, rtype: str, rid: str, *, if_match: str | None = None) -> FhirResponse:
        """fhir-router 5.2.13 fhirrouter.ts deleteResource passes `{ifMatch}` to repo.deleteResource; a version
        that is not the current one -> 412 Precondition Failed (fhir-router repo.ts), nothing deleted."""
        a = self._check_type(pr, P.DELETE, rtype)
        try:
            current = self.repo.read(rtype, rid)
        except FhirError as e:
            if e.status == 410:  # Medplum: deleting a deleted resource is 200 All OK
                return FhirResponse(200, all_ok(), {})
            raise
        if not self._visible(pr, current):
            raise NotFound()
        if not a.matches(current, P.DELETE):
            raise Forbidden()
        if if_match is not None and (current.get("meta") or {}).get("versionId") != if_match:
            raise PreconditionFailed()
        self.repo.delete(rtype, rid)
        return FhirResponse(200, all_ok(), {})

    def conditional_delete(self, pr: Principal, rtype: str, query: list[tuple[str, str]]) -> FhirResponse:
        """fhir-router repo.ts FhirRepository.conditionalDelete (server repo.ts calls super): search with count 2;
        more than one match -> 412 multiple-matches and nothing deleted; none -> 200 All OK; one -> deleted."""
        self._check_type(pr, P.DELETE, rtype)
        with self.repo.transaction():
            found = self._find(pr, rtype, query, limit=2)
            if len(found) > 1:
                raise MultipleMatches()
            for r in found:
                self.delete(pr, rtype, r["id"])
        return FhirResponse(200, all_ok(), {})

    # ================================================================== batch / transaction


def _conditional_references(node: Any, path: str, out: list) -> None:
    """Collect (container, key, element path, search) for every Reference whose `reference` contains "?" — paths as
    Medplum's crawler names them (`Observation.performer[0]`: the index only on the Reference itself)."""
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{path}.{k}"
            if isinstance(v, dict):
                ref = v.get("reference")
                if isinstance(ref, str) and "?" in ref:
                    out.append((node, k, sub, ref))
                else:
                    _conditional_references(v, sub, out)
            elif isinstance(v, list):
                for i, item in enumerate(v):
                    ref = item.get("reference") if isinstance(item, dict) else None
                    if isinstance(ref, str) and "?" in ref:
                        out.append((v, i, f"{sub}[{i}]", ref))
                    else:
                        _conditional_references(item, sub, out)


def _form_params(body: Any) -> list[tuple[str, str]]:
    """POST _search body: urlencoded form given as a dict (values str or list), or a raw query string."""
    if isinstance(body, str):
        return parse_qsl(body, keep_blank_values=True)
    if not isinstance(body, dict) or "resourceType" in body:
        return []
    out = []
    for k, v in body.items():
        if isinstance(v, list):
            out += [(str(k), str(x)) for x in v]
        elif v is not None:
            out.append((str(k), str(v)))
    return out
