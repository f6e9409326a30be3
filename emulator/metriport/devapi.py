"""The fake's developer API under `/_fake` (LocalStack-style inspection and control).

Every route needs the fake's API key in `x-api-key` (401 otherwise) — loopback callers included:
bots, other local users and tunnels are loopback too. (`/_fake/files/...`, the presigned download
URLs, are a separate blueprint and stay open: like S3 presigned URLs they carry their own token.)
No route returns a secret: the webhook key is never shown and a webhook URL's inline credentials
are redacted, here and in the delivery log.

`GET|POST /faults`, `GET|POST /rate-limits {limits?, windowSeconds?, reset?}` (Metriport's per-minute limits: lower
them, shorten the window, let it pass), `GET /webhooks[?body=false]` (the delivery log), `POST /webhooks/<messageId>/redeliver
{times}` (the same message N times at once), `POST /reset`, `GET /state`,
`POST /settings/webhook {webhookUrl, webhookKey?, ping?}` (configure without Metriport's URL
blacklist; no ping unless asked), `GET /bulk` and `GET /bulk/<requestId>` (bulk patient creates: status,
counts, rows, the result CSV), `POST /bulk/<requestId>/webhook {status, reason?}` (a
`medical.bulk-patient-create` message Metriport's docs describe but its code never sends: `failed` with a
reason, `expired`, `waiting`), `POST /patients/<id>/notifications {type, at?, facility?, to?}` (a realtime
patient notification: `patient.admit` | `patient.transfer` | `patient.discharge`, with its Encounter bundle;
`patient.pharmacy` | `patient.laboratory`, with a dispense or a lab report that joins the record),
`POST /patients/<id>/messages {status, reason?}` (`message.status`), `POST /patients/<id>/bulk-download-paged
{pageSize?}` (`medical.document-bulk-download-paged`) and `GET /patients/<id>/stays`. Bodies are checked strictly; a refused request changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request

from . import adt, schemas
from .api import DEV_PREFIX
from .errors import DevError, DevUnauthorized, NotFound
from .httpio import current_backend, parse_json_text, valid_api_key
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
        raise DevError(
            [f"body: Expected object, received {'array' if isinstance(body, list) else type(body).__name__}"]
        )
    return body


def public_settings() -> dict:
    """The webhook settings without secrets: no key, the URL's credentials redacted."""
    backend = current_backend()
    s = backend.get_settings()
    return {
        "id": s["id"],
        "webhookUrl": redact_url(s["webhookUrl"]),
        "webhookKeySet": bool(s["webhookKey"]),
        "mrFilters": s.get("mrFilters"),
    } | backend.webhook_status()


@bp.get("/faults")
def get_faults():
    return jsonify(current_backend().faults.snapshot())


@bp.post("/faults")
def set_faults():
    return jsonify(current_backend().set_faults(**_object_body()))


@bp.get("/rate-limits")
def rate_limits():
    return jsonify(current_backend().rates.snapshot())


@bp.post("/rate-limits")
def set_rate_limits():
    """`{"limits": {"patient": n, "document_query": n, "consolidated": n}, "windowSeconds": s, "reset": true}`: lower
    (or raise) the limits and the window they count (Metriport: a minute), and/or let the current window pass
    (`reset`: every call counted so far is forgotten) — so tests hit Metriport's limits with a few calls and see
    them lifted without waiting a minute."""
    body = _object_body()
    rates = current_backend().rates
    problems = [
        f"{k}: unknown key (allowed: limits, windowSeconds, reset)"
        for k in body
        if k not in ("limits", "windowSeconds", "reset")
    ]
    window: Any = body.get("windowSeconds")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 3600):
        problems.append("windowSeconds: must be an integer from 1 to 3600")
    limits: Any = body.get("limits", {})
    if not isinstance(limits, dict):
        problems.append("limits: Expected object")
        limits = {}
    for name, value in limits.items():
        if name not in rates.limits:
            problems.append(f"limits.{name}: unknown bucket (allowed: {', '.join(rates.limits)})")
        elif not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
            problems.append(f"limits.{name}: must be an integer from 1 to 100000")
    if not isinstance(body.get("reset", False), bool):
        problems.append("reset: Expected boolean")
    if problems:
        raise DevError(problems)
    rates.set_limits(limits, window)
    if body.get("reset"):
        rates.reset()
    return jsonify(rates.snapshot())


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
    return jsonify(
        {
            "facilityId": backend.seeded_facility_id,
            "patients": backend.list_patients(),
            "knownFirstNames": backend.known_first_names(),
            "settings": public_settings(),
            "faults": backend.faults.snapshot(),
        }
    )


_KEY_CHARS = re.compile(r"[\x21-\x7e]+\Z")


def _webhook_settings(body: dict) -> tuple[str | None, str | None, bool]:
    problems: list[str] = [
        f"{k}: unknown key (allowed: webhookUrl, webhookKey, ping)"
        for k in body
        if k not in ("webhookUrl", "webhookKey", "ping")
    ]
    url: Any = body.get("webhookUrl")
    if url not in (None, ""):
        if not isinstance(url, str):
            problems.append("webhookUrl: Expected string or null")
        elif (
            len(url) > schemas.MAX_WEBHOOK_URL_LENGTH
            or not url.lower().startswith(("http://", "https://"))
            or not schemas.is_url(url)
        ):
            problems.append(
                f"webhookUrl: must be an http(s) URL of at most {schemas.MAX_WEBHOOK_URL_LENGTH} characters"
            )
    key: Any = body.get("webhookKey")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or not _KEY_CHARS.match(key)
    ):
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


