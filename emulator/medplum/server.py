"""Serving the emulator with waitress: `run_emulator(options)`, `start_in_thread(settings)`, and the
click command `emulate_command` (`medport emulate`).

Deadlock-free design (DESIGN: "a bot calls back into the emulator over HTTP while its own $execute
request is still open"):

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
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import click

from .state import DEFAULT_ADMIN_CLIENT_ID, DEFAULT_ADMIN_CLIENT_SECRET, Settings

log = logging.getLogger("medport.emulator.medplum.server")

DEFAULT_PORT = 8103
DEFAULT_DB = os.path.join(".medport", "emulator.sqlite3")


@dataclass
class EmulatorOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db_path: str | None = DEFAULT_DB  # None = in memory
    admin_client_id: str = field(default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_ID",
                                                                        DEFAULT_ADMIN_CLIENT_ID))
    admin_client_secret: str = field(default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_SECRET",
                                                                            DEFAULT_ADMIN_CLIENT_SECRET))
    public_base_url: str | None = None  # default http://<host>:<port>/
    threads: int = 16
    internal_threads: int = 32
    runtime: dict = field(default_factory=dict)
    # Hooks for the lead: called with the EmulatorHandle once both listeners serve (deploy the
    # generated bots, start the fake Metriport, ...). Extra keys for those hooks ride in `extra`.
    on_ready: list[Callable[["EmulatorHandle"], None]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class EmulatorHandle:
    """A running emulator: `base_url`, `internal_base_url`, `app`, `state`, `stop()`."""

    def __init__(self, app, servers, threads, base_url: str, internal_base_url: str):
        self.app = app
        self.state = app.extensions["medport"]
        self._servers = servers
        self._threads = threads
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

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for srv in self._servers:
            try:
                srv.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
            except Exception:
                pass
            # Close the listener and every client channel: an idle keep-alive connection would
            # otherwise keep waitress's loop (and this stop) waiting.
            for channel in list(getattr(srv, "_map", {}).values()):
                try:
                    channel.close()
                except Exception:
                    pass
        for t in self._threads:
            t.join(timeout=3)
        if self._prewarm is not None:
            self._prewarm.join(timeout=30)
        try:
            self.state.subscriptions.stop()
        except Exception:
            pass
        if self.state.settings.runtime_instance is None and self.state._runtime is not None:
            try:
                self.state._runtime.close()
            except Exception:
                pass
        try:
            self.state.repo.close()
        except Exception:
            pass
        try:
            self.state.runs.close()
        except Exception:
            pass

    def __enter__(self) -> "EmulatorHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PortInUse(OSError):
    pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port} ({e.strerror}) — another emulator or Medplum server may be "
                        f"running there: stop it, or pass --port (0 picks a free port)") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        h = "127.0.0.1"
    return f"http://{h}:{port}/"


def start_in_thread(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 0,
                    threads: int = 16, internal_threads: int = 32,
                    public_base_url: str | None = None, prewarm: bool = True) -> EmulatorHandle:
    """Start the emulator on `host:port` (0 = any free port) plus the internal loopback listener, in
    background threads. Returns once both listen. `settings.base_url` is replaced by the real URL."""
    from waitress.server import create_server

    from .app import create_app

    settings = settings or Settings()
    public_sock = _bind(host, port)
    internal_sock = _bind("127.0.0.1", 0)
    base_url = public_base_url or _url(host, public_sock.getsockname()[1])
    internal_url = _url("127.0.0.1", internal_sock.getsockname()[1])
    settings.base_url = base_url
    settings.internal_base_url = internal_url
    app = create_app(settings)
    servers, thread_list = [], []
    for sock, n, name in ((public_sock, threads, "public"), (internal_sock, internal_threads, "internal")):
        srv = create_server(app, sockets=[sock], threads=n, map={}, ident="medport-emulator",
                            channel_timeout=300, connection_limit=1000, clear_untrusted_proxy_headers=True,
                            max_request_body_size=256 * 1024 * 1024)
        t = threading.Thread(target=_serve, args=(srv,), name=f"medport-emulator-{name}", daemon=True)
        t.start()
        servers.append(srv)
        thread_list.append(t)
    handle = EmulatorHandle(app, servers, thread_list, base_url, internal_url)
    if prewarm and settings.runtime_instance is None:
        # start the Node workers now, off the startup path, so the first $execute is warm
        handle._prewarm = threading.Thread(target=_prewarm, args=(handle.state,), name="medport-prewarm",
                                           daemon=True)
        handle._prewarm.start()
    return handle


def _prewarm(state) -> None:
    try:
        state.runtime
    except Exception:  # node missing etc.: reported on the first execution instead
        log.warning("bot runtime could not start", exc_info=True)


def _serve(srv) -> None:
    try:
        srv.run()
    except (OSError, ValueError):  # closed underneath us on stop()
        pass


def run_emulator(options: EmulatorOptions | None = None, *, block: bool = True,
                 echo: Callable[[str], None] = print) -> EmulatorHandle:
    """Start the emulator (waitress), print its base URL and admin credentials, run the on_ready hooks,
    and (block=True) serve until SIGINT/SIGTERM."""
    options = options or EmulatorOptions()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    settings = Settings(db_path=options.db_path, admin_client_id=options.admin_client_id,
                        admin_client_secret=options.admin_client_secret, runtime=dict(options.runtime))
    handle = start_in_thread(settings, host=options.host, port=options.port, threads=options.threads,
                             internal_threads=options.internal_threads, public_base_url=options.public_base_url)
    storage = options.db_path or "memory"
    echo(f"medport emulator (Medplum) listening on {handle.base_url}")
    echo(f"  FHIR base:     {handle.base_url}fhir/R4/")
    echo(f"  token URL:     {handle.base_url}oauth2/token")
    echo(f"  admin client:  id={handle.admin_client_id} secret={handle.admin_client_secret}")
    echo(f"  project:       {handle.state.project()['id']}")
    echo(f"  storage:       {storage}")
    echo(f"  ready in {time.perf_counter() - t0:.2f} s")
    for hook in [*options.on_ready, *handle.state.on_ready]:
        hook(handle)
    sys.stdout.flush()
    if not block:
        return handle
    stop = threading.Event()

    def _signal(*_a) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    try:
        while not stop.is_set():
            stop.wait(0.5)
    finally:
        handle.stop()
    return handle


# hooks the lead wires (generated bot deployment, fake Metriport): callables taking
# (handle, options) registered here are called by `medport emulate` after the emulator is ready.
EMULATE_HOOKS: list[Callable[[EmulatorHandle, dict], None]] = []


@click.command("emulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port (0 = any free port).")
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
              help="SQLite file holding the FHIR store.")
@click.option("--memory", is_flag=True, help="Keep everything in memory (nothing survives a restart).")
@click.option("--no-deploy", is_flag=True, help="Do not deploy the generated bots on start.")
@click.option("--admin-client-id", default=None, help="Admin ClientApplication id [env MEDPORT_ADMIN_CLIENT_ID].")
@click.option("--admin-client-secret", default=None,
              help="Admin ClientApplication secret [env MEDPORT_ADMIN_CLIENT_SECRET].")
@click.option("--metriport-port", default=8180, show_default=True, type=int, help="Port of the fake Metriport.")
@click.option("--metriport", "metriport_mode", type=click.Choice(["fake", "sandbox"]), default="fake",
              show_default=True, help="Use the fake Metriport or the real sandbox (API key).")
@click.option("--metriport-data", default=None, type=click.Path(), help="Seed data for the fake Metriport.")
def emulate_command(host, port, db_path, memory, no_deploy, admin_client_id, admin_client_secret,
                    metriport_port, metriport_mode, metriport_data) -> None:
    """Run the local Medplum emulator (FHIR store, auth, subscriptions, bots)."""
    options = EmulatorOptions(host=host, port=port, db_path=None if memory else db_path)
    if admin_client_id:
        options.admin_client_id = admin_client_id
    if admin_client_secret:
        options.admin_client_secret = admin_client_secret
    options.extra = {"deploy": not no_deploy, "metriport_port": metriport_port, "metriport": metriport_mode,
                     "metriport_data": metriport_data}
    for hook in EMULATE_HOOKS:
        options.on_ready.append(lambda h, _hook=hook: _hook(h, options.extra))
    try:
        run_emulator(options, echo=click.echo)
    except PortInUse as e:
        raise click.ClickException(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    emulate_command.main(args=argv, prog_name="python -m medport.emulator.medplum.server", standalone_mode=True)


if __name__ == "__main__":
    main()
