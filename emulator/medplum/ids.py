"""Ids, secrets, references and timestamps, written the way Medplum writes them."""
from __future__ import annotations

import os
import secrets as _secrets
import threading
from datetime import datetime, timezone
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
    h = pool[pos:pos + 32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid4()


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
