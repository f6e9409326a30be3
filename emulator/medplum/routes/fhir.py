"""FHIR REST routes: parse the request, authenticate, hand the FHIR work to `FhirService.handle(...)`
(fhir/), render what it answers; bot operations go to routes/bots.py.

Medplum facts
(packages/server/src/app.ts, fhir/routes.ts, fhir/binary.ts, fhir/response.ts, fhir/outcomes.ts):
- JSON bodies over 1 MB → 400 `badRequest('File too large')`; unparsable JSON → 400
  `badRequest('Content could not be parsed')` — nothing is written either way.
- FHIR create/update/batch need application/json or application/fhir+json, PATCH needs
  application/json-patch+json; otherwise 400 "Unsupported content type" (rendered here as an
  OperationOutcome so clients get a FHIR body).
- `/fhir/R4/Binary` has its own router, ahead of the JSON body parser (app.ts, binary.ts): `POST Binary` and
  `PUT Binary/{id}` store the raw bytes of any content type — a JSON document (`application/json`) too — with the
  request's Content-Type as the Binary's; only a body sent as exactly `application/fhir+json` that is a Binary
  resource (with the URL's id) is written as that resource. `Content-Encoding` gzip/deflate is inflated, another
  one is 400 "Unsupported content encoding". `GET Binary/{id}` (and a vread) without an Accept starting with
  `application/fhir+json` answers the content itself with the Binary's content type (response.ts
  sendFhirResponse / sendBinaryResponse); as FHIR JSON a raw upload has no `data`.
- Responses are `application/fhir+json`; `Prefer: return=minimal` sends no body — errors included, since
  routes.ts replaces `res.json` for everything under the FHIR router (not for a body the JSON parser refused, nor
  the Binary router's own routes).
- `GET metadata` is public: the CapabilityStatement (metadata.ts).
- A query string over 70,000 characters → 400 "Query string exceeds maximum length of 70000 characters"
  (fhir-router urlrouter.ts). A real deployment may refuse a long URL earlier (Node's 16 KiB header limit
  answers 431); the emulator serves up to the router's limit.
- An unexpected exception renders 500 with an `exception` OperationOutcome saying only "Internal server
  error" (never a crash, never exception text).
"""

from __future__ import annotations

