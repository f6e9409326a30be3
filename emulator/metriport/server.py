"""Start the fake Metriport sandbox (waitress, in a background thread or in the foreground).

    fake = make_server(host="127.0.0.1", port=8180, api_key="...")   # started
    fake.base_url, fake.state.seeded_facility_id, fake.api_key
    fake.state.set_webhook(url, key)          # configure without the ping
    fake.close()
"""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass

from flask import Flask

from .api import create_app
from .state import MetriportState

DEFAULT_PORT = 8180


@dataclass
class FakeMetriport:
    state: MetriportState
    app: Flask
    api_key: str
    base_url: str
    _server: object
    _thread: threading.Thread | None

    @property
    def facility_id(self) -> str:
        return self.state.seeded_facility_id

    def close(self) -> None:
        server = self._server
        server.close()  # type: ignore[attr-defined]
        for channel in list(getattr(server, "_map", {}).values()):  # keep-alive connections keep the loop alive
            try:
                channel.close()
            except Exception:
                pass
        try:
            server.task_dispatcher.shutdown()  # type: ignore[attr-defined]
        except Exception:
            pass
        self.state.close()
        if self._thread:
            self._thread.join(timeout=2)


def _serve(server) -> None:
    try:
        server.run()
    except (OSError, ValueError):  # its sockets were closed underneath it by close()
        pass


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, api_key: str | None = None,
                state: MetriportState | None = None, public_base_url: str | None = None,
                data_path: str | None = None, delay_s: float = 0.3, threads: int = 8,
                background: bool = True, **state_kwargs) -> FakeMetriport:
    """Create the fake (port 0 = a free port) and start serving it in a daemon thread."""
    from waitress.server import create_server

    api_key = api_key or os.environ.get("MEDPORT_FAKE_METRIPORT_API_KEY") or secrets.token_hex(16)
    if state is None:
        state = MetriportState(delay_s=delay_s, data_path=data_path, **state_kwargs)
    app = create_app(state, api_key=api_key)
    server = create_server(app, host=host, port=port, threads=threads, ident="fake-metriport")
    real_port = server.effective_port  # type: ignore[attr-defined]
    base = (public_base_url or f"http://{host}:{real_port}").rstrip("/")
    state.public_base_url = base
    thread = None
    if background:
        thread = threading.Thread(target=_serve, args=(server,), name="fake-metriport-http", daemon=True)
        thread.start()
    return FakeMetriport(state, app, api_key, base, server, thread)
