"""What medport's own commands (`enroll`, `document-urls`) need to reach: Metriport's Medical API (a small
client; the fake's URL and key when the emulator runs here) and the Medplum server (the admin client)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import click
import requests

from medport.defaults import admin_credentials, fake_metriport_api_key

from .. import statefile
from ..generation.config import Config
from .http_retry import MAYBE_ACTED_STATUSES, RetryPolicy, WaitTooLong, is_idempotent, maybe_applied_hint
from .medplum_http import MedplumHttp


class MetriportCallError(click.ClickException):
    def __init__(self, what: str, resp: requests.Response):
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict):
                detail = body.get("detail") or body.get("message") or body.get("title") or ""
        except ValueError:
            detail = resp.text[:200]
        super().__init__(f"Metriport {what} answered {resp.status_code}" + (f": {detail}" if detail else ""))
        self.status = resp.status_code


def send(
    what: str,
    method: str,
    url: str,
    policy: RetryPolicy,
    *,
    idempotent: bool | None = None,
    on_error: Callable[[requests.RequestException], click.ClickException],
    **kw,
) -> requests.Response:
    """One request to Metriport under the retry policy (http_retry.py): a 429 or 503 waited out as its Retry-After
    asks, a request that may have been acted on repeated only when that is harmless."""
    safe = is_idempotent(method, kw.get("headers"), idempotent)
    for attempt in range(1, policy.attempts + 1):
        try:
            resp = requests.request(method, url, **kw)
        except requests.RequestException as e:
            delay = policy.delay(attempt, safe, error=e)
            if delay is None:
                raise on_error(e) from None
        else:
            try:
                delay = policy.delay(attempt, safe, resp=resp)
            except WaitTooLong as e:
                raise click.ClickException(f"Metriport {what}: rate limited, {e}: run the command again then") from None
            if delay is None:
                if resp.status_code in MAYBE_ACTED_STATUSES and not safe:
                    raise click.ClickException(
                        f"Metriport {what} answered {resp.status_code}: {maybe_applied_hint(method)}"
                    )
                return resp
        policy.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class MetriportApi:
    base_url: str
    api_key: str = field(repr=False)
    timeout_s: float = 30.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    _no_status_route: bool = field(default=False, repr=False)

    def call(self, method: str, path: str, *, params: dict | None = None, json_body=None) -> dict:
        def unreachable(e: requests.RequestException) -> click.ClickException:
            return click.ClickException(
                f"cannot reach Metriport at {self.base_url} ({type(e).__name__}): check "
                "--metriport-url / METRIPORT_BASE_URL, or start `medport emulate`"
            )

        resp = send(
            f"{method} {path}",
            method,
            self.base_url.rstrip("/") + path,
            self.policy,
            params=params,
            json=json_body,
            headers={"x-api-key": self.api_key, "accept": "application/json"},
            timeout=self.timeout_s,
            on_error=unreachable,
        )
        if not 200 <= resp.status_code < 300:
            raise MetriportCallError(f"{method} {path}", resp)
        try:
            body = resp.json() if resp.content else {}
        except ValueError:
            raise click.ClickException(
                f"Metriport {method} {path} answered {resp.status_code} with a body that is "
                "not JSON: is the base URL Metriport's API?"
            ) from None
        if not isinstance(body, dict):
            raise click.ClickException(
                f"Metriport {method} {path} answered {resp.status_code} with JSON that is not "
                "an object: is the base URL Metriport's API?"
            )
        return body

    def start_bulk_patient_create(self, facility_id: str | None, dry_run: bool) -> dict:
        """POST /medical/v1/patient/bulk?facilityId=&dryRun= (no body): {requestId, status, uploadUrl, ...}."""
        params = {"dryRun": "true" if dry_run else "false"}
        if facility_id:
            params["facilityId"] = facility_id
        return self.call("POST", "/medical/v1/patient/bulk", params=params)

    def bulk_job_status(self, request_id: str) -> dict | None:
        """A bulk patient create's status, when Metriport is the fake (its developer API, `GET /_fake/bulk/<id>`):
        Metriport itself has no route for it. None elsewhere (asked once)."""
        if self._no_status_route:
            return None
        try:
            resp = requests.get(
                self.base_url.rstrip("/") + f"/_fake/bulk/{request_id}",
                headers={"x-api-key": self.api_key},
                timeout=self.timeout_s,
            )
            body = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            body = None
        if not isinstance(body, dict) or "status" not in body:
            self._no_status_route = True
            return None
        return body

    def start_bulk_download_urls(self, patient_id: str, metadata: dict | None = None) -> dict:
        """POST /medical/v1/document/download-url/bulk?patientId= with {metadata}: {status, requestId}."""
        return self.call(
            "POST",
            "/medical/v1/document/download-url/bulk",
            params={"patientId": patient_id},
            json_body={"metadata": metadata or {}},
        )


def upload_csv(url: str, text: str, timeout_s: float = 300.0, policy: RetryPolicy | None = None) -> requests.Response:
    """The PUT to a presigned upload URL, as Metriport's docs show it (`Content-Type: text/csv`); no API key
    (the URL is the credential). The URL is good for one upload: a PUT that may have landed is not repeated."""

    def failed(e: requests.RequestException) -> click.ClickException:  # the URL is a credential: not shown
        return click.ClickException(
            f"uploading the CSV to Metriport's upload URL failed ({type(e).__name__}); run `medport enroll` again"
        )

    return send(
        "upload",
        "PUT",
        url,
        policy or RetryPolicy(),
        idempotent=False,
        data=text.encode("utf-8"),
        headers={"Content-Type": "text/csv"},
        timeout=timeout_s,
        on_error=failed,
    )


def metriport_api(cfg: Config, base_url: str | None, api_key: str | None) -> MetriportApi:
    """--metriport-url / METRIPORT_BASE_URL, else the fake of the emulator running from this folder, else the
    config's environment; --metriport-api-key / METRIPORT_API_KEY, else (for that local fake) its dev key."""
    running = statefile.running() or {}
    local_fake = running.get("metriport_url") if running.get("metriport") == "fake" else None
    base = base_url or os.environ.get("METRIPORT_BASE_URL") or local_fake or cfg.metriport_base_url
    key = api_key or os.environ.get("METRIPORT_API_KEY")
    if not key and local_fake and base.rstrip("/") == local_fake.rstrip("/"):
        key = fake_metriport_api_key()
    if not key:
        raise click.ClickException(
            f"no Metriport API key for {base}: set METRIPORT_API_KEY (or --metriport-api-key) "
            "for that Metriport, or run `medport emulate` here (its fake Metriport's key is "
            "known)"
        )
    return MetriportApi(base, key)


def medplum_http(base_url: str | None, client_id: str | None, client_secret: str | None) -> MedplumHttp:
    """--base-url / MEDPLUM_BASE_URL, else the emulator running from this folder (none: one line saying what to
    do); the admin client (--client-id/--client-secret, MEDPLUM_CLIENT_ID/SECRET, else the emulator's)."""
    running = statefile.running()
    if not base_url:
        if running is None:
            raise click.ClickException(
                "no emulator running from this folder (no live .medport/emulator.json) and "
                "no --base-url / MEDPLUM_BASE_URL: start `medport emulate` here, or name your "
                "Medplum server with --base-url and an admin client (--client-id/--client-secret)"
            )
        base_url = running["base_url"]
    base = base_url
    cid, secret = admin_credentials()
    return MedplumHttp(base, client_id or cid, client_secret or secret)
