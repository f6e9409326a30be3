"""A small Medplum REST client for medport's own commands (deploy, runs, replay).

Client-credentials login, retries with backoff on 429/5xx/connection errors, and
OperationOutcome errors surfaced even inside a 200 (a batch entry, an admin answer).
Secrets and tokens are never part of any message it produces.

Like MedplumClient it asks for Medplum's extended mode (`X-Medplum: extended`, core client.ts), so resources
come back with meta.author / meta.project / meta.compartment, which the server hides otherwise (server
fhir/repo.ts removeHiddenFields). The bearer token goes with each request, never with a login: the token
endpoint refuses a bearer Authorization header (server oauth/token.ts getClientIdAndSecret → 400 "Invalid
authorization header"), so a client logged in before can log in again (a second deploy, an expired token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import requests

from medport import jsoncodec

from .http_retry import MAYBE_ACTED_STATUSES, RetryPolicy, WaitTooLong, is_idempotent, maybe_applied_hint, never_sent

log = logging.getLogger(__name__)


class MedplumError(Exception):
    """A failed step: `step` names what was being done, the message carries the server's words."""

    def __init__(self, step: str, message: str, status: int | None = None, maybe_applied: bool = False):
        self.step, self.status = step, status
        self.maybe_applied = maybe_applied  # failed after the server may have acted (a POST answered 5xx)
        super().__init__(f"{step}: {message}" + (f" (HTTP {status})" if status else ""))


def outcome_text(body: Any) -> str | None:
    """The error text of an OperationOutcome with an error/fatal issue, else None."""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        errs = [i for i in body.get("issue", []) if i.get("severity") in ("error", "fatal")]
        if errs:
            return "; ".join(
                (i.get("details") or {}).get("text") or i.get("diagnostics") or i.get("code", "error") for i in errs
            )
    return None


def not_json_reason(resp: requests.Response) -> str:
    """Why a body that should be FHIR JSON is not, in a few words (never the body itself: an HTML page or a
    proxy's text is no message for a terminal)."""
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip() or "no content type"
    if "html" in ctype:
        return f"an HTML page ({ctype}), not FHIR JSON: is the base URL a Medplum server's API?"
    return f"a {ctype} body that is not JSON: is the base URL a Medplum server's API?"


