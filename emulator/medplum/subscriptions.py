"""FHIR Subscriptions: repository listener → queue → background threads (never inside the write).

Facts from Medplum (@medplum/core subscriptions/index.ts `resourceMatchesSubscriptionCriteria`,
`isFhirCriteriaMet`; packages/server/src/workers/subscription.ts):
- only `status: active` rest-hook subscriptions with an endpoint;
- matching order: resource type of the criteria → FHIRPath criteria extension
  `https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression` (valueString,
  evaluated on [current] with `%current` and `%previous` (`{}` when none); must yield `true`) →
  `https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction` extensions
  (valueCode create/update/delete; none = all) → the criteria's search parameters;
- AuditEvents never trigger subscriptions; no-op updates never reach here (the store emits nothing);
- endpoint `Bot/<id>`: the bot runs with input = the resource, or `{deletedResource}` on delete,
  contentType application/fhir+json, headers X-Medplum-Subscription / X-Medplum-Interaction; a
  failed bot is recorded (AuditEvent) and not retried;
- http(s) endpoint: POST the resource JSON (`{}` on delete) with Content-Type application/fhir+json,
  X-Medplum-Subscription, X-Medplum-Interaction, channel.header entries, and `X-Signature` = hex
  HMAC-SHA256 of the body keyed with the
  `https://www.medplum.com/fhir/StructureDefinition/subscription-secret` extension (valueString);
  a thrown delivery / non-2xx is retried up to `subscription-max-attempts` (valueInteger, default 4
  attempts) with exponential backoff, and dropped when the resource version is no longer current.

Beyond Medplum: a bot that keeps re-triggering itself through one subscription on one resource
(more than `loop_limit` executions within `loop_window_s` where the triggering version was written by
that same bot) is stopped: the execution is not run, its AuditEvent (outcome 4) and its
`/_emulator/runs` record carry a "subscription loop" message.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from .bots import BotService
from .fhir.search import matches as search_matches
from .fhir.system import SystemFhir
from .projects import Projects
from .runtime.lazy import LazyRuntime
from .settings import Settings

log = logging.getLogger("medport.emulator.medplum.subscriptions")

FHIRPATH_CRITERIA_URL = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression"
INTERACTION_URL = "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"


def supports_interaction(sub: dict, interaction: str, *, first_only: bool = False) -> bool:
    """@medplum/core 5.2.13 src/subscriptions/index.ts resourceMatchesSubscriptionCriteria: with one or more
    `subscription-supported-interaction` extensions the interaction must be one of them (ANY of them — medplum
    PR #9854); with none, create, update and delete all fire. `first_only=True` is the rule of servers before
    that change (getExtension: only the first such extension counts). The emulator follows 5.2.13."""
    codes = [e.get("valueCode") for e in _ext(sub, INTERACTION_URL)]
    if not codes:
        return True
    return interaction == codes[0] if first_only else interaction in codes


MAX_ATTEMPTS_URL = "https://medplum.com/fhir/StructureDefinition/subscription-max-attempts"
SECRET_URL = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"
DEFAULT_MAX_ATTEMPTS = 4
HTTP_TIMEOUT_S = 30.0
_NEVER_TRIGGER = frozenset({"AuditEvent", "Login", "AsyncJob"})


def _ext(resource: dict, url: str) -> list[dict]:
    return [e for e in resource.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _hook_headers(sub: dict, job, body: bytes) -> dict[str, str]:
    """Medplum's rest-hook headers (buildRestHookHeaders), used for http endpoints and, as the bot's
    event.headers, for Bot endpoints: the body they sign is the one delivered."""
    headers = {
        "Content-Type": "application/fhir+json",
        "X-Medplum-Subscription": sub.get("id", ""),
        "X-Medplum-Interaction": job.interaction,
    }
    if job.interaction == "delete":
        headers["X-Medplum-Deleted-Resource"] = f"{job.resource.get('resourceType')}/{job.resource.get('id')}"
    for h in (sub.get("channel") or {}).get("header") or []:
        if isinstance(h, str) and ":" in h:
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
    secret = _ext(sub, SECRET_URL)
    if secret and secret[0].get("valueString"):
        headers["X-Signature"] = hmac.new(secret[0]["valueString"].encode(), body, hashlib.sha256).hexdigest()
    return headers


@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    job: Any = field(compare=False)


@dataclass
class _Job:
    subscription: dict
    interaction: str
    resource: dict
    attempt: int = 1
    epoch: int = 0  # restarts seen when the change was queued; a restart drops older jobs


class SubscriptionEngine:
    """Matches each committed change against the active Subscriptions and delivers it: `bots` runs a Bot
    endpoint, `runtime` evaluates FHIRPath criteria."""

    def __init__(
        self, fhir: SystemFhir, projects: Projects, bots: BotService, runtime: LazyRuntime, settings: Settings
    ):
        self._fhir = fhir
        self._projects = projects
        self._bots = bots
        self._runtime = runtime
        self.settings = settings
        self._queue: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0  # queued change events + running deliveries + scheduled retries
        self._retries: list[_Retry] = []
        self._retry_seq = 0
        self._subs_cache: list[dict] | None = None
        self._subs_gen = 0  # bumped on every Subscription write (see active_subscriptions)
        self._subs_lock = threading.Lock()
        self._loop_hits: dict[tuple[str, str], deque] = defaultdict(deque)
        self._loop_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._http = requests.Session()
        self._epoch = 0  # bumped by drop_pending() (a restart): older queued work is forgotten
        self._waiting: set[int] = set()  # ids of submitted deliveries not started yet

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.settings.subscription_workers), thread_name_prefix="medport-sub-delivery"
        )
        for target, name in ((self._match_loop, "medport-sub-match"), (self._retry_loop, "medport-sub-retry")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        with self._cond:
            self._cond.notify_all()
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once the queue is drained, no delivery runs and no retry is scheduled."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def drop_pending(self) -> int:
        """What a server restart does to the subscription queue (developer API `restart`): change events not
        matched yet, deliveries not started and scheduled retries are forgotten. Returns how many. (Deliveries
        running now end when their bot execution is cut off.)"""
        with self._cond:
            self._epoch += 1
            dropped = len(self._retries) + len(self._waiting)  # the waiting ones end (skipped) on their own
            self._pending -= len(self._retries)
            self._retries.clear()
            self._waiting.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stop() marker: keep it
                self._queue.put(None)
                break
            dropped += 1
            self._dec()
        with self._cond:
            if self._pending <= 0:
                self._pending = 0
            self._cond.notify_all()
        return dropped

    def _inc(self, n: int = 1) -> None:
        with self._cond:
            self._pending += n

    def _dec(self) -> None:
        with self._cond:
            self._pending -= 1
            if self._pending <= 0:
                self._pending = 0
                self._cond.notify_all()

    # -- listener (called by the store after commit, inside the writer's thread: keep it cheap) --
    def on_change(self, event) -> None:
        resource = event.resource or {}
        rtype = resource.get("resourceType")
        if rtype == "Subscription":
            self.invalidate_subscriptions()
        if rtype in _NEVER_TRIGGER:
            return
        try:
            if rtype not in self._subscribed_types():
                return  # no active Subscription names this type: nothing would match (a bulk import)
        except Exception:
            pass
        self._inc()
        self._queue.put((event.interaction, resource, event.previous, self._epoch))

    # -- matching --------------------------------------------------------------------------------
    def invalidate_subscriptions(self) -> None:
        with self._subs_lock:
            self._subs_gen += 1
            self._subs_cache = None

    def _subscribed_types(self) -> frozenset:
        subs = self.active_subscriptions()
        cached = getattr(self, "_types_for", None)
        if cached is not None and cached[0] is subs:
            return cached[1]
        types = frozenset(str(sub.get("criteria") or "").split("?", 1)[0].strip().strip("/") for sub in subs)
        self._types_for = (subs, types)
        return types

    def active_subscriptions(self) -> list[dict]:
        with self._subs_lock:
            if self._subs_cache is not None:
                return self._subs_cache
            gen = self._subs_gen
        subs = [
            s
            for s in self._fhir.search("Subscription")
            if s.get("status") == "active"
            and (s.get("channel") or {}).get("type") == "rest-hook"
            and (s.get("channel") or {}).get("endpoint")
        ]
        with self._subs_lock:
            # A Subscription written while we searched invalidated the cache: do not store a stale list.
            if self._subs_gen == gen:
                self._subs_cache = subs
        return subs

    def _match_loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                interaction, resource, previous, epoch = item
                if epoch != self._epoch:
                    continue  # queued before a restart
                for sub in self.active_subscriptions():
                    try:
                        if self.matches(sub, interaction, resource, previous):
                            self._submit(_Job(sub, interaction, resource, epoch=epoch))
                    except Exception:
                        log.exception("subscription %s: matching failed", sub.get("id"))
            except Exception:
                log.exception("subscription matching failed")
            finally:
                self._dec()

    def matches(self, sub: dict, interaction: str, resource: dict, previous: dict | None) -> bool:
        criteria = str(sub.get("criteria") or "")
        if not criteria:
            return False
        ctype = criteria.split("?", 1)[0].strip().strip("/")
        if resource.get("resourceType") != ctype:
            return False
        fp = _ext(sub, FHIRPATH_CRITERIA_URL)
        if fp and fp[0].get("valueString"):
            try:
                value = self._runtime.get().eval_fhirpath(
                    fp[0]["valueString"], resource, {"%current": resource, "%previous": previous or {}}
                )
            except Exception as e:
                log.warning("subscription %s: FHIRPath criteria failed: %s", sub.get("id"), e)
                return False
            if not (value and value[0] is True):
                return False
        if not supports_interaction(sub, interaction):
            return False
        return "?" not in criteria or search_matches(resource, criteria)

    # -- delivery --------------------------------------------------------------------------------
    def _submit(self, job: _Job) -> None:
        self._inc()
        with self._cond:
            self._waiting.add(id(job))
        try:
            assert self._executor is not None
            self._executor.submit(self._deliver_safe, job)
        except Exception:
            self._dec()
            log.exception("could not submit a subscription delivery")

    def _deliver_safe(self, job: _Job) -> None:
        with self._cond:
            self._waiting.discard(id(job))
        try:
            if job.epoch != self._epoch:
                return  # dropped by a restart before it started
            if job.attempt > 1 and not self._still_current(job):
                log.info(
                    "subscription %s: dropping retry, %s/%s changed",
                    job.subscription.get("id"),
                    job.resource.get("resourceType"),
                    job.resource.get("id"),
                )
                return
            try:
                self._deliver(job)
            except Exception as e:
                self._schedule_retry(job, e)
        finally:
            self._dec()

    def _still_current(self, job: _Job) -> bool:
        r = job.resource
        if job.interaction == "delete":
            return self._fhir.try_read(r["resourceType"], r["id"]) is None
        current = self._fhir.try_read(r["resourceType"], r["id"])
        if current is None:
            return False
        return (current.get("meta") or {}).get("versionId") == (r.get("meta") or {}).get("versionId")

    def _max_attempts(self, sub: dict) -> int:
        ext = _ext(sub, MAX_ATTEMPTS_URL)
        if ext and isinstance(ext[0].get("valueInteger"), int) and ext[0]["valueInteger"] > 0:
            return min(int(ext[0]["valueInteger"]), 18)
        return DEFAULT_MAX_ATTEMPTS

    def _schedule_retry(self, job: _Job, err: Exception) -> None:
        sub = job.subscription
        if job.attempt >= self._max_attempts(sub):
            log.warning("subscription %s: giving up after %d attempts: %s", sub.get("id"), job.attempt, err)
            return
        if job.epoch != self._epoch:
            return
        delay = self.settings.retry_base_s * (2 ** (job.attempt - 1))
        nxt = _Job(sub, job.interaction, job.resource, job.attempt + 1, epoch=job.epoch)
        self._inc()
        with self._cond:
            self._retry_seq += 1
            heapq.heappush(self._retries, _Retry(time.monotonic() + delay, self._retry_seq, nxt))
            self._cond.notify_all()

    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._retries:
                    self._cond.wait(0.5)
                    continue
                head = self._retries[0]
                wait = head.due - time.monotonic()
                if wait > 0:
                    self._cond.wait(min(wait, 0.5))
                    continue
                heapq.heappop(self._retries)
            # the retry's pending count carries over into the delivery
            self._submit(head.job)
            self._dec()

    def _deliver(self, job: _Job) -> None:
        endpoint = str((job.subscription.get("channel") or {}).get("endpoint") or "")
        if endpoint.startswith("Bot/"):
            self._deliver_bot(job, endpoint.split("/", 1)[1])
        elif endpoint.startswith(("http://", "https://")):
            self._deliver_http(job, endpoint)
        else:
            log.warning("subscription %s: unsupported endpoint %r", job.subscription.get("id"), endpoint)

    def _deliver_bot(self, job: _Job, bot_id: str) -> None:
        bot = self._fhir.try_read("Bot", bot_id)
        if bot is None:
            raise RuntimeError(f"Bot/{bot_id} not found")
        sub = job.subscription
        resource = job.resource
        author = ((resource.get("meta") or {}).get("author") or {}).get("reference")
        author_membership = self._projects.membership_for_profile(author) if author else None
        run_as = self._bots.run_as_for(bot, author_membership)
        input = {"deletedResource": resource} if job.interaction == "delete" else resource
        loop_msg = self._loop_check(sub, bot, resource, author, job.interaction)
        body = json.dumps(input, separators=(",", ":")).encode()
        headers = {k.lower(): v for k, v in _hook_headers(sub, job, body).items()}
        self._bots.execute(
            bot,
            run_as=run_as,
            input=input,
            content_type="application/fhir+json",
            headers=headers,
            requester={"reference": author} if author else None,
            trigger=f"subscription:{sub.get('id')}",
            subscription=sub,
            loop_message=loop_msg,
        )

    def _loop_check(self, sub: dict, bot: dict, resource: dict, author: str | None, interaction: str) -> str | None:
        """Counts executions triggered by the bot's own writes; too many in the window = a loop."""
        if interaction == "delete" or author != f"Bot/{bot['id']}":
            return None
        key = (sub.get("id", ""), f"{resource.get('resourceType')}/{resource.get('id')}")
        now = time.monotonic()
        with self._loop_lock:
            hits = self._loop_hits[key]
            while hits and now - hits[0] > self.settings.loop_window_s:
                hits.popleft()
            hits.append(now)
            n = len(hits)
        if n > self.settings.loop_limit:
            return (
                f"medport: subscription loop stopped: Bot/{bot['id']} ({bot.get('name', '')}) re-triggered "
                f"Subscription/{sub.get('id')} on {key[1]} {n} times within "
                f"{self.settings.loop_window_s:g} s by writing that resource itself. The chain is stopped; "
                f"make the bot skip updates that change nothing it cares about (e.g. a FHIRPath criteria "
                f"extension or an idempotence check)."
            )
        return None

    def _deliver_http(self, job: _Job, url: str) -> None:
        sub = job.subscription
        body = b"{}" if job.interaction == "delete" else json.dumps(job.resource, separators=(",", ":")).encode()
        headers = _hook_headers(sub, job, body)
        resp = self._http.post(url, data=body, headers=headers, timeout=HTTP_TIMEOUT_S)
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"POST {_without_credentials(url)} answered {resp.status_code}")  # it is logged


def _without_credentials(url: str) -> str:
    """The URL for a log line: user:password@ and the query (it may carry PHI or keys) left out."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
