"""The Medplum emulator's Flask app factory: `create_app(settings) -> Flask`.

A thin HTTP layer (moto/LocalStack style) over `MedplumBackend` (backend.py, no HTTP): routes/ parse
requests and render answers, devapi.py is the developer API, and typed errors (errors.py) map to
Medplum's OperationOutcomes here. An unexpected exception renders 500 with an `exception`
OperationOutcome saying only "Internal server error" (never a crash, never exception text: that is logged).
"""

from __future__ import annotations

import logging

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from ..serving import allowed_hosts, host_allowed
from . import devapi
from .backend import MedplumBackend
from .errors import BadRequest, FhirError, MisdirectedRequest, NotFound, ServerError, outcome
from .httpio import outcome_response
from .routes import admin, fhir, oauth
from .settings import Settings

log = logging.getLogger("medport.emulator.medplum")


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask("medport-emulator")
    app.config["JSON_SORT_KEYS"] = False
    # Express does not merge slashes; werkzeug would answer `//` with a 308 whose Location repeats the whole
    # query (a 200 KB header line that clients cannot read). `/fhir/R4//x` is routed like Medplum routes it.
    app.url_map.merge_slashes = False
    app.extensions["medport"] = backend = MedplumBackend(settings or Settings())
    hosts = backend.settings.allowed_hosts or allowed_hosts()

    @app.before_request
    def _check_host():
        host = request.environ.get("HTTP_HOST")
        if not host_allowed(host, hosts):
            raise MisdirectedRequest(host or "")

    app.register_blueprint(oauth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(devapi.bp)
    fhir.register(app)
    _register_errors(app)
    return app


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
        log.exception("unhandled error in %s %s", request.method, request.path[:200])
        return outcome_response(ServerError().outcome, 500)  # "Internal server error", no exception text
