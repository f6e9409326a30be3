"""Batch and transaction Bundles (server fhir/batch.ts, fhir-router repo.ts): the entries are preprocessed (ids
assigned, `urn:uuid:` placeholders and conditional references resolved, identifiers looked up in one query), run in
interaction order, and answered at their input positions; a transaction is all or nothing. The rules are listed at
the top of service.py. `BatchOperations` is mixed into `FhirService`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..errors import (
    BadRequest,
    FhirError,
    MultipleMatches,
    NotFound,
    ServerError,
    all_ok,
    created_outcome,
    status_of,
)
from ..ids import uuid4
from . import policy as P
from .principal import Principal
from .response import FhirResponse
from .schema import Validator, resource_types
from .searchparams import registry
from .store import Repository

log = logging.getLogger("medport.emulator.medplum.fhir")

_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
MAX_TRANSACTION_UPDATES = 50
MAX_SERIALIZABLE_TRANSACTION_ENTRIES = 8
_URN = re.compile(r"urn(?::|%3A)uuid(?::|%3A)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

if TYPE_CHECKING:

    class ServiceCore:
        """What the batch code uses of the `FhirService` it is mixed into (declared for the type checker only)."""

        repo: Repository
        validator: Validator
        batch_delay_s: float

        def _access(self, pr: Principal) -> P.Access: ...
        def _check_type(self, pr: Principal, interaction: str, rtype: str) -> P.Access: ...
        def _dispatch(
            self,
            pr: Principal,
            method: str,
            path: str,
            query: list[tuple[str, str]],
            body: Any,
            headers: dict[str, str],
        ) -> FhirResponse: ...
        def _do_update(
            self, pr: Principal, res: dict, if_match_header: str | None, *, create_by_id: bool = False
        ) -> FhirResponse: ...
        def _find(
            self, pr: Principal, rtype: str, query: list[tuple[str, str]] | str, limit: int = 2
        ) -> list[dict]: ...
        def _maybe_conflict(self) -> None: ...
        def _policy_where(self, pr: Principal, a: P.Access, rtype: str) -> tuple[str, list] | None: ...
        def create(
            self,
            pr: Principal,
            rtype: str,
            body: Any,
            headers: dict[str, str],
            *,
            assigned_id: str | None = None,
            trusted: bool = False,
        ) -> FhirResponse: ...
        def transactions_for(self, pr: Principal) -> bool: ...
else:
    ServiceCore = object


class BatchOperations(ServiceCore):
    def batch(self, pr: Principal, bundle: Any) -> FhirResponse:  # noqa: C901 — one pass over the entries, Medplum's batch rules in order
        if self.batch_delay_s > 0:
            time.sleep(self.batch_delay_s)  # outside the store's lock: other requests go on
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("Not a bundle")
        btype = bundle.get("type")
        if btype not in ("batch", "transaction"):
            raise BadRequest(f"Unrecognized bundle type: {btype}")
        entries = bundle.get("entry")
        if not isinstance(entries, list) or not entries:
            raise BadRequest("Missing bundle entries")
        tx = btype == "transaction" and self.transactions_for(pr)
        entries = [_shallow_entry(e) for e in entries]
        results: list[dict | None] = [None] * len(entries)
        identities: dict[str, str] = {}
        buckets: dict[str, list[int]] = {
            k: [] for k in ("batch", "delete", "create", "update", "patch", "operation", "search", "read", "history")
        }
        updates, strong = 0, False
        seen: set[str] = set()
        # Medplum's validator (strict mode) starts on the bodies now, in its own process, while this thread
        # resolves identities and writes; `validate` of each entry then takes its answer (a body that a urn:uuid
        # rewrite changed is validated again below).
        self.validator.prevalidate_async([e.get("resource") for e in entries if _writes_body(e)])
        try:
            # Identities are resolved before anything runs and outside the write transaction, as fhir-router
            # batch.ts does it (so two simultaneous batches can both find no match, as on Medplum).
            resolved = self._resolve_identifiers(pr, entries)
            for i, entry in enumerate(entries):
                try:
                    kind = self._preprocess(pr, entry, i, identities, seen, tx, resolved.get(i))
                except FhirError as e:
                    if tx:
                        return FhirResponse(e.status, e.outcome, {})
                    results[i] = _entry_response(e.outcome)
                    continue
                if kind in ("create-conditional", "update-conditional", "delete-conditional"):
                    strong = True
                if kind.startswith("update"):
                    updates += 1
                buckets[kind.split("-")[0]].append(i)

            if tx:
                if updates > MAX_TRANSACTION_UPDATES:
                    raise BadRequest("Transaction contains more update operations than allowed")
                if strong and len(entries) > MAX_SERIALIZABLE_TRANSACTION_ENTRIES:
                    raise BadRequest("Transaction requires strict isolation but has too many entries")

            order = [i for b in buckets.values() for i in b]
            # every identity is resolved now: rewrite the entries once; bodies the rewrite changed are validated
            # in one more call
            rewritten = {i: _rewrite(entries[i], identities) for i in order}
            self.validator.prevalidate([e.get("resource") for e in rewritten.values() if _writes_body(e)])
            # One SQLite transaction for the bundle; each batch entry in a savepoint (its failure undoes its own
            # writes only).
            for careful in (False, True):
                try:
                    with self.repo.transaction():
                        self._run_entries(pr, order, rewritten, results, tx, careful)
                    break
                except _PartialWrite:
                    # an entry failed after writing part of itself: undo the whole bundle and run it again with a
                    # savepoint around every entry
                    results = [r if i not in order else None for i, r in enumerate(results)]
                    continue
        except _EntryFailed as ef:
            return FhirResponse(ef.resp.status, ef.resp.body, {})
        finally:
            self.validator.clear_prevalidated()
        out = {
            "resourceType": "Bundle",
            "type": f"{btype}-response",
            "entry": [r or _entry_response(ServerError().outcome) for r in results],
        }
        return FhirResponse(200, out, {})

    def _resolve_identifiers(self, pr: Principal, entries: list) -> dict[int, list[str]]:
        """The conditional entries whose condition is one `identifier=<system>|<value>` (what importers send),
        optionally within one compartment (`&_compartment=Patient/<id>`), resolved with one query per resource
        type: entry index -> ids of the matching resources the principal may see (the answer `_find` gives,
        without a search per entry). Each such entry is marked `_fast_key`."""
        keys: list[tuple[int, str, str, str, str | None]] = []
        for i, e in enumerate(entries):
            cond = _identifier_condition(e)
            if cond is not None:
                keys.append((i, *cond))
        out = self._lookup_identifiers(pr, keys)
        for i, rtype, system, code, _compartment in keys:
            if i in out:
                entries[i]["_fast_key"] = (rtype, system, code)
                entries[i]["_fast_compartment"] = _compartment
        return out

    def _lookup_identifiers(
        self, pr: Principal, keys: list[tuple[int, str, str, str, str | None]]
    ) -> dict[int, list[str]]:
        groups: dict[str, list[tuple[int, str, str, str | None]]] = {}
        for i, rtype, system, code, compartment in keys:
            groups.setdefault(rtype, []).append((i, system, code, compartment))
        out: dict[int, list[str]] = {}
        for rtype, items in groups.items():
            sp = registry().get(rtype, "identifier")
            if sp is None or sp.type != "token" or not sp.supported:
                continue
            where = self._policy_where(pr, self._access(pr), rtype)
            codes = sorted({c for _, _, c, _ in items})
            found: dict[tuple[str, str], list[tuple[str, int]]] = {}
            for j in range(0, len(codes), 500):
                part = codes[j : j + 500]
                sql = (
                    "SELECT x.system, x.code, r.id, r.rid FROM idx_token x JOIN resources r ON r.rid = x.rid "
                    f"WHERE x.param = 'identifier' AND x.code IN ({','.join('?' * len(part))}) "
                    "AND r.type = ? AND r.deleted = 0" + (f" AND {where[0]}" if where else "")
                )
                for system, code, rid, row in self.repo.query(sql, [*part, rtype, *(where[1] if where else [])]):
                    ids = found.setdefault((system, code), [])
                    if all(rid != x for x, _ in ids):
                        ids.append((rid, row))
            compartments = (
                self._compartments_of([row for ids in found.values() for _, row in ids])
                if any(c for _, _, _, c in items)
                else {}
            )
            for i, system, code, compartment in items:
                out[i] = [
                    rid
                    for rid, row in found.get((system, code), [])
                    if compartment is None or compartment in compartments.get(row, ())
                ]
        return out

    def _compartments_of(self, rows: list[int]) -> dict[int, set[str]]:
        """row -> the compartments it is in (meta.compartment, indexed as `_compartment`)."""
        out: dict[int, set[str]] = {}
        for j in range(0, len(rows), 500):
            part = rows[j : j + 500]
            sql = f"SELECT rid, ref FROM idx_ref WHERE param = '_compartment' AND rid IN ({','.join('?' * len(part))})"
            for row, ref in self.repo.query(sql, part):
                out.setdefault(row, set()).add(ref)
        return out

    def _run_entries(
        self, pr: Principal, order: list[int], rewritten: dict, results: list, tx: bool, careful: bool
    ) -> None:
        """Run the entries of a bundle inside its transaction. A transaction fails whole on the first failing entry.
        A batch isolates each entry's failure: an entry that writes one resource (create, update, conditional
        ones) runs without a savepoint of its own — its failures come before its write — and should it ever fail
        after writing (`Repository.writes` moved), `_PartialWrite` makes the caller run the bundle again
        `careful`ly: every entry in a savepoint (as every other kind of entry always is)."""
        self._recheck_identifiers(pr, [rewritten[i] for i in order])
        for i in order:
            entry = rewritten[i]
            if tx:
                resp = self._run_entry(pr, entry)
                if resp.status >= 400:
                    raise _EntryFailed(resp)
                results[i] = self._entry_from_response(resp)
                continue
            single = not careful and _single_write(entry)
            before = self.repo.writes
            try:
                if single:
                    resp = self._run_entry(pr, entry)
                    if resp.status >= 400 and self.repo.writes != before:
                        raise _PartialWrite()
                else:
                    with self.repo.transaction():
                        resp = self._run_entry(pr, entry)
                        if resp.status >= 400:
                            raise _EntryFailed(resp)
            except _EntryFailed as ef:
                resp = ef.resp
            except _PartialWrite:
                raise
            except RecursionError:
                if single and self.repo.writes != before:
                    raise _PartialWrite() from None
                err = BadRequest("Resource is nested too deeply")
                resp = FhirResponse(err.status, err.outcome, {})
            except Exception:  # a bug in one entry must not sink the whole batch
                if single and self.repo.writes != before:
                    raise _PartialWrite() from None
                log.exception("unexpected error in a batch entry")
                resp = FhirResponse(500, ServerError().outcome, {})
            results[i] = self._entry_from_response(resp)

    def _recheck_identifiers(self, pr: Principal, entries: list) -> None:
        """Inside the batch's write transaction: the create-by-update entries resolved by `_resolve_identifiers`
        are looked up again in one query per type. Those still unmatched are marked `_fast_clear`: when such an
        entry runs and nothing written in this transaction since carries its identifier, the condition is known
        to match nothing (the re-check Medplum's conditionalUpdate makes, without a search per entry)."""
        todo = [
            e
            for e in entries
            if isinstance(e, dict)
            and e.get("_fast_key")
            and (e.get("_create_by_update") or (e.get("_assigned_id") and (e.get("request") or {}).get("ifNoneExist")))
        ]
        if not todo:
            return
        again = self._lookup_identifiers(
            pr, [(i, *e["_fast_key"], e.get("_fast_compartment")) for i, e in enumerate(todo)]
        )
        for i, e in enumerate(todo):
            e["_fast_clear"] = i in again and not again[i]

    def _preprocess(  # noqa: C901 — Medplum's transaction preprocessing steps, in its order
        self,
        pr: Principal,
        entry: Any,
        i: int,
        identities: dict[str, str],
        seen: set,
        tx: bool,
        resolved: list[str] | None = None,
    ) -> str:
        """Classify the entry and resolve its identity before anything runs, like fhir-router batch.ts
        preprocessEntry/resolveIdentity: every create gets its id; every conditional PUT/DELETE/PATCH (URL with
        `?`) is resolved by a search (count 2): several matches -> 400 "Conditional <METHOD> matched multiple
        resources" (expression `Bundle.entry[i].request.url`) — in a batch too, where only that entry fails;
        one match -> the URL becomes `Type/id`; none -> DELETE is a no-op, PUT creates (a body id -> 400 "Cannot
        provide ID for create by update"), PATCH -> 400 "Conditional PATCH did not match any resources".
        A URL that matches no route -> 404."""
        if not isinstance(entry, dict):
            raise BadRequest("Invalid Bundle entry", f"Bundle.entry[{i}]")
        req = entry.get("request")
        if not isinstance(req, dict) or not req.get("method"):
            raise BadRequest("Missing Bundle entry request method", f"Bundle.entry[{i}].request.method")
        if not isinstance(req.get("url"), str) or not req["url"]:
            raise BadRequest("Missing Bundle entry request URL", f"Bundle.entry[{i}].request.url")
        method = str(req["method"]).upper()
        url = req["url"]
        path, qs = _entry_path(url)
        parts = [p for p in path.strip("/").split("/") if p]
        n = len(parts)
        op = n and any(p.startswith("$") for p in parts)
        if method == "GET":
            if n > 4 or (n == 3 and parts[2] != "_history") or (n == 4 and parts[2] != "_history"):
                raise NotFound()
            kind = "operation" if op else ("search" if n <= 1 else "history" if n == 3 else "read")
        elif method == "POST":
            if n == 0:
                kind = "batch"
            else:
                kind = (
                    "operation"
                    if op
                    else (
                        "search"
                        if n == 2 and parts[1] == "_search"
                        else "create-conditional"
                        if n == 1 and req.get("ifNoneExist")
                        else "create"
                    )
                )
                if n != 1 and kind == "create":
                    raise NotFound()
        elif method in ("PUT", "DELETE", "PATCH") and n in (1, 2):
            base = {"PUT": "update", "DELETE": "delete", "PATCH": "patch"}[method]
            kind = base + ("-conditional" if "?" in url else "")
        elif method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            raise NotFound()
        else:
            raise BadRequest(f"Invalid REST interaction in batch: {method} {url}")
        placeholder = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else ""
        reference = None
        rtype = parts[0] if parts else None
        res = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        if kind.startswith("create") and rtype in resource_types():
            if res is not None:
                new_id = uuid4()
                entry["_assigned_id"] = new_id
                reference = f"{rtype}/{new_id}"
            if req.get("ifNoneExist"):
                found = (
                    [{"id": x} for x in resolved]
                    if resolved is not None
                    else self._find(pr, rtype, str(req["ifNoneExist"]).lstrip("?"))
                )
                if len(found) == 1:
                    reference = f"{rtype}/{found[0]['id']}"
        elif kind.endswith("-conditional") and rtype in resource_types():
            found = [{"id": x} for x in resolved] if resolved is not None else self._find(pr, rtype, qs)
            if not found:
                if method == "PUT":
                    if res is not None:
                        if res.get("id"):
                            raise BadRequest("Cannot provide ID for create by update")
                        new_id = uuid4()
                        # resolved like Medplum: the entry is created with a server-assigned id
                        entry["resource"] = {**res, "id": new_id}
                        entry["request"]["url"] = f"{rtype}/{new_id}"
                        entry["_create_by_update"] = qs
                        reference = f"{rtype}/{new_id}"
                elif method == "PATCH":
                    raise BadRequest("Conditional PATCH did not match any resources", f"Bundle.entry[{i}].request.url")
            elif len(found) > 1:
                raise BadRequest(f"Conditional {method} matched multiple resources", f"Bundle.entry[{i}].request.url")
            else:
                target = found[0]["id"]
                reference = f"{rtype}/{target}"
                entry["request"]["url"] = reference
                if res is not None:
                    entry["resource"] = {**res, "id": target}
        elif kind in ("update", "delete", "patch") and "/" in url:
            reference = url
        if reference:
            if placeholder:
                identities[placeholder] = reference
            if tx:
                if reference in seen:
                    raise BadRequest("Duplicate resource identity found in Bundle")
                seen.add(reference)
        return kind

    def _run_entry(self, pr: Principal, entry: dict) -> FhirResponse:
        req = entry["request"]
        method = str(req["method"]).upper()
        path, qs = _entry_path(req["url"])
        query = parse_qsl(qs, keep_blank_values=True)
        headers = {}
        for k, h in (("ifNoneExist", "if-none-exist"), ("ifMatch", "if-match"), ("ifNoneMatch", "if-none-match")):
            if req.get(k):
                headers[h] = str(req[k])
        body = entry.get("resource")
        assigned = entry.get("_assigned_id")
        try:
            if method == "PATCH":
                body = _patch_body(body)
                headers["content-type"] = "application/json-patch+json"
            parts = [p for p in path.strip("/").split("/") if p]
            if assigned and method == "POST" and len(parts) == 1 and parts[0] in resource_types():
                if headers.get("if-none-exist") and self._fast_clear(entry):
                    # a conditional create whose condition matched nothing when this transaction began, and
                    # nothing written in it since carries that identifier: the search would find nothing
                    self._maybe_conflict()
                    headers = {k: v for k, v in headers.items() if k != "if-none-exist"}
                return self.create(pr, parts[0], body, headers, assigned_id=assigned)
            if entry.get("_create_by_update") and method == "PUT" and len(parts) == 2 and isinstance(body, dict):
                if body.get("resourceType") != parts[0]:
                    raise BadRequest("Incorrect resource type")
                # Medplum runs this entry as repo.conditionalUpdate(resource with the assigned id, condition):
                # the condition is searched again inside the (serializable) write, so a resource another
                # request created since preprocessing is never created twice.
                self._maybe_conflict()
                if self._fast_clear(entry):
                    # no match when this transaction began (_recheck_identifiers), and nothing written in it since
                    # carries that identifier: the search would find nothing
                    found = []
                else:
                    found = self._find(pr, parts[0], entry["_create_by_update"])
                if len(found) > 1:
                    raise MultipleMatches()
                if found and found[0]["id"] != parts[1]:
                    raise BadRequest("Resource ID did not match resolved ID", f"{parts[0]}.id")
                if not self.repo.exists(parts[0], parts[1]):
                    self._check_type(pr, P.CREATE, parts[0])
                return self._do_update(pr, body, None, create_by_id=True)
            return self._dispatch(pr, method, path, query, body, headers)
        except FhirError as e:
            return FhirResponse(e.status, e.outcome, {})

    def _fast_clear(self, entry: dict) -> bool:
        """The entry's identifier condition matched nothing when the batch's transaction began
        (`_recheck_identifiers`), and nothing written in it since carries that identifier."""
        fast = entry.get("_fast_key")
        return (
            fast is not None
            and bool(entry.get("_fast_clear"))
            and self.repo.in_transaction()
            and not self.repo.token_written(fast[0], "identifier", fast[1], fast[2])
        )

    def _entry_from_response(self, resp: FhirResponse) -> dict:
        """fhir-router batch.ts buildBundleResponse: `response` carries the outcome, the status and (when it
        succeeded with a resource) its location `Type/id` — no etag, no lastModified; then the resource."""
        body = resp.body
        status = resp.status
        if status >= 400:
            return {"response": {"outcome": body, "status": str(status)}}
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            return {"response": {"outcome": body, "status": str(status)}}
        r: dict[str, Any] = {"outcome": created_outcome() if status == 201 else all_ok(), "status": str(status)}
        e: dict[str, Any] = {"response": r}
        if isinstance(body, dict):
            if body.get("id") and body.get("resourceType") != "Bundle":
                r["location"] = f"{body['resourceType']}/{body['id']}"
            e["resource"] = body
        return e


class _EntryFailed(Exception):
    def __init__(self, resp: FhirResponse):
        self.resp = resp


class _PartialWrite(Exception):
    """A batch entry run without a savepoint failed after writing: the bundle is run again with savepoints."""


def _entry_path(url: str) -> tuple[str, str]:
    """A batch entry's request URL as (path relative to the FHIR base, query string). fhir-router urlrouter.ts
    matches the URL's segments against its routes as written: an absolute URL ("https://host/fhir/R4/Patient/1")
    has too many segments for any route, so that entry is 404."""
    path, _, qs = url.partition("?")
    return path, qs


def _shallow_entry(e: Any) -> Any:
    if not isinstance(e, dict):
        return e
    e = dict(e)
    if isinstance(e.get("request"), dict):
        e["request"] = dict(e["request"])
    return e


def _single_write(e: Any) -> bool:
    """An entry that writes at most one resource, last: a create or an update (conditional ones too)."""
    if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
        return False
    req = e.get("request") or {}
    method = str(req.get("method")).upper()
    if method not in ("POST", "PUT"):
        return False
    path, _ = _entry_path(str(req.get("url") or ""))
    parts = [p for p in path.strip("/").split("/") if p]
    return len(parts) in (1, 2) and not any(p.startswith("$") or p == "_search" for p in parts)


def _writes_body(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("request"), dict)
        and str(e["request"].get("method")).upper() in ("POST", "PUT")
    )


