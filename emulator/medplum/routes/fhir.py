"""FHIR REST routes: parse the request, authenticate, hand the FHIR work to `FhirService.handle(...)`
(fhir/), render what it answers; bot operations go to routes/bots.py.

Medplum facts
(packages/server/src/app.ts, fhir/routes.ts, fhir/outcomes.ts):
- JSON bodies over 1 MB → 400 `badRequest('File too large')`; unparsable JSON → 400
  `badRequest('Content could not be parsed')` — nothing is written either way.
- FHIR create/update/batch need application/json or application/fhir+json, PATCH needs
  application/json-patch+json; otherwise 400 "Unsupported content type" (rendered here as an
  OperationOutcome so clients get a FHIR body).
- `POST /fhir/R4/Binary` takes any content type: the raw bytes become the Binary.
- Responses are `application/fhir+json`; `Prefer: return=minimal` sends no body.
- A query string over 70,000 characters → 400 "Query string exceeds maximum length of 70000 characters"
  (fhir-router urlrouter.ts). A real deployment may refuse a long URL earlier (Node's 16 KiB header limit
  answers 431); the emulator serves up to the router's limit.
- An unexpected exception renders 500 with an `exception` OperationOutcome saying only "Internal server
  error" (never a crash, never exception text).
"""
from __future__ import annotations

import base64
import sys
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from ..errors import BadRequest
from ..httpio import (
    FHIR_JSON,
    FORM_TYPE,
    JSON_TYPES,
    current_state,
    is_extended_mode,
    json_response,
    parse_form,
    parse_json_bytes,
    read_body,
    require_principal,
    without_extended_meta,
)
from .bots import deploy_handler, execute_handler, job_status_handler

if TYPE_CHECKING:
    from ..state import EmulatorState

_WRITE_METHODS = {"POST", "PUT", "PATCH"}
# @medplum/fhir-router urlrouter.ts MAX_QUERY_STRING_LENGTH (characters after '?', as sent: percent-encoded)
MAX_QUERY_STRING_LENGTH = 70_000


