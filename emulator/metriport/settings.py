"""What the fake Metriport is started with: `Settings` (as emulator/medplum/settings.py is for the emulator)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from . import webhooks

DEFAULT_FACILITY_ID = "0195a6e4-3c8b-7d21-9f4e-5a6b7c8d9e0f"


@dataclass
class Settings:
    """What `MetriportBackend` and `server.start` need; the defaults are a fresh in-memory sandbox."""

    # The x-api-key the Medical API accepts; None = MEDPORT_FAKE_METRIPORT_API_KEY, else a random one at start.
    api_key: str | None = None
    # Seconds between the asynchronous steps (document query progress, webhooks, bulk jobs).
    delay_s: float = 0.3
    # FHIR bundle file or folder of bundles served as the patients' clinical data, beside the seeded sandbox's.
    data_path: str | None = None
    # Keep the state in this SQLite file (persist.py) and pick up where an earlier run stopped; None = in memory.
    state_path: str | None = None
    clock: Callable[[], float] = time.time
    webhook_timeout_s: float = webhooks.DEFAULT_TIMEOUT_S
    ping_timeout_s: float = webhooks.PING_TIMEOUT_S
    # Seed the sandbox's patients (Metriport's sandbox knows a fixed set).
    seed: bool = True
    # One random stream for ids and faults: the same seed gives the same ids.
    rng_seed: int = 0
    facility_id: str = DEFAULT_FACILITY_ID
    cx_id: str | None = None
