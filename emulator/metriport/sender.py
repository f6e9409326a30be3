"""The fake's webhook sender: the customer's webhook settings, the delivery log, one sender thread.

Like Metriport: messages go out one at a time in the order they were sent, signed with the
webhook key (`webhooks.py`); a failed delivery disables the webhook, and while it is disabled
new messages are recorded as failed, not sent, until `retry()` re-queues them. Saving a URL
sends a ping that must be answered with the pong. `post` is injectable (tests need no HTTP).
"""

from __future__ import annotations

import dataclasses
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import webhooks
from .faults import Faults
from .models import Delivery, WebhookSettings, iso

DISABLED_DETAIL = "Webhook disabled: retry with POST /settings/webhook/retry"
MISSING_CONFIG = "Missing webhook config"
Post = Callable[[str, str, str, float], tuple[bool, int | None, str, Any]]  # webhooks.post


class WebhookSender:
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        faults: Faults,
        clock: Callable[[], float],
        timeout_s: float = webhooks.DEFAULT_TIMEOUT_S,
        ping_timeout_s: float = webhooks.PING_TIMEOUT_S,
        post: Post = webhooks.post,
        name: str = "fake-metriport-webhooks",
    ):
        self.settings = settings
        self.deliveries: list[Delivery] = []
        self._faults = faults  # reads bad_signatures and duplicate_deliveries at send time
        self._clock = clock
        self._timeout_s = timeout_s  # a message: 5 s, as Metriport
        self._ping_timeout_s = ping_timeout_s  # the settings ping: 2 s
        self._post = post
        self._lock = threading.Condition()
        self._outbox: queue.Queue[Delivery | None] = queue.Queue()
        self._in_flight = 0  # queued or being delivered
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        # persistence hook (persist.py): called after a delivery (or, with None, the settings) changed
        self.on_change: Callable[[Delivery | None], None] | None = None

    def _changed(self, d: Delivery | None) -> None:
        if self.on_change:
            try:
                self.on_change(d)
            except Exception:  # never break a delivery for the log's sake
                pass

    def settings_record(self) -> dict:
        """The settings as stored, copied under the lock deliveries change them with."""
        with self._lock:
            return dataclasses.asdict(self.settings)

    def load(self, settings: WebhookSettings, deliveries: list[Delivery]) -> int:
        """Restore what an earlier run stored; messages it had not delivered yet are queued again (in order).
        Returns how many."""
        with self._lock:
            self.settings = settings
            self.deliveries = list(deliveries)
            waiting = [d for d in self.deliveries if d.status == "processing" and d.type != "ping"]
            for d in waiting:
                self._enqueue(d)
            return len(waiting)

    # ------------------------------------------------------------------ settings
    def configure(
        self, url: str | None, key: str | None = None, *, enabled: bool = True, testing: bool = False
    ) -> dict:
        """Save the webhook URL (None clears the settings); `key` None keeps the current key or makes one.
        `testing`: disabled with "Testing webhook..." until a ping is answered."""
        with self._lock:
            s = self.settings
            if not url:
                s.webhook_url, s.webhook_key, s.webhook_enabled, s.webhook_status_detail = None, None, False, None
            else:
                s.webhook_url = url
                s.webhook_key = key or s.webhook_key or secrets.token_hex(16)
                if testing:
                    s.webhook_enabled, s.webhook_status_detail = False, "Testing webhook..."
                else:
                    s.webhook_enabled, s.webhook_status_detail = enabled, "OK" if enabled else None
            out = s.to_dict()
        self._changed(None)
        return out

    def set_mr_filters(self, filters: list) -> None:
        with self._lock:
            self.settings.mr_filters = filters

    def settings_dict(self) -> dict:
        with self._lock:
            return self.settings.to_dict()

    def status(self) -> dict:
        """`GET /settings/webhook`."""
        with self._lock:
            return {
                "webhookEnabled": self.settings.webhook_enabled,
                "webhookStatusDetail": self.settings.webhook_status_detail,
                "webhookRequestsProcessing": sum(1 for d in self.deliveries if d.status == "processing"),
                "webhookRequestsFailed": sum(1 for d in self.deliveries if d.status == "failure"),
            }

    def log(self, include_body: bool = True) -> list[dict]:
        with self._lock:
            return [d.to_dict(include_body) for d in self.deliveries]

    def reset(self, settings: WebhookSettings) -> None:
        """Forget the settings, the log and the messages waiting to be sent (one already being sent finishes)."""
        with self._lock:
            self.settings = settings
            self.deliveries = []
            while True:
                try:
                    d = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if d is None:  # the stop signal stays
                    self._outbox.put(None)
                    break
                self._in_flight -= 1
            self._lock.notify_all()

    # ------------------------------------------------------------------ messages
    def send(self, type_: str, payload: dict, metadata: dict | None, request_id: str | None = None) -> Delivery:
        """Record a message and queue it (or record it failed while the webhook is missing or disabled)."""
        with self._lock:
            when = iso(self._clock())
            mid = str(uuid.uuid4())
            body = webhooks.build_body(
                {"messageId": mid, "requestId": request_id, "when": when, "type": type_, "data": metadata}, payload
            )
            d = Delivery(message_id=mid, type=type_, body=body, when=when, request_id=request_id)
            self.deliveries.append(d)
            s = self.settings
            if not s.webhook_url or not s.webhook_key:
                d.status, d.detail = "failure", MISSING_CONFIG
            elif not s.webhook_enabled:
                d.status, d.detail = "failure", DISABLED_DETAIL
            else:
                self._enqueue(d)
        self._changed(d)
        return d

    def retry(self) -> int:
        """Re-queue the failed messages in order; a success re-enables the webhook."""
        with self._lock:
            failed = [d for d in self.deliveries if d.status == "failure"]
            for d in failed:
                d.status = "processing"
                self._enqueue(d)
        for d in failed:
            self._changed(d)
        return len(failed)

    def ping(self) -> None:
        """Send the settings ping now (blocking: runs on the scheduler); enable the webhook on the pong."""
        with self._lock:
            url, key = self.settings.webhook_url, self.settings.webhook_key
        if not url or not key:
            return
        pong = secrets.token_urlsafe(12)
        message_id = str(uuid.uuid4())
        body = webhooks.build_ping_body(pong, message_id, iso(self._clock()))
        sig = self._sign(key, body)
        ok, status, detail, data, elapsed_ms = self._timed_post(url, body, sig, self._ping_timeout_s)
        with self._lock:
            if self.settings.webhook_url != url:  # the URL changed meanwhile: this answer is stale
                return
            good = ok and isinstance(data, dict) and data.get("pong") == pong
            self.settings.webhook_enabled = good
            self.settings.webhook_status_detail = "OK" if good else (detail if not ok else "Invalid pong response")
            ping_d = Delivery(
                message_id=message_id,
                type="ping",
                body=body,
                when=iso(self._clock()),
                status="success" if good else "ping-failed",
                attempts=1,
                http_status=status,
                detail=self.settings.webhook_status_detail,
                url=url,
                signature=sig,
                response=data,
                duration_ms=elapsed_ms,
            )
            self.deliveries.append(ping_d)
        self._changed(None)
        self._changed(ping_d)

    # ------------------------------------------------------------------ lifecycle
    def idle(self) -> bool:
        with self._lock:
            return self._in_flight == 0

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout=max(0.0, timeout))

    def close(self) -> None:
        self._outbox.put(None)

    # ------------------------------------------------------------------ the sender thread
    def _enqueue(self, d: Delivery) -> None:
        self._in_flight += 1
        self._outbox.put(d)

    def _sign(self, key: str, body: str) -> str:
        return webhooks.sign("not-the-key" if self._faults["bad_signatures"] else key, body)

    def _timed_post(self, url: str, body: str, sig: str, timeout_s: float | None = None) -> tuple:
        """POST a signed message (timeout: a message's 5 s unless given); (ok, status, detail, data, ms the
        receiver took to answer)."""
        t0 = time.perf_counter()
        ok, status, detail, data = self._post(url, body, sig, self._timeout_s if timeout_s is None else timeout_s)
        return ok, status, detail, data, round((time.perf_counter() - t0) * 1000, 1)

    def _post_at_once(self, url: str, body: str, sig: str, times: int) -> list[tuple]:
        """POST the same signed body `times` times at the same moment; the results in start order."""
        barrier = threading.Barrier(times)
        results: list[tuple] = [()] * times

        def one(i: int) -> None:
            try:
                barrier.wait(10)
            except threading.BrokenBarrierError:
                pass
            results[i] = self._timed_post(url, body, sig)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self._timeout_s + 15)
        return [r if r else (False, None, "no answer", None, None) for r in results]

    def redeliver(self, message_id: str, times: int = 2) -> list[dict]:
        """Send a logged message again, `times` copies at the same moment, signed with the current key (the
        log keeps the first delivery's record). Returns each copy's answer. Raises KeyError for an unknown
        message id, LookupError when no webhook is configured."""
        with self._lock:
            d = next((x for x in self.deliveries if x.message_id == message_id and x.type != "ping"), None)
            url, key = self.settings.webhook_url, self.settings.webhook_key
        if d is None:
            raise KeyError(message_id)
        if not url or not key:
            raise LookupError(MISSING_CONFIG)
        sig = self._sign(key, d.body)
        return [
            {"ok": ok, "httpStatus": status, "detail": detail, "response": data, "durationMs": ms}
            for ok, status, detail, data, ms in self._post_at_once(url, d.body, sig, max(1, int(times)))
        ]

    def _loop(self) -> None:
        while (d := self._outbox.get()) is not None:
            try:
                self._deliver(d)
            except Exception as exc:  # never kill the sender
                with self._lock:
                    d.status, d.detail = "failure", f"Internal error: {type(exc).__name__}"
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._lock.notify_all()

    def _deliver(self, d: Delivery) -> None:
        with self._lock:
            url, key = self.settings.webhook_url, self.settings.webhook_key
        if not url or not key:
            with self._lock:
                d.status, d.detail = "failure", MISSING_CONFIG
            return
        sig = self._sign(key, d.body)
        copies = int(self._faults["simultaneous_deliveries"] or 0)
        if copies > 1:
            # the same message sent several times at the same moment (a retry racing the first send)
            results = self._post_at_once(url, d.body, sig, copies)
            ok, status, detail, data, elapsed_ms = next((r for r in results if r[0]), results[0])
        else:
            ok, status, detail, data, elapsed_ms = self._timed_post(url, d.body, sig)
        if ok and self._faults["duplicate_deliveries"]:
            self._post(url, d.body, sig, self._timeout_s)
        with self._lock:
            d.attempts += 1
            d.duration_ms = elapsed_ms
            d.url, d.signature, d.http_status, d.detail, d.response = url, sig, status, detail, data
            if ok:
                d.status = "success"
                if not self.settings.webhook_enabled:
                    self.settings.webhook_enabled, self.settings.webhook_status_detail = True, "OK"
            else:
                d.status = "failure"
                self.settings.webhook_enabled, self.settings.webhook_status_detail = False, detail
            # a reset while it was on the wire forgot it: it must not come back from the store after a restart
            kept = any(x is d for x in self.deliveries)
        if kept:
            self._changed(None)
            self._changed(d)
