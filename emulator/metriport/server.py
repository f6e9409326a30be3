"""Start the fake Metriport sandbox (waitress, in a background thread or in the foreground).

fake = start(Settings(api_key="..."), port=8180)   # started
fake.base_url, fake.state.seeded_facility_id, fake.api_key
fake.state.set_webhook(url, key)          # configure without the ping
fake.close()                              # or: with start(...) as fake:
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from flask import Flask

from medport.defaults import FAKE_METRIPORT_PORT

from ..serving import Served, allowed_hosts, serve
from .app import create_app
from .backend import MetriportBackend
from .settings import Settings

DEFAULT_PORT = FAKE_METRIPORT_PORT


@dataclass
class FakeMetriport:
    state: MetriportBackend
    app: Flask
    api_key: str
    base_url: str
    _served: Served

    @property
    def facility_id(self) -> str:
        return self.state.seeded_facility_id

    def close(self) -> None:
        self._served.stop()
        self.state.close()

    def __enter__(self) -> FakeMetriport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    public_base_url: str | None = None,
    threads: int = 8,
) -> FakeMetriport:
    """Create the fake (port 0 = a free port) and start serving it in a daemon thread."""
    settings = settings or Settings()
    api_key = settings.api_key or os.environ.get("MEDPORT_FAKE_METRIPORT_API_KEY") or secrets.token_hex(16)
    state = MetriportBackend(settings)
    app = create_app(state, api_key=api_key, hosts=allowed_hosts(host, public_base_url))
    served = serve(
        app, host, port, threads=threads, name="fake-metriport", what="fake Metriport", flag="--metriport-port"
    )
    base = (public_base_url or served.url).rstrip("/")
    state.public_base_url = base
    state.describe_owner(port=served.port, base_url=base)
    return FakeMetriport(state, app, api_key, base, served)
