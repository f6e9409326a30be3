"""Property-based fuzzing of the fake Metriport's HTTP API (hypothesis strategies + a harness), shared by
test_fuzz.py (bounded, in the suite) and bench/bench_fuzz_fake.py (≥ 5,000 requests, figures in RESULTS.md).

A request is drawn from every route the fake serves (and some it does not), with path ids, query
strings (repeated and bracketed names included), headers (key present, absent, wrong) and bodies:
mutated valid patients, arbitrary JSON, malformed and hostile bytes (lone surrogates, deep nesting,
NaN, huge numbers, wrong content types and encodings). The invariants checked on every answer:
- no 5xx (fault injection is off);
- a refused request (4xx) stores nothing: the backend's `state_digest()` is the same before and after
  (rate-limit windows and the call log are not stored data: Metriport counts refused calls too);
- error bodies are JSON in Metriport's shapes, or its plain-text 429 / JSON-string 423.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from urllib.parse import quote

import requests
from hypothesis import strategies as st

from tests.emulator.metriport import inputs

# (path template, the methods the fake serves on it): most requests use a served method, the rest any
ROUTES = [
    ("/medical/v1/patient", "GET POST"),
    ("/medical/v1/patient/match", "POST"),
    ("/medical/v1/patient/external-id", "GET"),
    ("/medical/v1/patient/{pid}", "GET PUT DELETE"),
    ("/medical/v1/patient/{pid}/consolidated/query", "GET POST"),
    ("/medical/v1/patient/{pid}/consolidated/query/{rid}", "GET"),
    ("/medical/v1/facility", "GET POST"),
    ("/medical/v1/facility/{fid}", "GET"),
    ("/medical/v1/document", "GET"),
    ("/medical/v1/document/query", "GET POST"),
    ("/medical/v1/document/download-url", "GET"),
    ("/medical/v1/document/downloadUrl", "GET"),
    ("/medical/v1/document/download-url/bulk", "POST"),
    ("/settings", "GET POST"),
    ("/settings/webhook", "GET"),
    ("/settings/webhook/retry", "POST"),
    ("/medical/v1/settings", "GET"),
    ("/medical/v1/nothing", "GET"),
    ("/", "GET"),
    ("/_fake/state", "GET"),
    ("/_fake/faults", "GET POST"),
    ("/_fake/webhooks", "GET"),
    ("/_fake/settings/webhook", "POST"),
    ("/_fake/reset", "POST"),
    ("/_fake/files/x/y", "GET"),
]
# the routes whose rules matter most, drawn more often
ROUTES += (
    [("/medical/v1/patient", "POST")] * 4
    + [("/medical/v1/patient/match", "POST")] * 2
    + [("/medical/v1/patient/{pid}", "PUT")] * 2
    + [("/medical/v1/patient/{pid}/consolidated/query", "POST")] * 2
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
QUERY_NAMES = [
    "facilityId",
    "patientId",
    "resources",
    "dateFrom",
    "dateTo",
    "conversionType",
    "fileName",
    "externalId",
    "output",
    "content",
    "source",
    "override",
    "fromDashboard",
    "filters",
    "body",
]

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.sampled_from(["", "1990-01-02", "CA", "94110", "json", "Condition", "Medication"]),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
    max_leaves=20,
)


@st.composite
def patient_bodies(draw):
    rnd_seed = draw(st.integers(0, 10**6))
    import random

    rnd = random.Random(rnd_seed)
    return inputs.mutated_patient(rnd) if rnd.random() < 0.7 else inputs.wild_patient(rnd)


@st.composite
def metadata_bodies(draw):
    return inputs.metadata_bodies(1, seed=draw(st.integers(0, 10**6)))[0]


HOSTILE = [
    b'{"firstName": "\\ud800", "lastName": "x"}',
    b"[" * 100_000,
    b"{" * 5000,
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b"\xff\xfe\x00",
    b'{"a":1',
    b"null",
    b'"text"',
    b"1" * 5000,
    b'{"metadata": {"\\udc00": "x"}}',
    b"\xef\xbb\xbf{}",
    b'{"webhookUrl": "http://x/\\ud83d"}',
    b"{}" * 1000,
    b'{"__proto__": {"x": 1}}',
    b"[" + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"]",
]


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["none", "patient", "patient", "metadata", "json", "hostile", "text", "settings"]))
    if kind == "none":
        return None, None
    if kind == "patient":
        return "application/json", json.dumps(draw(patient_bodies())).encode()
    if kind == "metadata":
        return "application/json", json.dumps(draw(metadata_bodies())).encode()
    if kind == "settings":
        return "application/json", json.dumps(draw(st.sampled_from(inputs.settings_bodies(60, seed=5)))).encode()
    if kind == "json":
        return draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/json; charset=utf-8",
                    "application/fhir+json",
                    "application/x-www-form-urlencoded",
                    "application/json; charset=latin1",
                ]
            )
        ), json.dumps(draw(json_values), ensure_ascii=draw(st.booleans())).encode()
    if kind == "hostile":
        return draw(st.sampled_from(["application/json", "application/json; charset=utf-16"])), draw(
            st.sampled_from(HOSTILE)
        )
    return draw(st.sampled_from(["text/plain", "application/json", "application/octet-stream", None])), draw(
        st.binary(max_size=200)
    )


@st.composite
def query_strings(draw, ids: dict):
    pairs = []
    for name in draw(st.lists(st.sampled_from(QUERY_NAMES), max_size=5)):
        value = draw(
            st.one_of(
                st.sampled_from(
                    [
                        ids.get("pid", ""),
                        ids.get("fid", ""),
                        "json",
                        "pdf",
                        "xml",
                        "Condition,Observation",
                        "Medication",
                        "'Condition'",
                        "2020-01-01",
                        "2020/01/01",
                        "abc",
                        "",
                        "dto",
                        "fhir",
                        ids.get("file", ""),
                    ]
                ),
                texts,
            )
        )
        shape = draw(st.sampled_from(["plain", "plain", "plain", "repeat", "bracket", "array"]))
        k, v = quote(name), quote(value, safe="")
        pairs += {
            "plain": [f"{k}={v}"],
            "repeat": [f"{k}={v}", f"{k}=x"],
            "bracket": [f"{k}[a]={v}"],
            "array": [f"{k}[]={v}"],
        }[shape]
    if draw(st.booleans()):
        pairs.append(draw(st.sampled_from(["%zz=1", "a=%ff%fe", "=x", "&&", "k=" + "v" * 3000, "%00=%00"])))
    return "&".join(pairs)


@st.composite
def http_requests(draw, ids: dict):
    template, served = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from(served.split())) if draw(st.integers(0, 9)) else draw(st.sampled_from(METHODS))
    pid = draw(st.sampled_from([ids.get("pid", "p")] * 6 + ["nope", "match", "../x", "%2e%2e", "a" * 300, "ü", "%00"]))
    path = template.format(
        pid=pid,
        rid=draw(st.sampled_from([ids.get("rid", "r"), "nope"])),
        fid=draw(st.sampled_from([ids.get("fid", "f"), "nope"])),
    )
    if template in ("/medical/v1/patient", "/medical/v1/patient/match", "/medical/v1/patient/{pid}") and draw(
        st.booleans()
    ):
        ctype, body = "application/json", json.dumps(draw(patient_bodies())).encode()  # mostly near misses
    else:
        ctype, body = draw(bodies())
    headers = {}
    key = draw(st.sampled_from(["good"] * 12 + ["none", "wrong", "long"]))
    if key != "none":
        headers["x-api-key"] = {"good": ids["key"], "wrong": "wrong-key", "long": "k" * 5000}[key]
    if ctype:
        headers["content-type"] = ctype
    if body is not None and draw(st.integers(0, 9)) == 0:
        headers["content-encoding"] = draw(st.sampled_from(["gzip", "br", "deflate"]))
        if headers["content-encoding"] == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    query = draw(query_strings(ids))
    if draw(st.booleans()):  # the parameters the route needs, so that bodies reach deep validation
        needed = {
            "/medical/v1/patient": f"facilityId={ids.get('fid', '')}",
            "/medical/v1/patient/{pid}/consolidated/query": "conversionType=json",
            "/medical/v1/document/query": f"patientId={ids.get('pid', '')}",
            "/medical/v1/document": f"patientId={ids.get('pid', '')}",
            "/medical/v1/document/download-url/bulk": f"patientId={ids.get('pid', '')}",
        }.get(template)
        query = "&".join(x for x in (needed, query) if x)
    return {"method": method, "path": path, "query": query, "headers": headers, "body": body}


@dataclass
class Stats:
    requests: int = 0
    by_status: dict = field(default_factory=dict)
    server_errors: list = field(default_factory=list)
    refused_writes: list = field(default_factory=list)
    bad_bodies: list = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "5xx": len(self.server_errors),
            "writes_by_refused": len(self.refused_writes),
            "bad_error_bodies": len(self.bad_bodies),
            "by_status": dict(sorted(self.by_status.items())),
        }


def _no_network(url, body, signature, timeout_s):
    """Webhook deliveries during fuzzing fail at once instead of reaching out (URLs are arbitrary)."""
    return False, None, "Failed to send payload: fuzzing", None


class Target:
    """The fake under fuzz: a known patient and facility, faults off, no real webhook traffic, and a
    clean state when it fills up or a developer call changed the switches."""

    def __init__(self, fake, key: str):
        self.fake, self.key = fake, key
        self.s = requests.Session()
        self.ids: dict = {"key": key}
        fake.state._sender._post = _no_network
        self.prepare()

    def prepare(self) -> None:
        from medport.emulator.metriport import rules
        from medport.emulator.metriport.faults import DEFAULTS

        b = self.fake.state
        patients = b.list_patients()
        if len(patients) >= 15 or not any(p["id"] == self.ids.get("pid") for p in patients):
            b.reset()
            demo, ext = rules.patient_create({**inputs.BASE_PATIENT, "externalId": "fuzz-ext"})
            p, _ = b.create_patient(demo, ext, b.seeded_facility_id)
            self.ids.update(pid=p["id"], fid=b.seeded_facility_id)
        if b.faults.snapshot() != {**DEFAULTS, "rate_limiting": False}:
            b.faults.reset()
            b.set_faults(rate_limiting=False)

    def send(self, req: dict, stats: Stats) -> None:
        backend = self.fake.state
        backend.wait_idle(10)
        before = backend.state_digest()
        url = (
            self.fake.base_url
            + quote(req["path"], safe="/%:@[]!$&'()*+,;=")
            + ("?" + req["query"] if req["query"] else "")
        )
        r = self.s.request(req["method"], url, data=req["body"], headers=req["headers"], timeout=5)
        stats.requests += 1
        stats.by_status[r.status_code] = stats.by_status.get(r.status_code, 0) + 1
        where = f"{req['method']} {req['path']}?{req['query'][:80]}"
        if r.status_code >= 500:
            stats.server_errors.append((where, r.status_code, r.text[:300]))
        if 400 <= r.status_code < 500:
            backend.wait_idle(10)
            if backend.state_digest() != before:
                stats.refused_writes.append((where, r.status_code, r.text[:300]))
            if not _metriport_error_body(r):
                stats.bad_bodies.append((where, r.status_code, r.headers.get("content-type"), r.text[:300]))
        if r.status_code < 300:
            self.prepare()


def _metriport_error_body(r: requests.Response) -> bool:
    if r.status_code == 429:
        return r.headers.get("content-type", "").startswith("text/html")
    if r.request.path_url.startswith(("/_fake/files/", "/_fake/uploads/")) and r.headers.get(
        "content-type", ""
    ).startswith("application/xml"):
        return True  # S3's XML errors
    try:
        b = r.json()
    except ValueError:
        return False
    if r.status_code == 423:
        return b == "Document querying currently in progress"
    if isinstance(b, dict) and set(b) == {"message"}:
        return True  # API Gateway 403, Express 404, the sandbox cap
    return isinstance(b, dict) and {"status", "title", "detail", "name"} <= set(b) and b["status"] == r.status_code