def instant_now() -> str:
    """Now as an instant with milliseconds, as the bots write them (`new Date().toISOString()`): Task inv-1
    compares authoredOn with lastModified, and FHIRPath cannot compare two precisions."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class MedplumHttp:
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    attempts: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    on_retry: Callable[[str], None] | None = None
    policy: RetryPolicy | None = None  # default: attempts and backoff_s above
    session: requests.Session = field(default_factory=requests.Session)
    token: str | None = field(default=None, repr=False)
    extended: bool = True  # send `X-Medplum: extended` (meta.author/project/compartment returned)

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/") + "/"
        if self.policy is None:
            self.policy = RetryPolicy(attempts=self.attempts, backoff_s=self.backoff_s)

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    def _send(self, step: str, method: str, path: str, idempotent: bool | None = None, **kw) -> requests.Response:
        """One request under the retry policy (http_retry.py): what the server certainly did not act on is repeated,
        what it may have acted on only when repeating it is harmless."""
        safe = is_idempotent(method, kw.get("headers"), idempotent)
        policy = self.policy
        assert policy is not None  # set by __post_init__
        for attempt in range(1, policy.attempts + 1):
            try:
                resp = self.session.request(method, self.url(path), timeout=self.timeout_s, **kw)
            except (requests.ConnectionError, requests.Timeout) as e:
                delay = policy.delay(attempt, safe, error=e)
                if delay is None:
                    if never_sent(e):
                        raise MedplumError(
                            step,
                            f"cannot reach {self.base_url} ({type(e).__name__}) — is the server up "
                            "and the base URL right?",
                        ) from None
                    raise MedplumError(
                        step,
                        f"no answer from {self.base_url} ({type(e).__name__}); "
                        + (maybe_applied_hint(method) if not safe else f"tried {attempt} time(s)"),
                    ) from None
                reason = type(e).__name__
            else:
                try:
                    delay = policy.delay(attempt, safe, resp=resp)
                except WaitTooLong as e:
                    raise MedplumError(step, f"rate limited: {e}; try again then", resp.status_code) from None
                if delay is None:
                    return resp
                reason = f"HTTP {resp.status_code}"
            if self.on_retry:
                self.on_retry(f"{step}: {reason}, retrying in {delay:.1f}s (attempt {attempt + 1}/{policy.attempts})")
            policy.sleep(delay)
        raise AssertionError("unreachable")

    def login(self) -> None:
        # a repeated token request only mints another token: safe to repeat
        resp = self._send(
            "login",
            "POST",
            "oauth2/token",
            idempotent=True,
            data={"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret},
        )
        log.debug("POST oauth2/token -> %s in %.0f ms", resp.status_code, resp.elapsed.total_seconds() * 1000)
        if resp.content and _json(resp) is None:
            raise MedplumError("login", not_json_reason(resp), resp.status_code)
        if resp.status_code != 200:
            detail = _json(resp)
            msg = (detail or {}).get("error_description") or outcome_text(detail) or resp.text[:200]
            raise MedplumError(
                "login", f"client credentials rejected: {msg} — check the client id and secret", resp.status_code
            )
        self.token = resp.json()["access_token"]

    def healthcheck(self) -> dict | None:
        """`GET /healthcheck`, which needs no credentials: Medplum's `{ok, version, ...}` (server healthcheck.ts),
        or None when the server does not answer it with JSON. MedplumError when the server cannot be reached."""
        resp = self._send("read the server's version", "GET", "healthcheck", headers={"Accept": "application/json"})
        body = _json(resp) if resp.status_code == 200 else None
        return body if isinstance(body, dict) else None

    def auth_headers(self) -> dict[str, str]:
        """What goes with every request after login: the bearer token and, unless turned off, extended mode."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.extended:
            headers["X-Medplum"] = "extended"
        return headers

    def request(
        self,
        step: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict | None = None,
        params: Any = None,
        ok: tuple[int, ...] = (200, 201),
        idempotent: bool | None = None,
    ) -> Any:
        """`idempotent`: True for a POST that may be repeated (a search, a write of the same whole state);
        default: by method and headers (http_retry.is_idempotent)."""
        if self.token is None:
            self.login()
        hdrs = {"Accept": "application/fhir+json, application/json"}
        if json_body is not None:
            hdrs["Content-Type"] = "application/fhir+json"
        hdrs.update(headers or {})

        def send() -> requests.Response:  # the token is read at each send: a login between sends is used
            return self._send(
                step,
                method,
                path,
                idempotent,
                json=json_body,
                data=data,
                headers={**self.auth_headers(), **hdrs},
                params=params,
            )

        resp = send()
        if resp.status_code == 401 and "Authorization" not in (headers or {}):
            self.login()  # the token expired (or the server restarted): log in again, once
            resp = send()
        log.debug(
            "%s %s -> %s in %.0f ms",
            method,
            path.split("?", 1)[0],
            resp.status_code,
            resp.elapsed.total_seconds() * 1000,
        )
        body = _json(resp)
        if (
            body is None
            and resp.content
            and (resp.status_code not in ok or "html" in resp.headers.get("Content-Type", ""))
        ):
            raise MedplumError(step, not_json_reason(resp), resp.status_code)
        if resp.status_code not in ok:
            message = outcome_text(body) or resp.reason or "no reason given"
            if resp.status_code in MAYBE_ACTED_STATUSES and not is_idempotent(method, hdrs, idempotent):
                raise MedplumError(
                    step, f"{message}; {maybe_applied_hint(method)}", resp.status_code, maybe_applied=True
                )
            raise MedplumError(step, message, resp.status_code)
        text = outcome_text(body)
        if text:
            raise MedplumError(step, text, resp.status_code)
        return body

    def fhir(self, step: str, method: str, path: str, **kw) -> Any:
        return self.request(step, method, f"fhir/R4/{path.lstrip('/')}", **kw)

    def download(self, step: str, path: str) -> bytes:
        """A Binary's content (`Binary/<id>`): Medplum answers the bytes themselves to an Accept that is not FHIR JSON
        (server fhir/response.ts); read as FHIR JSON, an uploaded Binary has no `data`."""
        if self.token is None:
            self.login()
        resp = self._send(step, "GET", f"fhir/R4/{path.lstrip('/')}", headers={**self.auth_headers(), "Accept": "*/*"})
        if resp.status_code == 401:
            self.login()  # the token expired: log in again, once
            resp = self._send(
                step, "GET", f"fhir/R4/{path.lstrip('/')}", headers={**self.auth_headers(), "Accept": "*/*"}
            )
        if resp.status_code != 200:
            body = _json(resp)
            raise MedplumError(step, outcome_text(body) or (resp.text[:300] or resp.reason), resp.status_code)
        return resp.content

    def search_one(self, step: str, resource_type: str, query: str) -> dict | None:
        bundle = self.fhir(step, "GET", f"{resource_type}?{query}")
        entries = [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]
        if len(entries) > 1:
            raise MedplumError(
                step,
                f"{len(entries)} {resource_type} resources match {query}; expected at most one — delete the duplicates",
            )
        return entries[0] if entries else None


def _json(resp: requests.Response) -> Any:
    try:
        return jsoncodec.loads(resp.content)  # orjson: several times faster on search bundles
    except ValueError:
        return None
