"""Start and stop a waitress server in a background thread — one way for both services.

`serve(app, host, port, ...)` binds first (so a busy port is a clear `PortInUse` before anything
starts), serves in a daemon thread and returns a `Served` with its URL and `stop()`. Stopping
closes the listener and every client channel: an idle keep-alive connection would otherwise keep
waitress's loop (and the stop) waiting.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from waitress.server import create_server


def tune_gc_for_serving() -> None:
    """For a process that serves (call once start-up is done): what start-up loaded is moved out of the cyclic
    collector's reach (`gc.freeze`), and young collections run every 20,000 container allocations, not 700.
    A batch import allocates millions of short-lived objects that reference counting frees; with the default
    thresholds the collections (each older one scanning the whole heap) took ~0.14 CPU-s of a 10,000-resource import (~6%)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 20)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def allowed_hosts(bind_host: str = "127.0.0.1", *urls: str | None) -> frozenset[str]:
    """The names a `Host` header may carry (ports aside): loopback, the address bound, the hosts of the URLs the
    server is published under, and `MEDPORT_ALLOWED_HOSTS` (comma-separated: a tunnel's name). A page on another
    origin whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name and is refused. A wildcard bind is
    also reached by the machine's own name."""
    names = set(LOOPBACK_NAMES)
    if bind_host in WILDCARD_HOSTS:
        names.update({socket.gethostname(), socket.getfqdn()})
    else:
        names.add(bind_host)
    names.update(urlsplit(u).hostname or "" for u in urls if u)
    names.update(os.environ.get("MEDPORT_ALLOWED_HOSTS", "").split(","))
    return frozenset(n.strip().strip("[]").rstrip(".").lower() for n in names if n and n.strip())


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's `Host` (name, `name:port`, `[v6]:port`) names this server. No header at all
    (HTTP/1.0, some tools) passes: a browser always sends one."""
    if host_header is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".") in allowed


class PortInUse(OSError):
    """The port is taken; the message says what to do."""


def bind(host: str, port: int, *, what: str = "server", flag: str = "--port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port} for the {what} ({e.strerror}) — something else is running "
            f"there: stop it, or pass {flag} (0 picks a free port)"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def url_of(host: str, port: int) -> str:
    """The base URL clients use for a bound address (a wildcard bind is reached on loopback)."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/"


@dataclass
class Served:
    """A waitress server running in a daemon thread."""

    server: object
    thread: threading.Thread
    url: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def stop(self, timeout: float = 3.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        srv = self.server
        try:
            srv.task_dispatcher.shutdown(cancel_pending=True, timeout=2)  # type: ignore[attr-defined]
        except Exception:
            pass
        for channel in list(getattr(srv, "_map", {}).values()):
            try:
                channel.close()
            except Exception:
                pass
        self.thread.join(timeout=timeout)


def _run(srv) -> None:
    try:
        srv.run()
    except (OSError, ValueError):  # its sockets were closed underneath it by stop()
        pass


def serve(
    app,
    host: str,
    port: int,
    *,
    threads: int,
    name: str,
    sock: socket.socket | None = None,
    what: str = "server",
    flag: str = "--port",
    **waitress_options,
) -> Served:
    """Serve a WSGI app on host:port (0 = a free port) from a daemon thread."""
    sock = sock or bind(host, port, what=what, flag=flag)
    srv = create_server(
        app, sockets=[sock], threads=threads, map={}, ident=name, clear_untrusted_proxy_headers=True, **waitress_options
    )
    thread = threading.Thread(target=_run, args=(srv,), name=name, daemon=True)
    thread.start()
    return Served(srv, thread, url_of(host, sock.getsockname()[1]))


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (a foreground `medport emulate`, `python -m ...`)."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)
