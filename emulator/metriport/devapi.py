"""The fake's developer API under `/_fake` (LocalStack-style inspection and control).

Every route needs the fake's API key in `x-api-key` (401 otherwise) — loopback callers included:
bots, other local users and tunnels are loopback too. (`/_fake/files/...`, the presigned download
URLs, are a separate blueprint and stay open: like S3 presigned URLs they carry their own token.)
No route returns a secret: the webhook key is never shown and a webhook URL's inline credentials
are redacted, here and in the delivery log.

`GET|POST /faults`, `GET /webhooks[?body=false]` (the delivery log), `POST /reset`, `GET /state`,
`POST /settings/webhook {webhookUrl, webhookKey?, ping?}` (configure without Metriport's URL
blacklist; no ping unless asked). Bodies are checked strictly; a refused request changes nothing.
"""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request

from . import schemas
from .api import DEV_PREFIX, current_backend, parse_json_text, valid_api_key
from .errors import DevError, DevUnauthorized
from .models import redact_url

bp = Blueprint("metriport_dev", __name__, url_prefix=DEV_PREFIX)
MAX_KEY_LENGTH = 256


@bp.before_request
def require_key() -> None:
    if not valid_api_key(request.headers.get("x-api-key")):
        raise DevUnauthorized("The developer API needs the fake's API key in the x-api-key header")


def _object_body() -> dict:
    body = parse_json_text(request.get_data(cache=True).decode("utf-8", errors="replace"))
    if not isinstance(body, dict):
        raise DevError([f"body: Expected object, received {'array' if isinstance(body, list) else type(body).__name__}"])
    return body


def public_settings() -> dict:
    """The webhook settings without secrets: no key, the URL's credentials redacted."""
    backend = current_backend()
    s = backend.get_settings()
    return {"id": s["id"], "webhookUrl": redact_url(s["webhookUrl"]), "webhookKeySet": bool(s["webhookKey"]),
            "mrFilters": s.get("mrFilters")} | backend.webhook_status()


@bp.get("/faults")
def get_faults():
    return jsonify(current_backend().faults.snapshot())


@bp.post("/faults")
def set_faults():
    return jsonify(current_backend().set_faults(**_object_body()))


@bp.get("/webhooks")
def webhooks_log():
    include = request.args.get("body", "true") != "false"
    return jsonify({"deliveries": current_backend().deliveries_log(include_body=include)})


@bp.post("/reset")
def reset():
    backend = current_backend()
    backend.reset()
    return jsonify({"ok": True, "facilityId": backend.seeded_facility_id})


@bp.get("/state")
def state():
    backend = current_backend()
    return jsonify({"facilityId": backend.seeded_facility_id, "patients": backend.list_patients(),
                    "knownFirstNames": backend.known_first_names(),
                    "settings": public_settings(), "faults": backend.faults.snapshot()})


_KEY_CHARS = re.compile(r"[\x21-\x7e]+\Z")


def _webhook_settings(body: dict) -> tuple[str | None, str | None, bool]:
    problems: list[str] = [f"{k}: unknown key (allowed: webhookUrl, webhookKey, ping)"
                           for k in body if k not in ("webhookUrl", "webhookKey", "ping")]
    url: Any = body.get("webhookUrl")
    if url not in (None, ""):
        if not isinstance(url, str):
            problems.append("webhookUrl: Expected string or null")
        elif (len(url) > schemas.MAX_WEBHOOK_URL_LENGTH or not url.lower().startswith(("http://", "https://"))
              or not schemas.is_url(url)):
            problems.append(f"webhookUrl: must be an http(s) URL of at most {schemas.MAX_WEBHOOK_URL_LENGTH} characters")
    key: Any = body.get("webhookKey")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or not _KEY_CHARS.match(key)):
        problems.append(f"webhookKey: Expected 1..{MAX_KEY_LENGTH} printable ASCII characters")
    ping: Any = body.get("ping", False)
    if not isinstance(ping, bool):
        problems.append("ping: Expected boolean")
    if problems:
        raise DevError(problems)
    return url or None, key, ping


@bp.post("/settings/webhook")
def set_webhook():
    url, key, ping = _webhook_settings(_object_body())
    current_backend().set_webhook(url, key, ping=ping)
    return jsonify(public_settings())
