"""Webhook bodies, signing and one POST, like Metriport's sender (the queue and retries: `sender.py`).

- Body: `{meta: {messageId, requestId?, when, type, data?}, ...payload}` serialized exactly like JS
  `JSON.stringify` (compact, key order kept — integer-like keys first as V8 orders them —,
  non-ASCII unescaped, JS number formatting), so a receiver that computes the HMAC over
  `JSON.stringify(JSON.parse(body))` gets the same bytes.
- Header `x-metriport-signature`: hex HMAC-SHA256 of that body with the webhook key.
- `post`: POST with a timeout — 5 s for a message, 2 s for the settings ping, as Metriport's sender
  (packages/api/src/command/webhook/webhook.ts `DEFAULT_TIMEOUT_SEND_PAYLOAD_MS` / `DEFAULT_TIMEOUT_SEND_TEST_MS`) —,
  no redirects; non-2xx, timeout or connection error is a failure (which makes the sender disable the webhook
  until retried).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import requests

from ..jsbehaviour import drop_undefined, js_entries, json_number

SIGNATURE_HEADER = "x-metriport-signature"
DEFAULT_TIMEOUT_S = 5.0  # DEFAULT_TIMEOUT_SEND_PAYLOAD_MS: every message
PING_TIMEOUT_S = 2.0  # DEFAULT_TIMEOUT_SEND_TEST_MS: the ping sent when a webhook URL is saved

_str_encoder = json.JSONEncoder(ensure_ascii=False).encode  # escapes like JSON.stringify


def _enc(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append(_str_encoder(v))
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, (int, float)):
        out.append(json_number(v))
    elif isinstance(v, dict):
        out.append("{")
        first = True
        for k, val in js_entries(v):
            if not first:
                out.append(",")
            first = False
            out.append(_str_encoder(str(k)))
            out.append(":")
            _enc(val, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, val in enumerate(v):
            if i:
                out.append(",")
            _enc(val, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON serializable: {type(v).__name__}")


def js_stringify(value: Any) -> str:
    """`JSON.stringify(value)` as V8 would produce it."""
    out: list[str] = []
    _enc(drop_undefined(value), out)
    return "".join(out)


def sign(key: str, body: str | bytes) -> str:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest()


def verify(key: str, body: str | bytes, signature: str | None) -> bool:
    if not signature:
        return False
    return hmac.compare_digest(sign(key, body), signature)


def build_body(meta: dict, payload: dict) -> str:
    """`{meta, ...payload}` as Metriport builds it (webhook.ts `processRequest`): key order messageId,
    requestId (only when the request has one), when, type, data (omitted when undefined)."""
    m = {"messageId": meta["messageId"]}
    if meta.get("requestId"):
        m["requestId"] = meta["requestId"]
    m |= {"when": meta["when"], "type": meta["type"]}
    if meta.get("data") is not None:
        m["data"] = meta["data"]
    return js_stringify({"meta": m, **payload})


def build_ping_body(ping: str, message_id: str, when: str) -> str:
    return js_stringify({"ping": ping, "meta": {"messageId": message_id, "when": when, "type": "ping"}})


def post(
    url: str, body: str, signature: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[bool, int | None, str, Any]:
    """POST one message; returns (ok, http_status, detail, parsed JSON response or None)."""
    try:
        resp = requests.post(
            url,
            data=body.encode("utf-8"),
            timeout=timeout_s,
            allow_redirects=False,
            headers={"content-type": "application/json", SIGNATURE_HEADER: signature, "user-agent": "Metriport API"},
        )
    except requests.Timeout:
        return False, None, f"Failed to send payload: timeout after {timeout_s}s", None
    except requests.RequestException as exc:
        return False, None, f"Failed to send payload: {type(exc).__name__}", None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if 200 <= resp.status_code < 300:
        return True, resp.status_code, "OK", data
    return False, resp.status_code, f"Failed to send payload: HTTP {resp.status_code}", data
