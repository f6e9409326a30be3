"""What the Medplum emulator is started with: `Settings`, and the constants of its seeded Project."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from medport import __version__ as VERSION  # noqa: F401 — reported by /_emulator/health
from medport.defaults import DEFAULT_ADMIN_CLIENT_ID, DEFAULT_ADMIN_CLIENT_SECRET, EMULATOR_BASE_URL

from .releases import NEWEST

PROJECT_ID = "medport-project"
PROJECT_NAME = "medport"
# The newest Medplum release the emulator follows (@medplum/core, @medplum/fhir-router 5.2.13 and the server of
# that line), its default; `Settings.medplum_version` picks another (medport.emulator.medplum.releases).
MEDPLUM_VERSION = NEWEST


@dataclass
class Settings:
    """What `create_app` needs. `db_path=None` (or ":memory:") keeps everything in memory."""

    db_path: str | None = None
    base_url: str = EMULATOR_BASE_URL
    # The Medplum release emulated (its bot sandbox, Bot schema, admin-only types; reported by /healthcheck).
    medplum_version: str = MEDPLUM_VERSION
    admin_client_id: str = field(
        default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_ID", DEFAULT_ADMIN_CLIENT_ID)
    )
    admin_client_secret: str = field(
        default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_SECRET", DEFAULT_ADMIN_CLIENT_SECRET)
    )
    # URL the bots' MedplumClient uses to call back (the internal loopback listener); None = base_url.
    internal_base_url: str | None = None
    # BotRuntime options (size, max_size, hard_cap_s, memory_mb), passed through.
    runtime: dict = field(default_factory=dict)
    # An already built BotRuntime to reuse (tests/benchmarks); None = create one lazily.
    runtime_instance: Any = None
    token_lifetime_s: int = 3600
    max_json_bytes: int = 1024 * 1024
    # Subscriptions: delivery threads, retry backoff base (Medplum backs off for much longer;
    # the emulator keeps the shape but shortens the delays so a laptop run finishes).
    subscription_workers: int = 4
    retry_base_s: float = 0.5
    # Loop guard (beyond Medplum): more than loop_limit self-triggered executions of one
    # subscription on one resource within loop_window_s stops the chain.
    loop_limit: int = 5
    loop_window_s: float = 30.0
    start_background: bool = True
    # Project.features of the seeded Project ("bots" runs bots; "cron" runs Bots with cronString/cronTiming,
    # as Medplum's workers/cron.ts). A real Medplum project needs both enabled by its administrators.
    project_features: tuple = ("bots", "cron")
    # Run cron bots on their schedule (a background thread; needs start_background). The developer API
    # `POST /_emulator/cron/run` runs them at once either way.
    cron: bool = True
    # Readiness: what the emulator waits for before /_emulator/health reports ready, name -> description
    # (`medport emulate` waits for {"bots": ...} and drops the entry from `state.waiting_for` once deployed).
    wait_for: dict = field(default_factory=dict)
    # Names a request's Host header may carry (serving.allowed_hosts); None = loopback only. server.start
    # adds the address bound and the public base URL's host.
    allowed_hosts: frozenset | None = None

    def normalized_base(self) -> str:
        return self.base_url if self.base_url.endswith("/") else self.base_url + "/"
