"""Hostile HTTP requests for the Medplum emulator, and the checks every answer must pass.

Shared by the bounded property test (tests/emulator/medplum/test_fuzz.py) and the long run
(bench/bench_fuzz.py). The requests cover the whole HTTP surface — FHIR REST (CRUD, search with long values,
thousands of parameters or OR values, huge offsets, batch/transaction, JSON Patch), `$execute` / `$deploy`,
`/oauth2/token`, `/auth/me`, `/admin/...` and `/_emulator/...` — with bodies that are not UTF-8, not JSON,
JSON Node refuses (NaN, Infinity), JSON holding unpaired surrogates, numbers beyond double range, deep
nesting, bodies over the 1 MB limit, and every kind of credential (admin, a non-admin client, none, garbage).

The checks (`Fuzzer.send`):
- no answer is a 5xx, and no answer carries Python exception text;
- a request answered 4xx writes nothing to the FHIR store (history rows and committed changes compared
  before and after; a `$execute` whose bot ran keeps its AuditEvent, as on Medplum);
- no request takes longer than `timeout_s` (a hang fails instead of blocking the run).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from hypothesis import strategies as st

PROJECT = "medport-project"
TYPES = [
    "Patient",
    "Observation",
    "Organization",
    "Task",
    "Bundle",
    "Bot",
    "Binary",
    "AuditEvent",
    "AsyncJob",
    "DocumentReference",
    "Encounter",
    "Xyz",
    "patient",
    "",
]
SEARCH_KEYS = [
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_summary",
    "_include",
    "_revinclude",
    "_elements",
    "_id",
    "_lastUpdated",
    "name",
    "name:contains",
    "name:exact",
    "family",
    "identifier",
    "identifier:text",
    "identifier:not",
    "birthdate",
    "gender",
    "subject",
    "subject:Patient",
    "subject:Patient.name",
    "patient.identifier",
    "value-quantity",
    "code",
    "organization",
    "_cursor",
    "_format",
    "x",
    "name:zz",
]
CONTENT_TYPES = [
    "application/json",
    "application/fhir+json",
    "application/json-patch+json",
    "text/plain",
    "x-application/hl7-v2+er7",
    "application/x-www-form-urlencoded",
    "application/xml",
    "multipart/form-data; boundary=x",
    "application/json; charset=utf-8",
    "application/octet-stream",
    "",
]
AUTHS = ["admin", "admin", "admin", "admin", "basic-admin", "client", "none", "garbage", "bad-basic"]

# What would betray a Python exception in an answer (a JS bot's TypeError in a $execute body is fine).
PYTHON_ERROR = re.compile(
    r"Traceback \(most recent call last\)|\b(UnicodeEncodeError|UnicodeDecodeError|OverflowError|"
    r"OperationalError|IntegrityError|ProgrammingError|KeyError|AttributeError|IndexError|"
    r"RecursionError|ZeroDivisionError|NotImplementedError|sqlite3)\b|\.py\", line \d+"
)


@dataclass
class Req:
    method: str
    path: str  # relative to the server root, unquoted
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    auth: str = "admin"

    def describe(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in self.query)
        body = (self.body or b"")[:160]
        return (
            f"{self.method} /{self.path[:120]}?{q[:200]} ({len(q)} chars) auth={self.auth} "
            f"headers={self.headers} body[{len(self.body or b'')}]={body!r}"
        )


# ------------------------------------------------------------------------------------------ strategies
_text = st.text(max_size=12)
_weird_text = st.one_of(
    _text,
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "é",
            "😀",
            "\ufffd",
            "%",
            "%%",
            "_",
            "\\",
            "\\,",
            ",",
            "|",
            "a|b",
            "s|",
            "|c",
            "gt2020",
            "lt",
            "le-1",
            "ap1e400",
            "1e400",
            "NaN",
            "Infinity",
            "-0",
            "99999999999999999999999",
            "2020-13-45",
            "9999-12-31T23:59:59Z",
            "0000-01-01",
            "Patient/x",
            "Patient/",
            "../..",
            "$x",
        ]
    ),
)
_id = st.one_of(
    st.sampled_from(["x", "123", "00000000-0000-0000-0000-000000000000", "a" * 65, "..", "%2F", "@fixture"]),
    st.text(min_size=1, max_size=10),
)


def _long_value(draw) -> str:
    n = draw(st.sampled_from([1000, 20_000, 30_000, 49_999, 50_001, 60_000, 69_000, 71_000]))
    ch = draw(st.sampled_from(["a", "é", "%", "_", "😀"]))
    return ch * (n // len(ch.encode("utf-8")) if ch in ("é", "😀") else n)


@st.composite
def query_strategy(draw) -> list[tuple[str, str]]:
    kind = draw(st.sampled_from(["few"] * 12 + ["long-value", "many-or", "many-params", "same-params", "offset"]))
    if kind == "few":
        keys = st.one_of(st.sampled_from(SEARCH_KEYS), _text)
        return draw(st.lists(st.tuples(keys, _weird_text), max_size=4))
    key = draw(
        st.sampled_from(
            [
                "name",
                "name:contains",
                "identifier",
                "identifier:text",
                "_id",
                "subject",
                "family",
                "birthdate",
                "code",
                "_lastUpdated",
                "value-quantity",
            ]
        )
    )
    if kind == "long-value":
        return [(key, _long_value(draw))]
    if kind == "many-or":
        n = draw(st.sampled_from([200, 1000, 3000, 12_000]))
        fmt = draw(st.sampled_from(["v{}", "s|v{}", "{}", "gt20{:02d}", "Patient/{}"]))
        return [(key, ",".join(fmt.format(i % 100 if "20" in fmt else i) for i in range(n)))]
    if kind == "many-params":
        n = draw(st.sampled_from([100, 1000, 2000, 5000]))
        return [(key, f"v{i}") for i in range(n)]
    if kind == "same-params":
        n = draw(st.sampled_from([1000, 2000, 8000]))
        return [(key, "Smi")] * n
    return [
        (
            "_offset",
            draw(st.sampled_from(["99999999999999999999999", "10001", "10000", "-5", "1e5", "9" * 400, "１２", "²"])),
        )
    ]


_json_scalar = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _weird_text
)
_json = st.recursive(
    _json_scalar, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(_text, ch, max_size=4), max_leaves=12
)


_name = st.one_of(st.sampled_from(["Smith", "Jones", "Lee", "Ng", "O'Brien", "Zoë", "李"]), _weird_text)


def _resource(draw, rtype: str) -> dict:
    r: dict[str, Any] = {"resourceType": rtype}
    if rtype == "Patient":
        r["name"] = [{"family": draw(_name), "given": [draw(_name)]}]
        r.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "birthDate": _weird_text,
                        "gender": st.sampled_from(["male", "x", ""]),
                        "active": _json_scalar,
                        "identifier": st.just([{"system": "s", "value": "v"}]),
                        "id": _id,
                        "extra": _json,
                    },
                )
            )
        )
    elif rtype == "Observation":
        r.update(
            {
                "status": draw(st.sampled_from(["final", "final", "bogus"])),
                "code": {"text": draw(_name)},
                "valueQuantity": {
                    "value": draw(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
                },
            }
        )
    elif rtype == "Organization":
        r["name"] = draw(_name)
    elif rtype == "Task":
        r.update({"status": "requested", "intent": "order", "for": {"reference": "Patient/" + draw(_id)}})
    else:
        r.update(draw(st.dictionaries(_text, _json, max_size=3)))
    return r


@st.composite
def bundle_strategy(draw) -> dict:
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        method = draw(st.sampled_from(["POST", "PUT", "GET", "DELETE", "PATCH", "X"]))
        rtype = draw(st.sampled_from(["Patient", "Observation", "Xyz"]))
        url = draw(
            st.one_of(
                st.just(rtype), st.just(f"{rtype}/{draw(_id)}"), st.just(f"{rtype}?name=" + draw(_weird_text)), _text
            )
        )
        e: dict[str, Any] = {"request": {"method": method, "url": url}}
        if draw(st.booleans()):
            e["resource"] = _resource(draw, rtype)
        if draw(st.booleans()):
            e["fullUrl"] = draw(st.sampled_from(["urn:uuid:1", "urn:uuid:2", "x"]))
        entries.append(e)
    return {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["batch", "transaction", "searchset", "x"])),
        "entry": entries,
    }


@st.composite
def body_strategy(draw) -> bytes | None:
    kind = draw(
        st.sampled_from(
            [
                "none",
                "bytes",
                "json",
                "json",
                "resource",
                "resource",
                "resource",
                "bundle",
                "patch",
                "surrogate",
                "nan",
                "bignum",
                "deep",
                "huge",
                "form",
            ]
        )
    )
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    if kind == "resource":
        return json.dumps(_resource(draw, draw(st.sampled_from(TYPES)))).encode()
    if kind == "bundle":
        return json.dumps(draw(bundle_strategy())).encode()
    if kind == "patch":
        ops = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "op": st.sampled_from(["add", "replace", "remove", "move", "test", "x"]),
                        "path": st.sampled_from(
                            ["/name", "/id", "/resourceType", "/meta", "/name/0/family", "/-", "", "x"]
                        ),
                        "value": _json,
                    }
                ),
                max_size=3,
            )
        )
        return json.dumps(ops).encode()
    if kind == "surrogate":
        where = draw(
            st.sampled_from(
                [
                    '{"resourceType":"Patient","name":[{"family":"\\ud800"}]}',
                    '{"resourceType":"Patient","\\udfff":1}',
                    '{"a":"\\udbff\\u0041"}',
                    '[{"op":"add","path":"/name","value":[{"family":"\\ud83d"}]}]',
                ]
            )
        )
        return where.encode()
    if kind == "nan":
        return draw(st.sampled_from([b'{"a":NaN}', b'{"resourceType":"Patient","x":Infinity}', b"[-Infinity]"]))
    if kind == "bignum":
        return draw(
            st.sampled_from(
                [
                    b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
                    b'"valueQuantity":{"value":123456789012345678901234567890}}',
                    b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
                    b'"valueQuantity":{"value":1e400}}',
                    b'{"a":' + b"9" * 5000 + b"}",
                ]
            )
        )
    if kind == "deep":
        n = draw(st.sampled_from([100, 2000, 100_000]))
        return b"[" * n + b"]" * n
    if kind == "huge":
        return b'{"resourceType":"Patient","text":"' + b"a" * (1024 * 1024 + 10) + b'"}'
    return b"a=1&b=%ff&c"


def _headers(draw, ctype: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if ctype:
        headers["Content-Type"] = ctype
    for name, values in (
        ("Prefer", ["return=minimal", "respond-async", "x"]),
        ("If-Match", ['W/"x"', "*"]),
        ("If-None-Exist", ["name=x", "_id=" + "a," * 1000, "bad=1", "name=" + "z" * 60_000]),
        ("X-Medplum", ["extended"]),
    ):
        if draw(st.integers(0, 11)) == 0:
            headers[name] = draw(st.sampled_from(values))
    return headers


_SANE_TYPES = ["Patient", "Patient", "Observation", "Organization", "Task"]


@st.composite
def _sane_fhir(draw) -> Req:
    """A well-formed FHIR interaction (most of them get past authentication and parsing, so the fuzz reaches
    search, validation, storage, batch processing and patching) — with hostile values inside."""
    t = draw(st.sampled_from(_SANE_TYPES))
    rid = draw(st.one_of(st.just("@fixture"), _id)) if t == "Patient" else draw(_id)
    op = draw(
        st.sampled_from(
            ["search"] * 5
            + ["create"] * 3
            + ["read", "update", "cond-update", "patch", "delete", "cond-delete", "history", "batch", "form-search"]
        )
    )
    hostile = draw(st.integers(0, 3)) == 0
    body = draw(body_strategy()) if hostile else json.dumps(_resource(draw, t)).encode()
    fhir = "application/fhir+json"
    if op == "search":  # reads may also look at the project-admin types (writes could lock the fuzz out)
        t = draw(st.sampled_from([t, t, t, "ClientApplication", "ProjectMembership", "AccessPolicy", "Project"]))
        return Req("GET", f"fhir/R4/{t}", draw(query_strategy()), _headers(draw, None))
    if op == "create":
        return Req("POST", f"fhir/R4/{t}", [], _headers(draw, fhir), body)
    if op == "read":
        return Req("GET", f"fhir/R4/{t}/{rid}", [], _headers(draw, None))
    if op == "update":
        return Req("PUT", f"fhir/R4/{t}/{rid}", [], _headers(draw, fhir), body)
    if op == "cond-update":
        return Req("PUT", f"fhir/R4/{t}", draw(query_strategy()), _headers(draw, fhir), body)
    if op == "patch":
        ops = (
            body
            if hostile
            else json.dumps(
                [
                    {
                        "op": draw(st.sampled_from(["add", "replace", "remove", "test"])),
                        "path": draw(
                            st.sampled_from(["/active", "/name/0/family", "/id", "/resourceType", "/meta/tag", "/x"])
                        ),
                        "value": draw(_json),
                    }
                ]
            ).encode()
        )
        return Req("PATCH", f"fhir/R4/{t}/{rid}", [], _headers(draw, "application/json-patch+json"), ops)
    if op == "delete":
        return Req("DELETE", f"fhir/R4/{t}/{rid}", [], _headers(draw, None))
    if op == "cond-delete":
        return Req("DELETE", f"fhir/R4/{t}", draw(query_strategy()), _headers(draw, None))
    if op == "history":
        return Req("GET", f"fhir/R4/{t}/{rid}/_history", draw(query_strategy()), _headers(draw, None))
    if op == "batch":
        return Req("POST", "fhir/R4", [], _headers(draw, fhir), json.dumps(draw(bundle_strategy())).encode())
    q = draw(query_strategy())
    form = "&".join(f"{quote(k)}={quote(v)}" for k, v in q).encode()
    return Req("POST", f"fhir/R4/{t}/_search", [], _headers(draw, "application/x-www-form-urlencoded"), form)


@st.composite
def request_strategy(draw) -> Req:
    area = draw(st.sampled_from(["sane"] * 10 + ["fhir"] * 4 + ["execute"] * 3 + ["other"] * 3))
    auth = draw(st.sampled_from(["admin"] * 12 + ["basic-admin", "client", "client", "none", "garbage", "bad-basic"]))
    if area == "sane":
        req = draw(_sane_fhir())
        req.auth = auth
        return req
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    headers = _headers(draw, ctype)
    if area == "fhir":
        rtype = draw(st.sampled_from(TYPES))
        shape = draw(
            st.sampled_from(
                ["{t}"] * 6
                + ["{t}/{id}"] * 3
                + [
                    "{t}/{id}/_history",
                    "{t}/{id}/_history/{id}",
                    "{t}/_search",
                    "{t}/_history",
                    "",
                    "metadata",
                    "job/{id}/status",
                    "{t}/{id}/{id}/{id}/x",
                ]
            )
        )
        path = "fhir/R4/" + shape.format(t=rtype, id=draw(_id))
        method = draw(st.sampled_from(["GET", "GET", "POST", "PUT", "PATCH", "DELETE"]))
    elif area == "execute":
        target = draw(st.sampled_from(["@bot", "@bot", "@lambda", "@bot/$deploy", "", "none"]))
        path = "fhir/R4/Bot/" + (f"{target}/$execute" if target and "$" not in target else target or "$execute")
        method = draw(st.sampled_from(["GET", "POST", "POST", "POST"]))
        if method == "POST" and draw(st.booleans()):
            headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain"]))
    else:
        path = draw(
            st.sampled_from(
                [
                    "oauth2/token",
                    "auth/me",
                    f"admin/projects/{PROJECT}",
                    f"admin/projects/{PROJECT}/bot",
                    f"admin/projects/{PROJECT}/client",
                    f"admin/projects/{PROJECT}/secrets",
                    f"admin/projects/{PROJECT}/members/x",
                    "admin/projects/other",
                    "_emulator/runs",
                    "_emulator/idle",
                    "_emulator/health",
                    "_emulator/reset",
                    "_emulator/x",
                    "healthcheck",
                    "",
                    "x/y",
                ]
            )
        )
        method = draw(st.sampled_from(["GET", "POST", "POST", "PUT", "DELETE"]))
        if path.startswith("admin/") and draw(st.booleans()):
            headers["Content-Type"] = "application/json"
    query = draw(query_strategy())
    if path.startswith("_emulator/idle"):
        query = [("timeout", draw(st.sampled_from(["0", "0.5", "x", "nan", "inf", "-1"])))]
    body = draw(body_strategy()) if method in ("POST", "PUT", "PATCH") else None
    if path == "oauth2/token" and draw(st.booleans()):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = draw(
            st.sampled_from(
                [
                    b"grant_type=client_credentials&client_id=medport-admin&client_secret=x",
                    b"grant_type=client_credentials",
                    b"grant_type=password",
                    b"%ff%fe=\x00",
                ]
            )
        )
    return Req(method, path, query, headers, body, auth)


# ------------------------------------------------------------------------------------------ the runner
@dataclass
class Stats:
    requests: int = 0
    server_errors: int = 0
    refused: int = 0
    writes_by_refused: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0


class Fuzzer:
    """Sends `Req`s to a running emulator (in process: it reads the store to see writes) and checks them."""

    def __init__(self, handle, timeout_s: float = 10.0):
        from medport.emulator.medplum.testing import admin_client

        self.h = handle
        self.state = handle.state
        self.timeout_s = timeout_s
        self.admin = admin_client(handle)
        self.http = requests.Session()
        self.stats = Stats()
        self._events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.state.repo.add_listener(self._on_change)
        c = self.admin
        self.bot = c.create_bot("fuzz-echo", "exports.handler = async (medplum, event) => event.input;")
        self.lambda_bot = c.create_bot(
            "fuzz-lambda", "exports.handler = async (medplum, event) => event.input;", runtimeVersion="awslambda"
        )
        self.patient = c.create({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Fuzz"]}]})
        client = c.request("POST", f"admin/projects/{PROJECT}/client", json={"name": "fuzz-client"}).json()
        token = requests.post(
            handle.base_url + "oauth2/token",
            timeout=10,
            data={"grant_type": "client_credentials", "client_id": client["id"], "client_secret": client["secret"]},
        )
        self.client_token = token.json()["access_token"]
        basic = base64.b64encode(f"{handle.admin_client_id}:{handle.admin_client_secret}".encode()).decode()
        self.auth_headers = {
            "admin": {"Authorization": f"Bearer {c.token}"},
            "basic-admin": {"Authorization": f"Basic {basic}"},
            "client": {"Authorization": f"Bearer {self.client_token}"},
            "none": {},
            "garbage": {"Authorization": "Bearer eyJ.garbage.x"},
            "bad-basic": {"Authorization": "Basic " + base64.b64encode(b"medport-admin:wrong").decode()},
        }

    def close(self) -> None:
        self.state.repo.remove_listener(self._on_change)

    def _on_change(self, event) -> None:
        with self._lock:
            self._events.append((event.interaction, (event.resource or {}).get("resourceType", "")))

    def _run_count(self) -> int:
        runs = self.state.runs
        with runs._lock:
            return runs._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def _history_rows(self) -> int:
        repo = self.state.repo
        with repo._lock:
            return repo._conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def _resolve(self, req: Req) -> str:
        path = (
            req.path.replace("@bot", self.bot["id"])
            .replace("@lambda", self.lambda_bot["id"])
            .replace("@fixture", self.patient["id"])
        )
        return self.h.base_url + quote(path, safe="/$:@")

    def send(self, req: Req) -> requests.Response | None:
        """Send one request and check it; a failed check is recorded in `stats.failures` (and returned as None)."""
        s = self.stats
        if req.path == "_emulator/reset" and req.auth in ("admin", "basic-admin"):
            req.auth = "client"  # the admin may reset; the fuzz keeps its fixtures and asks as a non-admin
        headers = dict(req.headers)
        headers.update(self.auth_headers[req.auth])
        with self._lock:
            self._events.clear()
        rows0, runs0 = self._history_rows(), self._run_count()
        t0 = time.monotonic()
        try:
            r = self.http.request(
                req.method,
                self._resolve(req),
                params=req.query or None,
                headers=headers,
                data=req.body,
                timeout=self.timeout_s,
            )
        except requests.RequestException as e:
            s.requests += 1
            s.failures.append(f"no answer within {self.timeout_s:g} s ({type(e).__name__}): {req.describe()}")
            return None
        elapsed = time.monotonic() - t0
        s.requests += 1
        s.slowest_s = max(s.slowest_s, elapsed)
        s.by_status[r.status_code] = s.by_status.get(r.status_code, 0) + 1
        if r.status_code == 202:  # an async job finishes in the background: let it, before measuring anything else
            deadline = time.monotonic() + self.timeout_s
            while self.state.bots.jobs_running() and time.monotonic() < deadline:
                time.sleep(0.01)
        ok = True
        if r.status_code >= 500:
            s.server_errors += 1
            s.failures.append(f"{r.status_code} {r.text[:300]!r} for {req.describe()}")
            ok = False
        if PYTHON_ERROR.search(r.text) and "$execute" not in req.path:
            s.failures.append(f"Python exception text in the answer {r.text[:300]!r} for {req.describe()}")
            ok = False
        if r.status_code >= 400:
            s.refused += 1
            rows1 = self._history_rows()
            with self._lock:
                events = list(self._events)
            ran = "$execute" in req.path and self._run_count() > runs0
            if ran:  # Medplum records every execution, failed ones included: one AuditEvent per run
                audit = sum(1 for e in events if e[1] == "AuditEvent")
                events = [e for e in events if e[1] != "AuditEvent"]
                rows1 -= audit
            writes = max(len(events), rows1 - rows0)
            if writes:
                s.writes_by_refused += writes
                s.failures.append(f"{r.status_code} answer wrote {writes} version(s) {events[:5]}: {req.describe()}")
                ok = False
        return r if ok else None