def register(app: Flask) -> None:
    """FHIR REST under /fhir/R4 plus the root and /healthcheck answers."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule("/fhir/R4", "fhir_root", fhir_handler, methods=methods, defaults={"path": ""},
                     strict_slashes=False)
    app.add_url_rule("/fhir/R4/", "fhir_root_slash", fhir_handler, methods=methods, defaults={"path": ""})
    app.add_url_rule("/fhir/R4/<path:path>", "fhir", fhir_handler, methods=methods)
    app.add_url_rule("/", "root", lambda: Response("", 200))
    app.add_url_rule("/healthcheck", "healthcheck", healthcheck)


def healthcheck() -> Response:
    """server healthcheck.ts: `{ok, version: MEDPLUM_VERSION ("<release>-<git commit>"), platform, runtime (the
    server's Node), postgres, redis}`, no authentication: how a client learns which release it talks to."""
    state = current_state()
    return json_response({"ok": True, "version": f"{state.release.version}-medport", "platform": sys.platform,
                          "runtime": state.node_version(), "postgres": True, "redis": True}, 200,
                         "application/json")


def fhir_handler(path: str) -> Response:
    state = current_state()
    path = path.strip("/")
    if path == "metadata" and request.method == "GET":
        return _delegate(state, state.system, path, None)
    principal = require_principal()
    method = request.method
    parts = path.split("/") if path else []
    # operations owned by bots.py
    if parts and parts[0] == "Bot" and parts[-1] in ("$execute", "$deploy"):
        if parts[-1] == "$execute" and len(parts) in (2, 3) and method in ("GET", "POST"):
            return execute_handler(principal, parts[1] if len(parts) == 3 else None)
        if parts[-1] == "$deploy" and len(parts) == 3 and method == "POST":
            return deploy_handler(principal, parts[1])
    if len(request.query_string) > MAX_QUERY_STRING_LENGTH:
        # fhir-router urlrouter.ts: every URL the FhirRouter routes (not $execute, which has its own route)
        raise BadRequest(f"Query string exceeds maximum length of {MAX_QUERY_STRING_LENGTH} characters")
    if len(parts) == 3 and parts[0] == "job" and parts[2] == "status" and method == "GET":
        return job_status_handler(principal, parts[1])
    if parts and parts[0] == "Binary" and method in ("POST", "PUT") and len(parts) <= 2 \
            and request.mimetype not in JSON_TYPES:
        return _binary_upload(state, principal, parts)

    body: Any = None
    if method in _WRITE_METHODS:
        body = _parse_fhir_body(path, method)
        if isinstance(body, Response):
            return body
    return _delegate(state, principal, path, body)


def _parse_fhir_body(path: str, method: str) -> Any:
    mimetype = request.mimetype
    limit = current_state().settings.max_json_bytes
    if method == "POST" and path.endswith("_search"):
        if mimetype == FORM_TYPE:
            g.extra_query = list(parse_form(read_body(request, limit)).items())
            return None
    if method == "PATCH":
        if mimetype not in ("application/json-patch+json", "application/json", "application/fhir+json"):
            raise BadRequest("Unsupported content type")
    elif mimetype not in ("application/json", "application/fhir+json"):
        raise BadRequest("Unsupported content type")
    return parse_json_bytes(read_body(request, limit))


def _query() -> list[tuple[str, str]]:
    q = list(request.args.items(multi=True))
    extra = g.get("extra_query")
    if extra:
        for k, v in extra:
            if isinstance(v, list):
                q.extend((k, str(x)) for x in v)
            else:
                q.append((k, str(v)))
    return q


def _delegate(state: "EmulatorState", principal, path: str, body: Any) -> Response:
    headers = {k: v for k, v in request.headers.items()}
    resp = state.service.handle(principal, request.method, path, _query(), body, headers)
    if not is_extended_mode(request):
        resp.body = without_extended_meta(resp.body)
    return render_fhir(resp)


def render_fhir(resp) -> Response:
    headers = dict(resp.headers or {})
    content_type = headers.pop("Content-Type", None) or headers.pop("content-type", None) or FHIR_JSON
    if request.headers.get("Prefer") == "return=minimal" and resp.status < 400:
        return json_response(None, resp.status, content_type, headers)
    return json_response(resp.body, resp.status, content_type, headers)


def _binary_upload(state: "EmulatorState", principal, parts: list[str]) -> Response:
    """Raw upload (MedplumClient.createBinary/createAttachment). Like Medplum's server (`binary.ts`): the Binary
    resource is written — access policy and validation — without its content, which goes to storage; so the
    content is not held to the 1 MiB `base64BinaryMaxBytes` of a JSON Binary. Here the storage is the stored
    resource's `data` (what GET Binary/<id> answers)."""
    data = read_body(request, limit=64 * 1024 * 1024)
    binary: dict[str, Any] = {"resourceType": "Binary",
                              "contentType": request.mimetype or "application/octet-stream"}
    security_context = request.headers.get("X-Security-Context")
    if security_context:
        binary["securityContext"] = {"reference": security_context}
    with state.service.raw_content({"data": base64.b64encode(data).decode("ascii")}):
        if len(parts) == 2:
            binary["id"] = parts[1]
            resp = state.call("PUT", f"Binary/{parts[1]}", body=binary, principal=principal)
        else:
            resp = state.call("POST", "Binary", body=binary, principal=principal)
    if resp.status < 300 and isinstance(resp.body, dict) and resp.body.get("id"):
        created = dict(resp.body)
        created.pop("data", None)
        created["url"] = f"{state.base_url}fhir/R4/Binary/{created['id']}"
        return json_response(created, resp.status, FHIR_JSON, dict(resp.headers or {}))
    return render_fhir(resp)
