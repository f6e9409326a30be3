"""The Medplum emulator's Flask app: `create_app(settings) -> Flask`.

Thin HTTP layer (moto/LocalStack style): parse the request, authenticate, hand the FHIR work to
`FhirService.handle(...)` (emulator/fhir/, helper A), render what it answers. Medplum facts
(packages/server/src/app.ts, fhir/routes.ts, fhir/outcomes.ts):
- JSON bodies over 1 MB → 400 `badRequest('File too large')`; unparsable JSON → 400
  `badRequest('Content could not be parsed')` — nothing is written either way.
- FHIR create/update/batch need application/json or application/fhir+json, PATCH needs
  application/json-patch+json; otherwise 400 "Unsupported content type" (rendered here as an
  OperationOutcome so clients get a FHIR body).
- `POST /fhir/R4/Binary` takes any content type: the raw bytes become the Binary.
- Responses are `application/fhir+json`; `Prefer: return=minimal` sends no body.
- An unexpected exception renders 500 with an `exception` OperationOutcome (never a crash).
"""
from __future__ import annotations

import base64
import logging
import threading
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from . import auth as auth_mod
from .errors import BadRequest, FhirError, NotFound, ServerError, outcome
from .httpio import (FHIR_JSON, FORM_TYPE, JSON_TYPES, json_response, outcome_response, parse_form,
                     parse_json_bytes, read_body)
from .runs import RunStore, meta_path_for
from .state import PROJECT_ID, PROJECT_NAME, EmulatorState, Settings

log = logging.getLogger("medport.emulator")

