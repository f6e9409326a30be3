"""Fault injection and rate limits of the fake Metriport (plain Python, thread-safe).

`Faults` holds the developer-set fault switches (`/_fake/faults`), validates changes and
injects API failures (`maybe_fail`); `RateLimiter` enforces Metriport's per-minute limits on
the injectable clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from typing import Any

from .errors import DevError, ServerError, ServiceUnavailable, TooManyRequests

DEFAULTS: dict[str, Any] = {
    "rate_limiting": True,  # enforce per-minute limits (429)
    "error_rate": 0.0,  # probability of a 500 on /medical/v1 routes
    "slow_ms": 0,  # added latency on every API response
    "duplicate_deliveries": False,  # every webhook message delivered twice
    "simultaneous_deliveries": 0,  # every webhook message delivered N times at the same moment (0/1 = once)
    "expired_urls": False,  # presigned URLs are born expired
    "expire_next_consolidated": 0,  # the next N consolidated results get expired URLs (deterministic)
    "bad_signatures": False,  # webhook messages signed with a wrong key
    "fail_next": 0,  # the next N /medical/v1 calls fail with fail_status (deterministic)
    "fail_status": 500,  # 500, 503 or 429 (429 carries Retry-After: 1)
    "expire_next_upload": 0,  # the next N bulk patient create upload URLs are born expired (deterministic)
    # bulk patient create: every patient created goes through the sandbox's document query (its
    # medical.document-download, and for the seed names medical.document-conversion) before the job completes,
    # as Metriport's sandbox does (external/commonwell/document/document-query-sandbox.ts); off: created only
    "bulk_document_queries": True,
    # network query sources (hie, pharmacy, lab): off = the source fails to start ("... is not enabled for this
    # account"); sandbox_network_sources = pharmacy and lab fail as in Metriport's sandbox ("... is not supported in
    # sandbox mode"). The fake answers as an account with all three enabled.
    "hie_source_enabled": True,
    "pharmacy_source_enabled": True,
    "lab_source_enabled": True,
    "sandbox_network_sources": False,
}
FAIL_STATUSES = (429, 500, 503)
MAX_SLOW_MS = 60_000  # one minute of added latency at most
MAX_COUNT = 1_000_000  # fail_next / expire_next_consolidated
# Metriport's per-operation limits per minute (@metriport/shared domain/rate-limiting defaultOperationLimits)
RATE_LIMITS = {"patient": 15, "document_query": 20, "consolidated": 120}
# errorMessageByOperation: the plain-text 429 body of each
RATE_LIMIT_MESSAGES = {
    "patient": "Too many patient creates or updates, please try again later.",
    "document_query": "Too many patient document query starts, please try again later.",
    "consolidated": "Too many patient consolidated data query starts, please try again later.",
}
WINDOW_S = 60


def _problem(name: str, value: Any) -> str | None:
    default = DEFAULTS[name]
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{name}: Expected boolean"
    # an int of any size is finite (math.isfinite of a 400-digit int raises OverflowError)
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or (isinstance(value, float) and not math.isfinite(value))
        or value < 0
    ):
        return f"{name}: Expected a non-negative number"
    if name == "error_rate" and value > 1:
        return "error_rate: must be between 0 and 1"
    if name == "simultaneous_deliveries" and (not isinstance(value, int) or value > 20):
        return "simultaneous_deliveries: must be an integer from 0 to 20"
    if name == "slow_ms" and value > MAX_SLOW_MS:
        return f"slow_ms: must be at most {MAX_SLOW_MS}"
    if name in ("fail_next", "expire_next_consolidated", "expire_next_upload") and (
        value != int(value) or value > MAX_COUNT
    ):
        return f"{name}: must be a whole number up to {MAX_COUNT}"
    if name == "fail_status" and value not in FAIL_STATUSES:
        return "fail_status: must be 429, 500 or 503"
    return None


class Faults:
    """The fault switches; `faults["name"]` reads one."""

    def __init__(self, rng: random.Random | None = None):
        self._lock = threading.Lock()
        self._rng = rng or random.Random(0)
        self._values = dict(DEFAULTS)

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values = dict(DEFAULTS)

    def set(self, **changes: Any) -> dict:
        """Apply all changes, or none: any unknown or invalid one raises `DevError` naming every problem."""
        problems = [f"{k}: unknown fault" for k in changes if k not in DEFAULTS]
        problems += [p for k, v in changes.items() if k in DEFAULTS and (p := _problem(k, v))]
        if problems:
            raise DevError(problems)
        with self._lock:
            for name, value in changes.items():
                self._values[name] = (
                    int(value)
                    if name in ("fail_next", "expire_next_consolidated", "expire_next_upload", "fail_status")
                    else value
                )
            return dict(self._values)

    def take(self, counter: str) -> bool:
        """Consume one unit of a countdown fault (`fail_next`, `expire_next_consolidated`)."""
        with self._lock:
            if self._values[counter] > 0:
                self._values[counter] -= 1
                return True
            return False

    def maybe_fail(self) -> None:
        """Fault injection for API calls: the next `fail_next` calls, then random 5xx at `error_rate`."""
        with self._lock:
            forced = self._values["fail_next"] > 0
            if forced:
                self._values["fail_next"] -= 1
            status = int(self._values["fail_status"])
            rate = self._values["error_rate"]
            hit = rate > 0 and self._rng.random() < rate
        if forced and status == 429:
            raise TooManyRequests("Too many requests, please try again later.", headers={"Retry-After": "1"})
        if forced and status == 503:
            raise ServiceUnavailable()
        if forced or hit:
            raise ServerError()


class RateLimiter:
    """Sliding one-minute windows per bucket (`RATE_LIMITS`), on `clock` (seconds)."""

    def __init__(self, clock: Callable[[], float], limits: dict[str, int] | None = None):
        self._clock = clock
        self.limits = dict(limits or RATE_LIMITS)
        self.window_s = WINDOW_S
        self._lock = threading.Lock()
        self._hits: dict[str, list[float]] = {k: [] for k in self.limits}

    def reset(self) -> None:
        """Forget every call counted: the minute has passed for every bucket."""
        with self._lock:
            self._hits = {k: [] for k in self.limits}

    def set_limits(self, limits: dict[str, int], window_s: int | None = None) -> None:
        with self._lock:
            self.limits.update(limits)
            if window_s is not None:
                self.window_s = window_s

    def snapshot(self) -> dict:
        """Per bucket: its limit per minute and the calls counted in the current window."""
        with self._lock:
            now = self._clock()
            return {
                k: {"limit": self.limits[k], "used": sum(1 for t in self._hits[k] if now - t < self.window_s)}
                for k in self.limits
            } | {"windowSeconds": self.window_s}

    def check(self, bucket: str, *, enforce: bool = True) -> None:
        """Count one call; over the limit raise 429 with Retry-After (unless not enforced: then only count)."""
        with self._lock:
            now = self._clock()
            window = self.window_s
            hits = [t for t in self._hits[bucket] if now - t < window]
            self._hits[bucket] = hits
            if enforce and len(hits) >= self.limits[bucket]:
                retry = max(1, int(window - (now - hits[0])) + 1)
                limit = self.limits[bucket]
                raise TooManyRequests(
                    RATE_LIMIT_MESSAGES.get(bucket, "Too many requests, please try again later."),
                    headers={
                        "Retry-After": str(retry),
                        "RateLimit-Policy": f"{limit};w={window}",
                        "RateLimit-Limit": str(limit),
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(retry),
                    },
                )
            hits.append(now)
