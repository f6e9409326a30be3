"""The console's security rules, in plain Python (the Flask app applies them):

- `safe_next`: a redirect after sign-in stays on the console's origin — a path, normalised the way a browser
  reads it (tabs and newlines dropped, backslashes as slashes), never `//host` or a scheme.
- `Sessions`: server-side sessions. A session cookie names a session id that must be live here; signing out
  revokes it, so a copied cookie stops working at logout (and after `SESSION_IDLE_S` without use).
- `Throttle`: sign-in attempts per client address — after `FREE_FAILURES` failures, each further attempt waits
  twice as long as the one before (capped), until a success.
- `host_allowed`: the Host header names this console (127.0.0.1, localhost, [::1], the bound interface — a
  wildcard: the machine's names —, names given with --allowed-host or MEDPORT_ALLOWED_HOSTS), as the emulator's
  check: a page on another origin that resolves to 127.0.0.1 (DNS rebinding) is refused.
- `SECURITY_HEADERS`: CSP (scripts and styles from the console only, no framing, forms post to it only),
  X-Frame-Options, no caching of pages that show the integration's records, no referrer (URLs hold ids).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

FREE_FAILURES = 5
MAX_WAIT_S = 300.0
FORGET_AFTER_S = 900.0  # failures older than this are forgotten
SESSION_IDLE_S = 12 * 3600.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "[::]", "")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def safe_next(target: str | None, default: str) -> str:
    """`target` if it is a path on this site, else `default`. Browsers drop tabs and newlines from URLs and read
    `\\` as `/`, so `/%09/evil.example` and `/\\evil.example` are `//evil.example` to them: normalised first."""
    if not target:
        return default
    t = "".join(ch for ch in target if ch not in "\t\n\r").replace("\\", "/")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in t):
        return default
    parts = urlsplit(t)
    if parts.scheme or parts.netloc or not t.startswith("/") or t.startswith("//"):
        return default
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Sessions:
    """Live session ids; a cookie that names no live session is refused."""

    def __init__(self, idle_s: float = SESSION_IDLE_S):
        self.idle_s = idle_s
        self._live: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self) -> str:
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._live[sid] = time.monotonic()
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        now = time.monotonic()
        with self._lock:
            seen = self._live.get(sid)
            if seen is None or now - seen > self.idle_s:
                self._live.pop(sid, None)
                return False
            self._live[sid] = now
            return True

    def revoke(self, sid: str | None) -> None:
        with self._lock:
            self._live.pop(sid or "", None)


class Throttle:
    """Failed sign-ins per client: the first FREE_FAILURES are free, then each attempt must wait 1 s, 2 s, 4 s ...
    (at most MAX_WAIT_S) after the last failure."""

    def __init__(self, free: int = FREE_FAILURES, max_wait_s: float = MAX_WAIT_S, clock=time.monotonic):
        self.free, self.max_wait_s, self.clock = free, max_wait_s, clock
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, who: str) -> float:
        """Seconds `who` must wait before another attempt is even checked (0: go ahead)."""
        with self._lock:
            n, last = self._failures.get(who, (0, 0.0))
            now = self.clock()
            if n and now - last > FORGET_AFTER_S:
                del self._failures[who]
                return 0.0
            if n < self.free:
                return 0.0
            delay = min(self.max_wait_s, 2.0 ** (n - self.free))
            return max(0.0, last + delay - now)

    def failed(self, who: str) -> None:
        with self._lock:
            n, _ = self._failures.get(who, (0, 0.0))
            self._failures[who] = (n + 1, self.clock())

    def succeeded(self, who: str) -> None:
        with self._lock:
            self._failures.pop(who, None)


def host_name(host_header: str) -> str:
    """The name part of a Host header (`[::1]:8104` → `::1`, `Localhost.:80` → `localhost`)."""
    h = (host_header or "").strip().lower()
    if h.startswith("["):
        name = h[1 : h.find("]")] if "]" in h else ""
    else:
        name = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    return name.rstrip(".")


def allowed_hosts(bind_host: str, extra: tuple = ()) -> frozenset:
    """The names the Host header may carry, as the emulator's check has them: loopback, the address bound (a
    wildcard bind: the machine's own names), `--allowed-host` names and `MEDPORT_ALLOWED_HOSTS` (comma-separated)."""
    names = set(LOOPBACK_NAMES)
    b = (bind_host or "").strip().lower()
    if b in WILDCARDS:
        names.update({socket.gethostname(), socket.getfqdn()})
    else:
        names.add(b)
    names.update(extra)
    names.update(os.environ.get("MEDPORT_ALLOWED_HOSTS", "").split(","))
    return frozenset(n.strip().strip("[]").rstrip(".").lower() for n in names if n and n.strip())


def host_allowed(host_header: str | None, allowed: frozenset) -> bool:
    """No Host header at all (HTTP/1.0, some tools) passes: a browser always sends one."""
    return host_header is None or host_name(host_header) in allowed


def binds_everything(host: str) -> bool:
    return (host or "").strip().lower() in WILDCARDS
