"""Helpers for tests, the demo and benchmarks: a started emulator plus an authenticated HTTP client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from .server import EmulatorHandle, start
from .settings import Settings


class Client:
    """A tiny Medplum-ish HTTP client (requests) authenticated with client credentials."""

    def __init__(self, base_url: str, client_id: str, client_secret: str):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.http = requests.Session()
        self.client_id = client_id
        self.client_secret = client_secret
        r = self.http.post(
            self.base_url + "oauth2/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
        )
        r.raise_for_status()
        self.token = r.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.http.headers["X-Medplum"] = "extended"  # as MedplumClient: the meta fields Medplum hides otherwise
        # MedplumClient's default Accept (core client.ts DEFAULT_ACCEPT): a Binary read answers the resource
        self.http.headers["Accept"] = "application/fhir+json, */*; q=0.1"

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    def fhir(self, path: str) -> str:
        return self.base_url + "fhir/R4/" + path.lstrip("/")

    def request(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, self.url(path), **kw)

    def create(self, resource: dict) -> dict:
        r = self.http.post(
            self.fhir(resource["resourceType"]), json=resource, headers={"Content-Type": "application/fhir+json"}
        )
        assert r.status_code == 201, r.text
        return r.json()

    def update(self, resource: dict) -> dict:
        r = self.http.put(
            self.fhir(f"{resource['resourceType']}/{resource['id']}"),
            json=resource,
            headers={"Content-Type": "application/fhir+json"},
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def read(self, rtype: str, rid: str) -> dict:
        r = self.http.get(self.fhir(f"{rtype}/{rid}"))
        assert r.status_code == 200, r.text
        return r.json()

    def search(self, rtype: str, params: Any = None) -> list[dict]:
        r = self.http.get(self.fhir(rtype), params=params)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry") or []]

    def create_bot(self, name: str, code: str | None = None, **extra) -> dict:
        body = {"name": name, "runtimeVersion": "vmcontext", **extra}
        if code is not None:
            body["code"] = code
        r = self.http.post(self.url("admin/projects/medport-project/bot"), json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def execute(self, bot_id: str, body: Any = None, **kw) -> requests.Response:
        return self.http.post(self.fhir(f"Bot/{bot_id}/$execute"), json=body, **kw)

    def idle(self, timeout: float = 30) -> bool:
        r = self.http.post(self.url(f"_emulator/idle?timeout={timeout}"))
        return r.status_code == 200 and r.json().get("idle")

    def runs(self, **params) -> list[dict]:
        return self.http.get(self.url("_emulator/runs"), params=params).json()["runs"]


@contextlib.contextmanager
def running_emulator(settings: Settings | None = None, **kw) -> Iterator[EmulatorHandle]:
    handle = start(settings or Settings(), **kw)
    try:
        yield handle
    finally:
        handle.close()


def admin_client(handle: EmulatorHandle) -> Client:
    return Client(handle.base_url, handle.admin_client_id, handle.admin_client_secret)