def _identifier_condition(e: Any) -> tuple[str, str, str, str | None] | None:
    """(type, system, value, compartment) when a batch entry's condition is exactly `identifier=<system>|<value>`,
    optionally `&_compartment=<Type>/<id>` (a conditional PUT/DELETE/PATCH URL, or a POST's ifNoneExist) on a known
    resource type; else None (the generic search runs)."""
    if not isinstance(e, dict):
        return None
    req = e.get("request")
    if not isinstance(req, dict) or not isinstance(req.get("url"), str):
        return None
    method = str(req.get("method") or "").upper()
    path, qs = _entry_path(req["url"])
    if method == "POST":
        if not req.get("ifNoneExist") or not isinstance(req.get("ifNoneExist"), str):
            return None
        qs = req["ifNoneExist"].lstrip("?")
    elif method not in ("PUT", "DELETE", "PATCH") or "?" not in req["url"]:
        return None
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) != 1 or parts[0] not in resource_types() or "identifier=" not in qs:
        return None
    pairs = parse_qsl(qs, keep_blank_values=True)
    compartment = None
    if (
        len(pairs) == 2
        and pairs[1][0] == "_compartment"
        and re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", pairs[1][1])
    ):
        compartment = pairs.pop()[1]
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        return None
    value = pairs[0][1]
    if "," in value or "\\" in value or "\0" in value:
        return None
    system, bar, code = value.partition("|")
    if not bar or not system or not code:
        return None
    return parts[0], system, code, compartment


