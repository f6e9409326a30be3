"""`create_app(backend, api_key=...)`: the fake Metriport's Flask app.

Registers the Medical API, the settings routes (at /settings, where Metriport mounts them), the
presigned files and the developer API, and answers every error with Metriport's body
(`errors.py`): no input makes it answer 5xx, except the 5xx its fault switches inject.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..serving import allowed_hosts, host_allowed
from . import api, devapi, httpio
from .backend import MetriportBackend
from .errors import HttpError, MetriportError, RawError, ServerError, route_not_found

log = logging.getLogger("medport.fake_metriport")


def _error_response(err: MetriportError) -> Response:
    body = err.body()
    if err.mimetype == "application/json":
        resp = Response(
            json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=err.status, mimetype="application/json"
        )
    else:
        resp = Response(str(body), status=err.status, mimetype=err.mimetype)
    if not isinstance(err, RawError):
        resp.headers["x-sentry-id"] = ""  # Metriport's error handler always sets it
    resp.headers.update(err.headers)
    return resp


def _http_exception(e: HTTPException) -> Response:
    """Werkzeug's own refusals in Metriport's words: no route or no such method → Express's 404
    `{"message": "Not Found"}`; a body over the limit → body-parser's 413; others keep their status."""
    if e.code in (404, 405):
        return _error_response(route_not_found())
    if e.code == 413:
        return _error_response(HttpError(413, "request entity too large"))
    return _error_response(HttpError(e.code or 400, e.description or "Bad Request"))


def _unexpected(e: Exception) -> Response:
    log.error("fake Metriport: unexpected %s on %s %s", type(e).__name__, request.method, request.path, exc_info=e)
    return _error_response(ServerError())


def _misdirected(host: str) -> HttpError:
    return HttpError(
        421,
        f"Misdirected request: this server does not answer for host {host[:100]!r} (allowed: "
        "127.0.0.1, localhost, [::1], the --host given, MEDPORT_ALLOWED_HOSTS)",
    )


def create_app(
    backend: MetriportBackend, *, api_key: str, public_base_url: str | None = None, hosts: frozenset[str] | None = None
) -> Flask:
    """`hosts`: the names a request's Host header may carry (serving.allowed_hosts; default loopback only)."""
    app = Flask("fake_metriport")
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Metriport's key order
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.config[httpio.API_KEY_CONFIG] = api_key
    app.config["MAX_CONTENT_LENGTH"] = httpio.MAX_BODY_BYTES
    app.extensions[httpio.EXTENSION] = backend
    if public_base_url:
        backend.public_base_url = public_base_url.rstrip("/")
    hosts = (hosts or allowed_hosts()) | allowed_hosts("127.0.0.1", public_base_url)

    @app.before_request
    def _check_host() -> None:  # DNS rebinding: a page on another origin sends its own name
        host = request.environ.get("HTTP_HOST")
        if not host_allowed(host, hosts):
            raise _misdirected(host or "")

    app.before_request(api.require_api_key)
    app.before_request(api.parse_body)
    app.before_request(api.inject_faults)
    app.after_request(api.log_call)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.settings_bp)
    app.register_blueprint(api.files_bp)
    app.register_blueprint(api.uploads_bp)
    app.register_blueprint(devapi.bp)
    app.register_error_handler(MetriportError, _error_response)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
    return app
