"""Ids, secrets, references and timestamps, written the way Medplum writes them."""

from __future__ import annotations

import os
import secrets as _secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

_random = threading.local()
_VARIANT = "89ab"


def uuid4() -> str:
    """A random (version 4) UUID string like `str(uuid.uuid4())`, from the same OS randomness read in blocks:
    a write makes two of them (id, versionId), and os.urandom(16) per call costs several µs."""
    pool = getattr(_random, "pool", None)
    pos = getattr(_random, "pos", 0)
    if pool is None or pos >= len(pool):
        pool, pos = os.urandom(4096).hex(), 0
        _random.pool = pool
    _random.pos = pos + 32
    h = pool[pos : pos + 32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_second: tuple = (None, "")  # the last second formatted: (epoch second, "YYYY-MM-DDTHH:MM:SS.")


def now_instant() -> tuple[str, float]:
    """Now as (an instant with milliseconds, "2026-11-30T13:00:05.123Z"; epoch seconds to the millisecond): the
    formatted second is reused, as a store write needs both and writes come thousands a second."""
    global _second
    ms = int(time.time() * 1000)
    sec, frac = divmod(ms, 1000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{cached[1]}{frac:03d}Z", ms / 1000


def now_iso() -> str:
    """Now as an instant with milliseconds, "2026-11-30T13:00:05.123Z"."""
    return now_instant()[0]


def new_id() -> str:
    return uuid4()


def generate_secret() -> str:
    return _secrets.token_hex(32)


def ref(resource: dict) -> dict:
    """@medplum/core createReference: `{reference, display}`, the display left out when it equals the reference."""
    reference = f"{resource['resourceType']}/{resource['id']}"
    display = display_string(resource)
    return {"reference": reference} if display == reference else {"reference": reference, "display": display}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None  # core ensureString


def _human_name(name: Any) -> str:
    """core format.ts formatHumanName (no options): prefix, given, family, suffix; else the text."""
    if not isinstance(name, dict):
        return ""
    parts = [
        *(name.get("prefix") or []),
        *(name.get("given") or []),
        *([name["family"]] if name.get("family") else []),
        *(name.get("suffix") or []),
    ]
    if not parts and _text(name.get("text")):
        return name["text"]
    return " ".join(str(p) for p in parts).strip()


def _codeable_concept(cc: Any) -> str:
    """core format.ts formatCodeableConcept: the text, else the codings' display (or code) joined by ', '."""
    if not isinstance(cc, dict):
        return ""
    if _text(cc.get("text")):
        return cc["text"]
    codings = cc.get("coding")
    if isinstance(codings, list):
        return ", ".join(_text((c or {}).get("display")) or _text((c or {}).get("code")) or "" for c in codings)
    return ""


def display_string(resource: dict) -> str:  # noqa: C901 — one branch per resource type, as Medplum's getDisplayString
    """@medplum/core utils.ts getDisplayString (a Slot's time range, formatted by the locale, is not ported)."""
    rt = resource.get("resourceType")
    if rt in ("Patient", "Practitioner", "RelatedPerson"):
        names = resource.get("name")
        if isinstance(names, list) and names:
            text = _human_name(names[0])
            if text:
                return text
    if rt == "Appointment" and (resource.get("serviceType") or [None])[0]:
        return _codeable_concept(resource["serviceType"][0])
    if rt == "Device" and isinstance(resource.get("deviceName"), list) and resource["deviceName"]:
        name = (resource["deviceName"][0] or {}).get("name")
        if isinstance(name, str) and name:
            return name
    if rt == "DocumentReference":
        if resource.get("description"):
            return resource["description"]
        if resource.get("type"):
            return _codeable_concept(resource["type"])
    if rt in ("MedicationRequest", "MedicationStatement") and resource.get("medicationCodeableConcept"):
        return _codeable_concept(resource["medicationCodeableConcept"])
    if rt == "Subscription" and resource.get("criteria"):
        return resource["criteria"]
    if rt == "User" and resource.get("email"):
        return resource["email"]
    if isinstance(resource.get("name"), str) and resource["name"]:
        return resource["name"]
    code = resource.get("code")
    if code:
        if isinstance(code, list):
            code = code[0] if code else None
        if isinstance(code, dict):
            codings = code.get("coding")
            if isinstance(codings, list) and all(
                isinstance(c, dict) and isinstance(c.get("code"), str) for c in codings
            ):
                return _codeable_concept(code)  # core isCodeableConcept
            if isinstance(code.get("text"), str):
                return code["text"]  # core isTextObject
    return f"{rt}/{resource.get('id')}"


def ref_id(reference: Any) -> str | None:
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if isinstance(reference, str) and "/" in reference:
        return reference.rsplit("/", 1)[1]
    return None