def _entry_response(oo: dict) -> dict:
    return {"response": {"outcome": oo, "status": str(status_of(oo))}}


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    """Replace every `urn:uuid:<uuid>` placeholder (also inside longer strings) with its "Type/id"."""
    if not ids:
        return node
    text = _json_dumps(node)
    if "urn" not in text:
        return node

    def sub(m: re.Match) -> str:
        return ids.get(m.group(0).replace("%3A", ":"), m.group(0))

    return json.loads(_URN.sub(sub, text))


def _patch_body(res: Any) -> Any:
    if isinstance(res, dict) and res.get("resourceType") == "Binary":
        try:
            return json.loads(base64.b64decode(res.get("data") or ""))
        except Exception:
            raise BadRequest("Invalid Binary patch body") from None
    if isinstance(res, dict) and res.get("resourceType") == "Parameters":
        ops = []
        for p in res.get("parameter") or []:
            if not isinstance(p, dict) or p.get("name") != "operation":
                continue
            parts = {x.get("name"): x for x in p.get("part") or [] if isinstance(x, dict)}
            o = (parts.get("op") or {}).get("valueCode")
            if not o:
                raise BadRequest("PATCH Parameters missing op")
            d: dict[str, Any] = {"op": o}
            if "path" in parts:
                d["path"] = parts["path"].get("valueString")
            if "from" in parts:
                d["from"] = parts["from"].get("valueString")
            if "value" in parts:
                try:
                    d["value"] = json.loads(parts["value"].get("valueString") or "null")
                except ValueError:
                    raise BadRequest("Invalid patch value") from None
            ops.append(d)
        return ops
    if isinstance(res, list):
        return res
    raise BadRequest("Patch entry must include a Binary or Parameters resource")
