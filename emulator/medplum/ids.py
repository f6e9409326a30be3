"""Ids, secrets, references and timestamps, written the way Medplum writes them."""
from __future__ import annotations

import os
import secrets as _secrets
import threading
import time
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


_second: tuple = (None, "")     # the last second formatted: (epoch second, "YYYY-MM-DDTHH:MM:SS.")


def now_instant() -> tuple[str, float]:
    """Now as (an instant with milliseconds, "2026-11-30T13:00:05.123Z"; epoch seconds to the millisecond): the
    formatted second is reused, as a store write needs both and writes come thousands a second."""
    global _second
    ms = int(time.time() * 1000)
    sec, frac = divmod(ms, 1000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{cached[1]}{frac:03d}Z", ms / 1000


def now_iso() -> str:
    """Now as an instant with milliseconds, "2026-11-30T13:00:05.123Z"."""
    return now_instant()[0]


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
