"""Serving the emulator with waitress: `start(settings) -> EmulatorHandle` (`close()` it, or `with start(...)`).
(`medport emulate` is the user's command, in medport.generator.local.emulate; `python -m medport.emulator.medplum`
runs the emulator alone.)

Deadlock-free: a bot calls back into the emulator over HTTP while its own $execute request is still open, so
the callbacks have listeners of their own:

    public listener   host:port       waitress, own thread pool (`threads`, default 16)
    internal listener 127.0.0.1:<any> waitress, own thread pool (`internal_threads`, default 32)
    bot runtime       warm Node workers, grows to max_size (default 8), queues beyond

The same Flask app serves both listeners. Clients (CLI, SDK, Metriport webhooks) use the public one;
every bot's MedplumClient is pointed at the internal one (ExecRequest.base_url). A `$execute` holds a
public thread while its bot runs, but the bot's callbacks are served by the internal pool, which
executions arriving from outside can never occupy; so however many public threads are held by
executions, callbacks still get served. Subscription-triggered executions run on their own delivery
threads (subscriptions.py) and call back through the internal pool too. The remaining cycle —
a bot that `$execute`s another bot through the internal listener while every runtime worker is busy —
is bounded: the runtime grows to max_size, and its per-execution hard cap ends any wait, so the
emulator always makes progress (a request can time out, the server never hangs).
"""

from __future__ import annotations

import logging
import os
import threading

from medport.defaults import EMULATOR_PORT

from ..serving import Served, allowed_hosts, bind, serve, url_of
from .app import create_app
from .settings import Settings

log = logging.getLogger("medport.emulator.medplum.server")

DEFAULT_PORT = EMULATOR_PORT
DEFAULT_DB = os.path.join(".medport", "emulator.sqlite3")


class EmulatorHandle:
    """A running emulator: `base_url`, `internal_base_url`, `app`, `state`, `close()`; a context manager."""

    def __init__(self, app, served: list[Served], base_url: str, internal_base_url: str):
        self.app = app
        self.state = app.extensions["medport"]
        self._served = served
        self.base_url = base_url
        self.internal_base_url = internal_base_url
        self._stopped = False
        self._prewarm: threading.Thread | None = None
        self.admin_client_id = self.state.settings.admin_client_id
        self.admin_client_secret = self.state.settings.admin_client_secret

    @property
    def port(self) -> int:
        return int(self.base_url.rstrip("/").rsplit(":", 1)[1])

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self.state.subscriptions.wait_idle(timeout)

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for served in self._served:
            served.stop()
        if self._prewarm is not None:
            self._prewarm.join(timeout=30)
        self.state.close()

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 16,
    internal_threads: int = 32,
    public_base_url: str | None = None,
    prewarm: bool = True,
) -> EmulatorHandle:
    """Start the emulator on `host:port` (0 = any free port) plus the internal loopback listener, in
    background threads. Returns once both listen. `settings.base_url` is replaced by the real URL."""
    settings = settings or Settings()
    public_sock = bind(host, port, what="Medplum emulator")
    internal_sock = bind("127.0.0.1", 0, what="Medplum emulator (internal)")
    base_url = public_base_url or url_of(host, public_sock.getsockname()[1])
    internal_url = url_of("127.0.0.1", internal_sock.getsockname()[1])
    settings.base_url = base_url
    settings.internal_base_url = internal_url
    settings.allowed_hosts = (settings.allowed_hosts or frozenset()) | allowed_hosts(host, base_url)
    try:
        app = create_app(settings)  # opens (and locks) the database
    except BaseException:
        public_sock.close()
        internal_sock.close()
        raise
    served = [
        serve(
            app,
            "127.0.0.1" if sock is internal_sock else host,
            0,
            sock=sock,
            threads=n,
            name=f"medport-emulator-{name}",
            channel_timeout=300,
            connection_limit=1000,
            max_request_body_size=256 * 1024 * 1024,
        )
        for sock, n, name in ((public_sock, threads, "public"), (internal_sock, internal_threads, "internal"))
    ]
    handle = EmulatorHandle(app, served, base_url, internal_url)
    if handle.state.repo.lock is not None:  # a second emulator on this database is told where this one is
        handle.state.repo.lock.describe(port=handle.port, base_url=base_url)
    if prewarm and settings.runtime_instance is None:
        # start the Node workers now, off the startup path, so the first $execute is warm
        handle._prewarm = threading.Thread(target=_prewarm, args=(handle.state,), name="medport-prewarm", daemon=True)
        handle._prewarm.start()
    return handle


def _prewarm(state) -> None:
    try:
        _ = state.runtime  # starting it is the point: the property starts the runtime on first use
    except Exception:  # node missing etc.: reported on the first execution instead
        log.warning("bot runtime could not start", exc_info=True)
