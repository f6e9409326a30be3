"""The one retry policy of medport's HTTP clients (the CLI's Medplum client and Metriport client; the bots'
`fetchWithRetry` in templates/_common.js.j2 follows the same rules):

- a request the server certainly did not act on is repeated, whatever its method: the connection was never
  made, or the server answered 429 (rate limited) or 503 (unavailable), after waiting what its `Retry-After` asks;
- a request the server may have acted on (5xx other than 503, a timeout or a connection lost after sending) is
  repeated only when repeating it cannot do a thing twice: GET, HEAD, OPTIONS, PUT, DELETE, a conditional create
  (`If-None-Exist`), a request with an `Idempotency-Key`, or one the caller marks idempotent;
- bounded: `attempts` in all, and a `Retry-After` longer than `max_wait_s` is not waited out (the error says
  when to try again).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
NOT_ACTED_STATUSES = frozenset({429, 503})  # the server says: not done, come back later
MAYBE_ACTED_STATUSES = frozenset({500, 502, 504})  # it may have done it before failing


def is_idempotent(method: str, headers: Mapping[str, str] | None = None, marked: bool | None = None) -> bool:
    if marked is not None:
        return marked
    names = {k.lower() for k in (headers or {})}
    return method.upper() in IDEMPOTENT_METHODS or "if-none-exist" in names or "idempotency-key" in names


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def never_sent(error: BaseException) -> bool:
    """A connection error raised before the request went out (refused, DNS, connect timeout)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(error, requests.ConnectionError):
        return False
    text = repr(error)
    return any(
        s in text
        for s in (
            "NewConnectionError",
            "NameResolutionError",
            "Connection refused",
            "Failed to establish a new connection",
        )
    )


class WaitTooLong(Exception):
    """The server asked to wait longer than the policy allows (`seconds`)."""

    def __init__(self, seconds: float):
        super().__init__(f"the server asks to wait {seconds:.0f} s (Retry-After)")
        self.seconds = seconds


@dataclass
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 120.0
    sleep: Callable[[float], None] = time.sleep

    def delay(
        self, attempt: int, idempotent: bool, resp: requests.Response | None = None, error: BaseException | None = None
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None: do not repeat (return or raise what came).
        Raises WaitTooLong when a Retry-After exceeds `max_wait_s`."""
        if attempt >= self.attempts:
            return None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        if error is not None:
            return backoff if idempotent or never_sent(error) else None
        if resp is None:
            return None
        if resp.status_code in NOT_ACTED_STATUSES:
            asked = retry_after_s(resp.headers.get("Retry-After"))
            if asked is not None and asked > self.max_wait_s:
                raise WaitTooLong(asked)
            return max(backoff, asked or 0.0)
        if resp.status_code in MAYBE_ACTED_STATUSES and idempotent:
            return backoff
        return None


def maybe_applied_hint(method: str) -> str:
    return (
        f"the server may have done it before failing, and a {method} is not repeated (it is not idempotent): "
        "check, then run the command again"
    )
