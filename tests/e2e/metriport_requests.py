"""Record every request the bots send to the fake Metriport, and judge each with Metriport's own code.

`record(fake, sink)` wraps the fake's WSGI app: each request (method, path, query pairs, headers, raw
body, the fake's status) is appended to `sink`. `problems(requests)` checks each against the route
Metriport serves for it, with the schemas Metriport parses it with, run in Node from node_modules
(tests/emulator/metriport/sdk_oracle.cjs: @metriport/api-sdk's zod schemas and @metriport/shared's date
check; the API's metadata schema): patient match/create/update bodies, document and consolidated query
parameters and bodies, and the headers (the API key; JSON bodies sent as JSON).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from urllib.parse import parse_qsl

from tests.paths import NODE, ROOT

ORACLE = ROOT / "tests" / "emulator" / "metriport" / "sdk_oracle.cjs"


def record(fake, sink: list) -> None:
    app = fake.app
    inner = app.wsgi_app

    def recording(environ, start_response):
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        environ["wsgi.input"] = io.BytesIO(body)
        entry = {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            "headers": {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            | ({"content-type": environ["CONTENT_TYPE"]} if environ.get("CONTENT_TYPE") else {}),
            "body": body,
        }

        def start(status, headers, exc_info=None):
            entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        if entry["path"].startswith("/medical/v1") or entry["path"].startswith("/settings"):
            sink.append(entry)
        return inner(environ, start)

    app.wsgi_app = recording


def _oracle(cases: list[dict]) -> list[dict]:
    proc = subprocess.run(
        [NODE, str(ORACLE)],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


# route → (name, what to check): the routes the bots may call, as Metriport serves them
ROUTES = [
    ("POST", re.compile(r"/medical/v1/patient/match"), "match"),
    ("POST", re.compile(r"/medical/v1/patient"), "create"),
    ("PUT", re.compile(r"/medical/v1/patient/[^/]+"), "update"),
    ("POST", re.compile(r"/medical/v1/patient/[^/]+/consolidated/query"), "consolidated"),
    ("POST", re.compile(r"/medical/v1/document/query"), "document-query"),
    ("GET", re.compile(r"/medical/v1/document/download-url"), "download-url"),
    ("POST", re.compile(r"/medical/v1/document/download-url/bulk"), "bulk-urls"),
    ("POST", re.compile(r"/medical/v1/network/query"), "network-query"),
    ("PUT", re.compile(r"/medical/v1/patient/[^/]+/consolidated"), "contribute"),
    ("POST", re.compile(r"/medical/v1/document/upload"), "document-upload"),
]


def classify(method: str, path: str) -> str | None:
    for m, rx, name in ROUTES:
        if m == method and rx.fullmatch(path):
            return name
    return None


def _hydrate_problems(where: str, patient_id: str, body) -> list[str]:
    """What Metriport's hydrate-bundle.ts and json-validator.ts refuse of a contributed bundle (the fake's port)."""
    import copy

    from medport.emulator.metriport.contribution import fhir_schema_problems, hydrate
    from medport.emulator.metriport.errors import MetriportError

    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        return []
    try:
        resources = hydrate(copy.deepcopy(body), patient_id, "key")
    except MetriportError as e:
        return [f"{where}: refused by Metriport's hydrateBundle: {e}"]
    out = (
        [f"{where}: the bundle type is {body.get('type')!r}, Metriport takes only collection"]
        if body.get("type") != "collection"
        else []
    )
    return out + [
        f"{where}: {r['resourceType']}/{r['id']} is not valid FHIR R4" for r in resources if fhir_schema_problems(r)
    ]


def problems(requests: list[dict]) -> tuple[list[str], dict[str, int]]:
    """Every way a recorded request would not pass Metriport, and the count per route."""
    out: list[str] = []
    counts: dict[str, int] = {}
    cases: list[dict] = []
    owners: list[tuple[int, str]] = []

    def judge(i: int, schema: str, value, what: str) -> None:
        cases.append({"schema": schema, "value": value})
        owners.append((i, what))

    for i, r in enumerate(requests):
        name = classify(r["method"], r["path"])
        where = f"{r['method']} {r['path']}"
        if name is None:
            out.append(f"{where}: no such Metriport route the bots should call")
            continue
        counts[name] = counts.get(name, 0) + 1
        if not r["headers"].get("x-api-key"):
            out.append(f"{where}: no x-api-key header")
        q: dict[str, list[str]] = {}
        for k, v in r["query"]:
            q.setdefault(k, []).append(v)
        for k, vs in q.items():
            if len(vs) > 1 or "[" in k:
                out.append(f"{where}: query parameter {k} is not a single string (Metriport: 'must be string')")
        body = None
        if r["body"]:
            if not (r["headers"].get("content-type") or "").startswith("application/json"):
                out.append(f"{where}: a body not sent as application/json (Metriport would read it as {{}})")
            body = json.loads(r["body"])
        if name == "match":
            judge(i, "demographics", body, "match body (demographicsSchema)")
            extra = set(body or {}) - {
                "firstName",
                "lastName",
                "dob",
                "genderAtBirth",
                "personalIdentifiers",
                "address",
                "contact",
            }
            if extra:
                out.append(f"{where}: match body has fields demographicsSchema does not define: {sorted(extra)}")
        elif name in ("create", "update"):
            judge(i, "patientCreate", body, f"{name} body (patientCreateSchema)")
            if name == "create" and not q.get("facilityId"):
                out.append(f"{where}: no facilityId (Metriport: 'Missing facilityId query param')")
        elif name == "consolidated":
            ctype = (q.get("conversionType") or [None])[0]
            judge(i, "conversionType", ctype, "conversionType")
            raw = (q.get("resources") or [""])[0]
            items = [x.strip() for x in raw.replace('"', "").replace("'", "").split(",") if x.strip()]
            judge(i, "resources", items, "resources (resourceSchema)")
            for d in ("dateFrom", "dateTo"):
                if q.get(d) and q[d][0]:
                    judge(i, "isValidISODate", q[d][0], d)
            judge(i, "cxRequestMetadata", body if body is not None else {}, "body (cxRequestMetadataSchema)")
        elif name == "document-query":
            if not q.get("patientId"):
                out.append(f"{where}: no patientId")
            judge(i, "cxRequestMetadata", body if body is not None else {}, "body (cxRequestMetadataSchema)")
            judge(i, "documentQueryBody", body if body is not None else {}, "body (the SDK's documentQueryBodySchema)")
        elif name == "download-url" and not q.get("fileName"):
            out.append(f"{where}: no fileName")
        elif name == "bulk-urls":
            judge(i, "cxRequestMetadata", body if body is not None else {}, "body (cxRequestMetadataSchema)")
        elif name == "network-query":
            if not q.get("patientId"):
                out.append(f"{where}: no patientId (Metriport: 'Missing patientId query param')")
            judge(i, "networkQueryBody", body if body is not None else {}, "body (networkQueryBodySchema)")
        elif name == "contribute":
            judge(i, "contributionBundle", body, "body (bundleSchema)")
            out += _hydrate_problems(where, r["path"].split("/")[4], body)
        elif name == "document-upload":
            if not q.get("patientId"):
                out.append(f"{where}: no patientId")
            for field in ("description", "type", "context"):
                if not (body or {}).get(field):
                    out.append(f"{where}: the DocumentReference draft has no {field} (Metriport's docRefCheck)")
    for (i, what), verdict in zip(owners, _oracle(cases) if cases else []):
        ok = verdict["ok"] if "issues" in verdict or "error" in verdict else bool(verdict.get("value"))
        if not ok:
            r = requests[i]
            out.append(
                f"{r['method']} {r['path']}: {what} refused by Metriport's code: "
                f"{verdict.get('issues') or verdict.get('error') or verdict.get('value')}"
            )
    return out, counts