_WRITE_METHODS = {"POST", "PUT", "PATCH"}


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask("medport-emulator")
    app.config["JSON_SORT_KEYS"] = False
    state = EmulatorState(settings)
    state.runs = RunStore(meta_path_for(state.db_path))
    state.auth = auth_mod.AuthService(state)
    app.extensions["medport"] = state

    seed(state)
    state.invalidate()

    from .bots import BotService, bp as bots_bp
    from .subscriptions import SubscriptionEngine
    from .admin import bp as admin_bp
    from .devapi import bp as dev_bp

    state.bots = BotService(state)
    state.subscriptions = SubscriptionEngine(state)
    state.repo.add_listener(_invalidate_listener(state))
    state.repo.add_listener(state.subscriptions.on_change)
    if settings.start_background:
        state.subscriptions.start()

    app.register_blueprint(auth_mod.bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(dev_bp)
    app.register_blueprint(bots_bp)
    _register_fhir(app)
    _register_errors(app)
    state.ready = True
    return app


def get_state(app: Flask) -> EmulatorState:
    return app.extensions["medport"]


# ---------------------------------------------------------------------------------------------
# seeding
# ---------------------------------------------------------------------------------------------
def seed(state: EmulatorState) -> None:
    """Idempotently create the Project, the admin ClientApplication and its admin membership."""
    s = state.settings
    project = state.try_read("Project", PROJECT_ID)
    if project is None:
        state.update({"resourceType": "Project", "id": PROJECT_ID, "name": PROJECT_NAME,
                      "features": ["bots"], "strictMode": True})
    elif "bots" not in (project.get("features") or []):
        project = dict(project)
        project["features"] = [*(project.get("features") or []), "bots"]
        state.update(project)
    client = state.try_read("ClientApplication", s.admin_client_id)
    if client is None or client.get("secret") != s.admin_client_secret:
        body = dict(client or {"resourceType": "ClientApplication", "id": s.admin_client_id,
                                "name": "medport admin", "description": "Seeded by the medport emulator"})
        body["secret"] = s.admin_client_secret
        state.update(body)
    profile = f"ClientApplication/{s.admin_client_id}"
    membership = state.membership_for_profile(profile)
    if membership is None:
        state.invalidate()
        state.create({"resourceType": "ProjectMembership",
                      "project": {"reference": f"Project/{PROJECT_ID}"},
                      "user": {"reference": profile}, "profile": {"reference": profile}, "admin": True})
    elif not membership.get("admin"):
        membership = dict(membership)
        membership["admin"] = True
        state.update(membership)


_AUTH_TYPES = {"ProjectMembership", "AccessPolicy", "ClientApplication", "Project", "Bot"}


def _invalidate_listener(state: EmulatorState):
    def listener(event) -> None:
        try:
            rtype = (event.resource or {}).get("resourceType")
            if rtype in _AUTH_TYPES:
                state.invalidate(rtype)
                state.auth.invalidate()
        except Exception:  # a listener never breaks a write
            log.exception("auth cache invalidation failed")
    return listener


# ---------------------------------------------------------------------------------------------
# FHIR routes
# ---------------------------------------------------------------------------------------------
def _register_fhir(app: Flask) -> None:
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule("/fhir/R4", "fhir_root", fhir_handler, methods=methods, defaults={"path": ""},
                     strict_slashes=False)
    app.add_url_rule("/fhir/R4/", "fhir_root_slash", fhir_handler, methods=methods, defaults={"path": ""})
    app.add_url_rule("/fhir/R4/<path:path>", "fhir", fhir_handler, methods=methods)
    app.add_url_rule("/", "root", lambda: Response("", 200))
    app.add_url_rule("/healthcheck", "healthcheck",
                     lambda: json_response({"ok": True, "version": "medport-emulator"}, 200, "application/json"))


def fhir_handler(path: str) -> Response:
    state = get_state_current()
    path = path.strip("/")
    if path == "metadata" and request.method == "GET":
        return _delegate(state, state.system, path, None)
    principal = auth_mod.require_principal()
    method = request.method
    parts = path.split("/") if path else []
    # operations owned by bots.py
    if parts and parts[0] == "Bot" and parts[-1] in ("$execute", "$deploy"):
        from .bots import deploy_handler, execute_handler
        if parts[-1] == "$execute" and len(parts) in (2, 3) and method in ("GET", "POST"):
            return execute_handler(principal, parts[1] if len(parts) == 3 else None)
        if parts[-1] == "$deploy" and len(parts) == 3 and method == "POST":
            return deploy_handler(principal, parts[1])
    if len(parts) == 3 and parts[0] == "job" and parts[2] == "status" and method == "GET":
        from .bots import job_status_handler
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
    limit = get_state_current().settings.max_json_bytes
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


def _delegate(state: EmulatorState, principal, path: str, body: Any) -> Response:
    headers = {k: v for k, v in request.headers.items()}
    resp = state.service.handle(principal, request.method, path, _query(), body, headers)
    return render_fhir(resp)


def render_fhir(resp) -> Response:
    headers = dict(resp.headers or {})
    content_type = headers.pop("Content-Type", None) or headers.pop("content-type", None) or FHIR_JSON
    if request.headers.get("Prefer") == "return=minimal" and resp.status < 400:
        return json_response(None, resp.status, content_type, headers)
    return json_response(resp.body, resp.status, content_type, headers)


def _binary_upload(state: EmulatorState, principal, parts: list[str]) -> Response:
    """Raw upload (MedplumClient.createBinary/createAttachment): the bytes become Binary.data."""
    data = read_body(request, limit=64 * 1024 * 1024)
    binary: dict[str, Any] = {"resourceType": "Binary",
                              "contentType": request.mimetype or "application/octet-stream",
                              "data": base64.b64encode(data).decode("ascii")}
    security_context = request.headers.get("X-Security-Context")
    if security_context:
        binary["securityContext"] = {"reference": security_context}
    if len(parts) == 2:
        binary["id"] = parts[1]
        resp = state.call("PUT", f"Binary/{parts[1]}", body=binary, principal=principal)
    else:
        resp = state.call("POST", "Binary", body=binary, principal=principal)
    if resp.status < 300 and isinstance(resp.body, dict) and resp.body.get("id"):
        created = dict(resp.body)
        created["url"] = f"{state.base_url}fhir/R4/Binary/{created['id']}"
        return json_response(created, resp.status, FHIR_JSON, dict(resp.headers or {}))
    return render_fhir(resp)


def get_state_current() -> EmulatorState:
    from flask import current_app
    return current_app.extensions["medport"]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def _register_errors(app: Flask) -> None:
    @app.errorhandler(FhirError)
    def _fhir_error(err: FhirError):
        return outcome_response(err.outcome, err.status)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if err.code == 404:
            return outcome_response(NotFound().outcome, 404)
        if err.code == 405:
            return outcome_response(outcome("error", "not-supported", "Method not allowed"), 405)
        if err.code == 413:
            return outcome_response(BadRequest("File too large").outcome, 400)
        return outcome_response(outcome("error", "invalid", err.description or err.name), err.code or 400)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return outcome_response(ServerError(f"{type(err).__name__}").outcome, 500)


_lock = threading.Lock()