import functools
import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from ..errors import BadRequest, FhirError
from ..httpio import (
    FHIR_JSON,
    FORM_TYPE,
    current_backend,
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
    from ..backend import MedplumBackend

_WRITE_METHODS = {"POST", "PUT", "PATCH"}
# @medplum/fhir-router urlrouter.ts MAX_QUERY_STRING_LENGTH (characters after '?', as sent: percent-encoded)
MAX_QUERY_STRING_LENGTH = 70_000
# binary.ts streams uploads to storage without a size limit; the emulator keeps them in SQLite up to this
MAX_BINARY_BYTES = 64 * 1024 * 1024


def register(app: Flask) -> None:
    """FHIR REST under /fhir/R4, the routes Medplum serves beside its FHIR router (bot operations, AsyncJob status,
    raw Binary), the root and /healthcheck. A URL that matches a specific rule with another method goes on to the
    FHIR router, as in Express (no 405 from here)."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    rules: list[tuple[str, str, Callable[..., Response], list[str]]] = [
        ("/fhir/R4/Binary", "binary_create", binary_create, ["POST"]),
        ("/fhir/R4/Binary/<binary_id>", "binary_read", binary_read, ["GET"]),
        ("/fhir/R4/Binary/<binary_id>", "binary_update", binary_update, ["PUT"]),
        ("/fhir/R4/Binary/<binary_id>/_history/<version_id>", "binary_vread", binary_vread, ["GET"]),
        ("/fhir/R4/Bot/$execute", "bot_execute_by_identifier", bot_execute, ["GET", "POST"]),
        ("/fhir/R4/Bot/<bot_id>/$execute", "bot_execute", bot_execute, ["GET", "POST"]),
        ("/fhir/R4/Bot/<bot_id>/$deploy", "bot_deploy", bot_deploy, ["POST"]),
        ("/fhir/R4/job/<job_id>/status", "job_status", job_status, ["GET"]),
    ]
    for rule, endpoint, view, rule_methods in rules:  # Express routing is not strict about a trailing slash
        app.add_url_rule(rule, endpoint, _under_fhir_router(view), methods=rule_methods, strict_slashes=False)
    app.add_url_rule(
        "/fhir/R4", "fhir_root", fhir_handler, methods=methods, defaults={"path": ""}, strict_slashes=False
    )
    app.add_url_rule("/fhir/R4/", "fhir_root_slash", fhir_handler, methods=methods, defaults={"path": ""})
    app.add_url_rule("/fhir/R4/<path:path>", "fhir", fhir_handler, methods=methods)
    app.add_url_rule("/", "root", lambda: Response("", 200))
    app.add_url_rule("/healthcheck", "healthcheck", healthcheck)


def healthcheck() -> Response:
    """server healthcheck.ts: `{ok, version: MEDPLUM_VERSION ("<release>-<git commit>"), platform, runtime (the
    server's Node), postgres, redis}`, no authentication: how a client learns which release it talks to."""
    backend = current_backend()
    return json_response(
        {
            "ok": True,
            "version": f"{backend.release.version}-medport",
            "platform": sys.platform,
            "runtime": backend.node_version(),
            "postgres": True,
            "redis": True,
        },
        200,
        "application/json",
    )


def _under_fhir_router(view: Callable[..., Response]) -> Callable[..., Response]:
    """fhir/routes.ts: under the FHIR router every JSON answer obeys `Prefer: return=minimal`, errors too (not the
    routes that run before it: the Binary router's, a body the JSON parser refused)."""

    @functools.wraps(view)
    def routed(**args: str) -> Response:
        try:
            return view(**args)
        except FhirError as err:
            if g.get("outside_fhir_router") or request.headers.get("Prefer") != "return=minimal":
                raise
            return Response(b"", status=err.status)

    return routed


def _check_query_length() -> None:
    """fhir-router urlrouter.ts: every URL the FhirRouter routes (not $execute, which has its own route)."""
    if len(request.query_string) > MAX_QUERY_STRING_LENGTH:
        raise BadRequest(f"Query string exceeds maximum length of {MAX_QUERY_STRING_LENGTH} characters")


# ------------------------------------------------------------------------------------- bot operations (bots.py)


def bot_execute(bot_id: str | None = None) -> Response:
    return execute_handler(require_principal(), bot_id)


def bot_deploy(bot_id: str) -> Response:
    return deploy_handler(require_principal(), bot_id)


def job_status(job_id: str) -> Response:
    principal = require_principal()
    _check_query_length()
    return job_status_handler(principal, job_id)


# ------------------------------------------------------------------------------------------------ the FHIR router


@_under_fhir_router
def fhir_handler(path: str) -> Response:
    backend = current_backend()
    path = path.strip("/")
    if path == "metadata" and request.method == "GET":
        return _delegate(backend, backend.system, path, None)
    principal = require_principal()
    _check_query_length()
    method = request.method
    body: Any = None
    if method in _WRITE_METHODS:
        body = _parse_fhir_body(path, method)
        if isinstance(body, Response):
            return body
    return _delegate(backend, principal, path, body)


def _parse_fhir_body(path: str, method: str) -> Any:
    g.outside_fhir_router = True  # app.ts: the JSON body parser runs before the FHIR router
    body = _read_fhir_body(path, method)
    g.outside_fhir_router = False
    return body


def _read_fhir_body(path: str, method: str) -> Any:
    mimetype = request.mimetype
    limit = current_backend().settings.max_json_bytes
    if method == "POST" and path.endswith("_search") and mimetype == FORM_TYPE:
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


def _delegate(backend: MedplumBackend, principal, path: str, body: Any) -> Response:
    headers = {k: v for k, v in request.headers.items()}
    resp = backend.service.handle(principal, request.method, path, _query(), body, headers)
    if not is_extended_mode(request):
        resp.body = without_extended_meta(resp.body)
    return render_fhir(resp)


def render_fhir(resp) -> Response:
    headers = dict(resp.headers or {})
    content_type = headers.pop("Content-Type", None) or headers.pop("content-type", None) or FHIR_JSON
    if request.headers.get("Prefer") == "return=minimal" and not g.get("outside_fhir_router"):
        return json_response(None, resp.status, content_type, headers)
    return json_response(resp.body, resp.status, content_type, headers)


# ---------------------------------------------------------------------------------------------- Binary (binary.ts)

# binary.ts binaryRouter: POST /, PUT /:id, GET /:id ahead of the FHIR router; a GET asking for FHIR JSON (and the
# rest of /Binary) goes on to the FHIR router.


def binary_create() -> Response:
    g.outside_fhir_router = True
    return _binary_upload(current_backend(), require_principal(), None)


def binary_update(binary_id: str) -> Response:
    g.outside_fhir_router = True
    return _binary_upload(current_backend(), require_principal(), binary_id)


def binary_read(binary_id: str) -> Response:
    if _wants_fhir_json():
        return fhir_handler(path=f"Binary/{binary_id}")
    g.outside_fhir_router = True
    return _binary_read(current_backend(), require_principal(), binary_id)


def binary_vread(binary_id: str, version_id: str) -> Response:
    """A version of a Binary: served by the FHIR router, which answers the content unless FHIR JSON is asked for."""
    if _wants_fhir_json():
        return fhir_handler(path=f"Binary/{binary_id}/_history/{version_id}")
    principal = require_principal()
    _check_query_length()
    return _binary_read(current_backend(), principal, binary_id, version_id)


def _wants_fhir_json() -> bool:
    """response.ts sendFhirResponse: a GET whose Accept does not start with application/fhir+json gets a Binary's
    content, not the resource."""
    return request.headers.get("Accept", "").startswith(FHIR_JSON)


def _binary_read(backend: MedplumBackend, principal, rid: str, vid: str | None = None) -> Response:
    path = f"Binary/{rid}/_history/{vid}" if vid else f"Binary/{rid}"
    resp = backend.service.handle(principal, "GET", path, [], None, {})
    if resp.status >= 400:
        return render_fhir(resp)
    binary, content = backend.service.binary_content(principal, rid, vid)
    response = Response(content, status=200, content_type=_with_charset(binary.get("contentType")))
    for k, v in resp.headers.items():
        response.headers[k] = v
    return response


# mime-types charset(): the types Express sends with "; charset=utf-8" (res.contentType)
_UTF8_TYPES = (
    "application/json",
    "application/javascript",
    "application/fhir+json",
    "application/ld+json",
    "application/xhtml+xml",
)


def _with_charset(content_type: Any) -> str:
    ct = content_type if isinstance(content_type, str) and content_type else "application/octet-stream"
    base = ct.split(";")[0].strip().lower()
    if "charset" not in ct.lower() and (base.startswith("text/") or base in _UTF8_TYPES):
        ct += "; charset=utf-8"
    return ct


def _binary_body() -> bytes:
    """binary.ts getContentStream: the body as sent, inflated for Content-Encoding deflate / gzip."""
    data = read_body(request, limit=MAX_BINARY_BYTES)
    encoding = (request.headers.get("Content-Encoding") or "").lower()
    if not encoding:
        return data
    try:
        if encoding == "deflate":
            return zlib.decompress(data)
        if encoding == "gzip":
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    except zlib.error:
        raise BadRequest("Content could not be parsed") from None
    raise BadRequest("Unsupported content encoding")


def _binary_upload(backend: MedplumBackend, principal, rid: str | None) -> Response:
    """binary.ts handleBinaryWriteRequest: the Binary resource is written — access policy and validation — without
    its content, which goes to storage beside it (uploadBinaryData), so the content is not held to the 1 MiB
    `base64BinaryMaxBytes` of a JSON Binary; the answer is the Binary with a `url` to read it back."""
    data = _binary_body()
    content_type = request.headers.get("Content-Type")
    if content_type == FHIR_JSON:
        resource = _binary_resource(data, rid)
        if resource is not None:
            resp = backend.call(
                "PUT" if rid else "POST", f"Binary/{rid}" if rid else "Binary", body=resource, principal=principal
            )
            return json_response(resp.body, resp.status, FHIR_JSON, dict(resp.headers or {}))
    binary: dict[str, Any] = {"resourceType": "Binary", "contentType": content_type or "application/octet-stream"}
    security_context = request.headers.get("X-Security-Context")
    if security_context:
        binary["securityContext"] = {"reference": security_context}
    with backend.service.raw_content(data):
        if rid:
            binary["id"] = rid
            resp = backend.call("PUT", f"Binary/{rid}", body=binary, principal=principal)
        else:
            resp = backend.call("POST", "Binary", body=binary, principal=principal)
    body = resp.body
    if resp.status < 300 and isinstance(body, dict) and body.get("id"):
        body = {**body, "url": f"{backend.base_url}fhir/R4/Binary/{body['id']}"}
    return json_response(body, resp.status, FHIR_JSON, dict(resp.headers or {}))


def _binary_resource(data: bytes, rid: str | None) -> dict | None:
    """The special case of binary.ts: the body is itself a Binary resource (for PUT, with the URL's id)."""
    try:
        body = parse_json_bytes(data)
    except FhirError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "Binary" and (rid is None or body.get("id") == rid):
        return body
    return None
