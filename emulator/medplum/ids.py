"""Ids, secrets, references and timestamps, written the way Medplum writes them."""
from __future__ import annotations

import secrets as _secrets
import uuid
from datetime import datetime, timezone
from typing import Any


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def generate_secret() -> str:
    return _secrets.token_hex(32)


def ref(resource: dict) -> dict:
    r = {"reference": f"{resource['resourceType']}/{resource['id']}"}
    display = resource.get("name")
    if isinstance(display, str) and display:
        r["display"] = display
    return r


def ref_id(reference: Any) -> str | None:
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if isinstance(reference, str) and "/" in reference:
        return reference.rsplit("/", 1)[1]
    return None
