"""A running medport stack: the Medplum emulator, the fake Metriport beside it, and the bots
generated from the config deployed into the emulator through the one deploy path
(`medport.generator.remote.deploy.Deployer`), with the Project secrets set and the webhook registered.

Used by `medport emulate`, `medport demo`, `medport check`, the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from medport.defaults import fake_metriport_api_key
from medport.emulator.medplum.releases import NEWEST
from medport.emulator.medplum.releases import release as medplum_release
from medport.emulator.medplum.server import EmulatorHandle
from medport.emulator.medplum.server import start as start_emulator
from medport.emulator.medplum.settings import Settings
from medport.emulator.metriport.persist import sibling_path
from medport.emulator.metriport.server import FakeMetriport
from medport.emulator.metriport.server import start as start_fake
from medport.emulator.metriport.settings import Settings as FakeSettings
from medport.emulator.node import NODE_FETCH_PACKAGES, RUNTIME_PACKAGES, find_runtime

from ..generation.config import Config
from ..generation.manifest import webhook_execute_url
from ..remote.deploy import Deployer, DeployResult
from ..remote.medplum_http import MedplumHttp

SANDBOX_URL = "https://api.sandbox.metriport.com"
BOTS_READINESS = {"bots": "deploying the bots generated from the config"}


class MissingInput(ValueError):
    """An input the stack needs is absent (e.g. METRIPORT_API_KEY with the real sandbox); the message says which."""


@dataclass
class Stack:
    cfg: Config | None  # None: nothing deployed
    emulator: EmulatorHandle
    fake: FakeMetriport | None  # None with the real sandbox
    admin: MedplumHttp
    deploy: DeployResult | None
    webhook_key: str = ""
    webhook_url: str = ""  # with credentials: never print it
    metriport_base_url: str = ""
    metriport_api_key: str = ""  # the fake's, or the real sandbox's: never print it

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self.emulator.wait_idle(timeout)

    def close(self) -> None:
        if self.fake is not None:
            self.fake.close()
        self.emulator.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def admin_client(handle) -> MedplumHttp:
    return MedplumHttp(handle.base_url, handle.admin_client_id, handle.admin_client_secret)


def webhook_client_secret(admin: MedplumHttp, client_id: str) -> str:
    """Admins can read a ClientApplication's secret (as in Medplum's app)."""
    return admin.fhir("read webhook client", "GET", f"ClientApplication/{client_id}")["secret"]


def deploy_into(
    handle,
    cfg: Config,
    *,
    metriport_base_url: str,
    api_key: str,
    webhook_key: str,
    echo: Callable[[str], None] = lambda s: None,
) -> tuple[DeployResult, MedplumHttp, str]:
    """Deploy the generated bots into a running emulator and return (result, admin client, webhook URL)."""
    admin = admin_client(handle)
    result = Deployer(
        cfg,
        admin,
        set_secrets=True,
        echo=echo,
        secrets={
            "METRIPORT_API_KEY": api_key,
            "METRIPORT_WEBHOOK_KEY": webhook_key,
            "METRIPORT_BASE_URL": metriport_base_url,
        },
    ).run()
    secret = result.client_secret or webhook_client_secret(admin, result.client_id)
    return result, admin, webhook_execute_url(handle.base_url, result.bot_ids["webhook_bot"], result.client_id, secret)


def start_stack(
    cfg: Config | None,
    *,
    db_path: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    metriport: str = "fake",
    metriport_port: int = 0,
    metriport_data: str | None = None,
    metriport_delay_s: float = 0.2,
    metriport_api_key: str | None = None,
    deploy: bool = True,
    settings_overrides: dict | None = None,
    medplum_version: str | None = None,
    echo: Callable[[str], None] = lambda s: None,
    env: Mapping[str, str] | None = None,
) -> Stack:
    """Start the emulator (+ fake Metriport), deploy the bots, set secrets, register the webhook.

    `medplum_version`: the Medplum release emulated (default: the config's `medplum.version`, else the newest).
    `env`: where METRIPORT_API_KEY, METRIPORT_WEBHOOK_KEY and METRIPORT_BASE_URL are read (default os.environ;
    `medport emulate` passes the secrets it took out of its environment).
    Raises NodeRuntimeMissing (one line: what to run) before starting anything when Node 22 or an npm
    package is missing, UnsupportedRelease for a release medport does not emulate, and MissingInput when the
    real sandbox is asked for without METRIPORT_API_KEY."""
    version = medplum_version or (cfg.medplum.version if cfg is not None else NEWEST)
    find_runtime(NODE_FETCH_PACKAGES if medplum_release(version).sandbox.fetch == "node-fetch" else RUNTIME_PACKAGES)
    env = os.environ if env is None else env
    if metriport != "fake" and not env.get("METRIPORT_API_KEY"):
        raise MissingInput(
            "--metriport sandbox needs METRIPORT_API_KEY: export your sandbox API key (Metriport "
            "dashboard → Developers → API key), or use --metriport fake"
        )
    deploying = deploy and cfg is not None
    settings = Settings(db_path=db_path, **{"medplum_version": version, **(settings_overrides or {})})
    if deploying:
        settings.wait_for = dict(BOTS_READINESS)  # /_emulator/health: not ready until the bots are deployed
    handle = start_emulator(settings, host=host, port=port)
    fake = None
    try:
        if metriport == "fake":
            # with a database file the fake keeps its state beside it, so a restart keeps both coherent
            fake_settings = FakeSettings(
                api_key=metriport_api_key or fake_metriport_api_key(),
                delay_s=metriport_delay_s,
                data_path=metriport_data,
                state_path=sibling_path(db_path) if db_path else None,
            )
            fake = start_fake(fake_settings, "127.0.0.1", metriport_port)
            base, api_key = fake.base_url, fake.api_key
        else:
            base = env.get("METRIPORT_BASE_URL", SANDBOX_URL)
            api_key = env["METRIPORT_API_KEY"]
        webhook_key = env.get("METRIPORT_WEBHOOK_KEY") if metriport != "fake" else None
        # a restart on the same files keeps the fake's key (Metriport's does not change): stored messages verify
        webhook_key = (
            webhook_key
            or (fake.state.webhook_key() if fake is not None and db_path else None)
            or pysecrets.token_hex(32)
        )
        stack = Stack(
            cfg,
            handle,
            fake,
            admin_client(handle),
            None,
            webhook_key,
            metriport_base_url=base,
            metriport_api_key=api_key,
        )
        if not deploying or cfg is None:
            return stack
        result, admin, url = deploy_into(
            handle, cfg, metriport_base_url=base, api_key=api_key, webhook_key=webhook_key, echo=echo
        )
        stack.deploy, stack.admin, stack.webhook_url = result, admin, url
        if fake is not None:
            # The key is Metriport's to choose; set it directly (the real flow: save the URL in the
            # dashboard, copy the key into the METRIPORT_WEBHOOK_KEY secret), then save the URL
            # through the API so the fake pings the webhook bot like Metriport does.
            fake.state.set_webhook(url, webhook_key, ping=True)
        handle.state.waiting_for.pop("bots", None)
        return stack
    except BaseException:
        if fake is not None:
            fake.close()
        handle.close()
        raise