@bp.post("/webhooks/<message_id>/redeliver")
def redeliver(message_id: str):
    """Send a logged message again, `{"times": N}` copies (default 2, at most 20) at the same moment, signed
    with the current key — what a delivery retried while the first attempt is still open looks like to the
    receiver. Answers each copy's HTTP status and response."""
    body = _object_body() if request.get_data(cache=True).strip() else {}
    problems = [f"{k}: unknown key (allowed: times)" for k in body if k != "times"]
    times = body.get("times", 2)
    if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= 20:
        problems.append("times: must be an integer from 1 to 20")
    if problems:
        raise DevError(problems)
    try:
        answers = current_backend().redeliver(message_id, times)
    except KeyError:
        raise NotFound(f"No webhook message {message_id}") from None
    except LookupError as e:
        raise DevError([str(e)]) from None
    return jsonify({"messageId": message_id, "answers": answers})


@bp.get("/bulk")
def bulk_jobs():
    return jsonify({"jobs": current_backend().bulk_jobs_summary()})


@bp.get("/bulk/<request_id>")
def bulk_job(request_id: str):
    return jsonify(current_backend().bulk_job(request_id))


BULK_STATUSES = ("waiting", "processing", "completed", "failed", "expired")


@bp.post("/bulk/<request_id>/webhook")
def bulk_webhook(request_id: str):
    """Send a `medical.bulk-patient-create` message for a job with the status (and reason) given — the ones
    Metriport's docs list and its code never sends (a `failed` message with its `reason`, `expired`)."""
    body = _object_body()
    problems = [f"{k}: unknown key (allowed: status, reason)" for k in body if k not in ("status", "reason")]
    status = body.get("status")
    if status not in BULK_STATUSES:
        problems.append(f"status: must be one of {', '.join(BULK_STATUSES)}")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        problems.append("reason: Expected string")
    if problems:
        raise DevError(problems)
    assert isinstance(status, str)  # one of BULK_STATUSES
    d = current_backend().send_bulk_status(request_id, status, reason)
    return jsonify({"messageId": d.message_id, "status": d.status})


SOURCE_NOTIFICATIONS = ("patient.pharmacy", "patient.laboratory")


@bp.post("/patients/<patient_id>/notifications")
def patient_notification(patient_id: str):
    """A realtime patient notification for a patient of the fake: `{"type": "patient.admit" | "patient.transfer"
    | "patient.discharge" | "patient.pharmacy" | "patient.laboratory", "at"?: ISO datetime, "facility"?: name
    (admit), "to"?: {name, type} (transfer)}`."""
    body = _object_body()
    allowed = ("type", "at", "facility", "to")
    problems = [f"{k}: unknown key (allowed: {', '.join(allowed)})" for k in body if k not in allowed]
    for k in ("type", "at", "facility"):
        if body.get(k) is not None and not isinstance(body[k], str):
            problems.append(f"{k}: Expected string")
    if (
        body.get("at") is not None
        and isinstance(body["at"], str)
        and not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z", body["at"])
    ):
        problems.append("at: expected an ISO datetime like 2025-01-28T23:00:00.000Z")
    kinds = (*adt.EVENTS, *SOURCE_NOTIFICATIONS)
    if body.get("type") not in kinds:
        problems.append(f"type: must be one of {', '.join(kinds)}")
    if problems:
        raise DevError(problems)
    if body.get("type") in SOURCE_NOTIFICATIONS:
        return jsonify(current_backend().send_source_notification(patient_id, body["type"], at=body.get("at")))
    out = current_backend().send_patient_notification(
        patient_id, body.get("type") or "", at=body.get("at"), facility=body.get("facility"), to=body.get("to")
    )
    return jsonify(out)


@bp.post("/patients/<patient_id>/messages")
def message_status(patient_id: str):
    """`message.status` for an outbound message of the patient: `{"status": "completed" | "failed", "reason"?}`."""
    body = _object_body()
    problems = [f"{k}: unknown key (allowed: status, reason)" for k in body if k not in ("status", "reason")]
    if body.get("status") not in ("completed", "failed"):
        problems.append("status: must be completed or failed")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 5000):
        problems.append("reason: a string of 1 to 5000 characters")
    if problems:
        raise DevError(problems)
    return jsonify(current_backend().send_message_status(patient_id, body["status"], reason))


@bp.post("/patients/<patient_id>/bulk-download-paged")
def bulk_download_paged(patient_id: str):
    """`medical.document-bulk-download-paged` for the documents the patient's document query found:
    `{"pageSize"?: 1..1000 (default 100)}`, one message a page."""
    body = _object_body()
    size = body.get("pageSize", 100)
    problems = [f"{k}: unknown key (allowed: pageSize)" for k in body if k != "pageSize"]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
        problems.append("pageSize: an integer from 1 to 1000")
    if problems:
        raise DevError(problems)
    return jsonify(current_backend().send_bulk_download_paged(patient_id, size))


@bp.get("/patients/<patient_id>/stays")
def patient_stays(patient_id: str):
    return jsonify({"stays": current_backend().patient_stays(patient_id)})
