"""Request parsing and response rendering shared by the emulator's HTTP modules.

Facts taken from Medplum's server (packages/server/src/app.ts):
- JSON bodies are parsed by express `json()` for application/json, application/fhir+json,
  application/json-patch+json and application/scim+json with `limit: maxJsonSize` (1 MB by default);
  a body over the limit fails with `entity.too.large` and the error handler answers
  `badRequest('File too large')` (400); unparsable JSON (`entity.parse.failed`) answers
  `badRequest('Content could not be parsed')` (400). body-parser's json is `strict`: the top level
  must be an object or an array.
- text/plain and x-application/hl7-v2+er7 are read as strings, urlencoded with `extended: false`.
- FHIR writes with any other content type answer 400 "Unsupported content type".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask import Request, Response, current_app, g, request

from . import jsonsafe
from .errors import BadRequest, FhirError, Forbidden, status_of

if TYPE_CHECKING:
    from .backend import MedplumBackend

MAX_JSON_BYTES = 1024 * 1024

JSON_TYPES = frozenset(
    {"application/json", "application/fhir+json", "application/json-patch+json", "application/scim+json"}
)
TEXT_TYPES = frozenset({"text/plain", "x-application/hl7-v2+er7"})
FORM_TYPE = "application/x-www-form-urlencoded"
FHIR_JSON = "application/fhir+json"
HL7_V2 = "x-application/hl7-v2+er7"


class _Missing:
    pass


def read_body(request: Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The raw body, refusing more than `limit` bytes exactly like body-parser (400 'File too large')."""
    length = request.content_length
    if length is not None and length > limit:
        raise BadRequest("File too large")
    data = request.stream.read(limit + 1) if length is None else request.get_data(cache=True)
    if len(data) > limit:
        raise BadRequest("File too large")
    return data


def parse_json_bytes(data: bytes, *, allow_lone_surrogates: bool = False) -> Any:
    """body-parser json in strict mode: empty → {}, top level must be object/array; numbers read as Node
    reads them (jsonsafe). A string holding an unpaired surrogate (`"\\ud800"`) is refused (400) unless
    `allow_lone_surrogates` ($execute input, which the bot gets as is): it is not Unicode text, it cannot be
    stored, and Medplum's database would not keep it either."""
    if not data.strip():
        return {}
    try:
        value, maybe_surrogates = jsonsafe.loads_fast(data)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("Content could not be parsed") from None
    if not isinstance(value, (dict, list)):
        raise BadRequest("Content could not be parsed")
    if not allow_lone_surrogates and maybe_surrogates:
        where = jsonsafe.first_lone_surrogate(value)
        if where is not None:
            rt = value.get("resourceType") if isinstance(value, dict) else None
            expression = ".".join(x for x in (rt if isinstance(rt, str) else None, where) if x) or None
            raise BadRequest("Invalid string: unpaired UTF-16 surrogate", expression)
    return value


def flat_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """querystring.parse: a repeated key becomes an array, others stay strings."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            prev = out[k]
            out[k] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            out[k] = v
    return out


def parse_form(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return flat_form(parse_qsl(text, keep_blank_values=True))


def lower_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


# What Medplum's Repository.removeHiddenFields (server fhir/repo.ts) takes out of every resource it returns unless
# the request says `X-Medplum: extended` (oauth/middleware.ts isExtendedMode). MedplumClient sends that header
# unless built with `extendedMode: false` (core client.ts), so bots see these fields and raw HTTP clients do not.
EXTENDED_META = ("author", "project", "account", "accounts", "compartment", "deleted")


def is_extended_mode(request: Request) -> bool:
    return request.headers.get("X-Medplum") == "extended"


def _plain_meta(resource: Any) -> Any:
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if not isinstance(meta, dict) or not any(k in meta for k in EXTENDED_META):
        return resource
    return {**resource, "meta": {k: v for k, v in meta.items() if k not in EXTENDED_META}}


def without_extended_meta(body: Any) -> Any:
    """A FHIR answer as a client not in extended mode gets it: the resource's meta, or (a search, history or
    batch answer: a Bundle the server built, without an id) each entry's resource's meta, without the fields
    above. Copies what it changes; the stored resources are never touched."""
    if not isinstance(body, dict):
        return body
    if body.get("resourceType") == "Bundle" and "id" not in body and isinstance(body.get("entry"), list):
        entries = [
            ({**e, "resource": _plain_meta(e["resource"])} if isinstance(e, dict) and "resource" in e else e)
            for e in body["entry"]
        ]
        return {**body, "entry": entries}
    return _plain_meta(body)


def json_response(
    body: Any, status: int = 200, content_type: str = FHIR_JSON, headers: dict[str, str] | None = None
) -> Response:
    payload = b"" if body is None else jsonsafe.dumps_bytes(body)
    resp = Response(payload, status=status, content_type=content_type if body is not None else None)
    if body is None:
        resp.headers.pop("Content-Type", None)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def outcome_response(oo: dict, status: int | None = None, headers: dict[str, str] | None = None) -> Response:
    """Medplum's sendOutcome: status from the outcome id; accepted → Content-Location."""
    hdrs = dict(headers or {})
    issues = oo.get("issue") or [{}]
    if oo.get("id") == "accepted" and issues[0].get("diagnostics"):
        hdrs["Content-Location"] = issues[0]["diagnostics"]
    return json_response(oo, status or status_of(oo), FHIR_JSON, hdrs)


def error_response(err: FhirError) -> Response:
    return outcome_response(err.outcome, err.status)


def current_backend() -> MedplumBackend:
    """The backend of the app serving this request (the one accessor)."""
    return current_app.extensions["medport"]


def require_principal():
    """Authenticate the current request (cached on `g`)."""
    if "principal" not in g:
        g.principal = current_backend().auth.authenticate(request.headers.get("Authorization"))
    return g.principal


def is_admin(principal) -> bool:
    return bool(principal is not None and (principal.superuser or (principal.membership or {}).get("admin")))


def require_admin():
    principal = require_principal()
    if not is_admin(principal):
        raise Forbidden()
    return principal
