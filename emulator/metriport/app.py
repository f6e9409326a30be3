"""`create_app(backend, api_key=...)`: the fake Metriport's Flask app.

Registers the Medical API, the settings routes (twice: at "" and at /medical/v1), the presigned
files and the developer API, and maps every error to Metriport's body `{status, title, detail, name}`.
"""
from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import api, devapi
from .backend import MetriportBackend
from .errors import MetriportError, MethodNotAllowed, NotFound


def _error_response(err: MetriportError) -> Response:
    resp = jsonify(err.body())
    resp.status_code = err.status
    resp.headers.update(err.headers)
    return resp


def _unrouted(e: HTTPException) -> Response:
    """No route (404) or no such method on it (405), worded like Express: `Cannot GET /path`."""
    kind = NotFound if e.code == 404 else MethodNotAllowed
    return _error_response(kind(f"Cannot {request.method} {request.path}"))


def create_app(backend: MetriportBackend, *, api_key: str, public_base_url: str | None = None) -> Flask:
    app = Flask("fake_metriport")
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Metriport's key order
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.config[api.API_KEY_CONFIG] = api_key
    app.extensions[api.EXTENSION] = backend
    if public_base_url:
        backend.public_base_url = public_base_url.rstrip("/")
    app.before_request(api.require_api_key)
    app.before_request(api.inject_faults)
    app.after_request(api.log_call)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.settings_bp)
    app.register_blueprint(api.settings_bp, url_prefix=api.MEDICAL_PREFIX, name="metriport_settings_v1")
    app.register_blueprint(api.files_bp)
    app.register_blueprint(devapi.bp)
    app.register_error_handler(MetriportError, _error_response)
    app.register_error_handler(404, _unrouted)
    app.register_error_handler(405, _unrouted)
    return app
