"""The fake's developer API under `/_fake` (no API key; LocalStack-style inspection and control).

`GET|POST /faults`, `GET /webhooks[?body=false]` (the delivery log), `POST /webhooks/<messageId>/redeliver
{times}` (the same message N times at once), `POST /reset`, `GET /state`, and `POST /settings/webhook
{webhookUrl, webhookKey?, ping?}` (configure without Metriport's key rotation; no ping unless asked).
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from .api import DEV_PREFIX, current_backend, json_body
from .errors import BadRequest, NotFound, ValidationError

bp = Blueprint("metriport_dev", __name__, url_prefix=DEV_PREFIX)


def _object_body() -> dict:
    body = json_body(required=True)
    if not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    return body


@bp.get("/faults")
def get_faults():
    return jsonify(current_backend().faults.snapshot())


@bp.post("/faults")
def set_faults():
    return jsonify(current_backend().set_faults(**_object_body()))


@bp.get("/webhooks")
def webhooks_log():
    return jsonify({"deliveries": current_backend().deliveries_log(include_body=request.args.get("body", "true") != "false")})


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
                    "settings": backend.get_settings() | backend.webhook_status(), "faults": backend.faults.snapshot()})


@bp.post("/settings/webhook")
def set_webhook():
    body = _object_body()
    return jsonify(current_backend().set_webhook(body.get("webhookUrl"), body.get("webhookKey"), ping=bool(body.get("ping"))))


@bp.post("/webhooks/<message_id>/redeliver")
def redeliver(message_id: str):
    """Send a logged message again, `{"times": N}` copies (default 2, at most 20) at the same moment, signed
    with the current key — what a delivery retried while the first attempt is still open looks like to the
    receiver. Answers each copy's HTTP status and response."""
    body = json_body() or {}
    if not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    times = body.get("times", 2)
    if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= 20:
        raise ValidationError(["times: must be an integer from 1 to 20"])
    try:
        answers = current_backend().redeliver(message_id, times)
    except KeyError:
        raise NotFound(f"no webhook message {message_id}") from None
    except LookupError as e:
        raise BadRequest(str(e)) from None
    return jsonify({"messageId": message_id, "answers": answers})
