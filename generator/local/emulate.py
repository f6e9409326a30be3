"""`medport emulate`: the Medplum emulator, the fake Metriport beside it (or the real sandbox), and — when
a medport.toml is in the working directory — the bots generated from it deployed through the one deploy
path (`stack.start_stack`), served until Ctrl-C. While it runs, `.medport/emulator.json` says where
(`statefile`), for `medport runs`, `replay` and `status`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from medport.defaults import (
    CONSOLE_PORT,
    DEFAULT_ADMIN_CLIENT_SECRET,
    DEV_FAKE_METRIPORT_API_KEY,
    EMULATOR_PORT,
    FAKE_METRIPORT_PORT,
)
from medport.emulator.locks import InUse, OwnerLock, StoreRefused
from medport.emulator.medplum.releases import NEWEST, OLDEST, UnsupportedRelease
from medport.emulator.medplum.releases import release as medplum_release
from medport.emulator.medplum.server import DEFAULT_DB
from medport.emulator.metriport.persist import sibling_path
from medport.emulator.procenv import hide_process_environment, take_secrets
from medport.emulator.serving import PortInUse, tune_gc_for_serving, wait_for_stop

from .. import statefile
from ..console.command import serve_for_stack
from ..generation.config import CONFIG_FILENAME, ConfigError, load_config
from ..options import admin_options, config_option
from ..remote.medplum_http import MedplumError
from .stack import MissingInput, Stack, start_stack

FOLDER_LOCK = statefile.STATE_FILE.parent / "emulate.lock"


def _banner(stack: Stack, storage: str, seconds: float) -> None:
    emu = stack.emulator
    click.echo(f"medport emulator (Medplum {emu.state.release.version}) listening on {emu.base_url}")
    click.echo(f"  FHIR base:     {emu.base_url}fhir/R4/")
    click.echo(f"  token URL:     {emu.base_url}oauth2/token")
    # A secret is printed only when it is the built-in development default.
    secret = emu.admin_client_secret if emu.admin_client_secret == DEFAULT_ADMIN_CLIENT_SECRET else "(yours, not shown)"
    click.echo(f"  admin client:  id={emu.admin_client_id} secret={secret}")
    click.echo(f"  project:       {emu.state.project()['id']}")
    fake_storage = (
        f", fake Metriport: {sibling_path(storage)}" if stack.fake is not None and storage != "memory" else ""
    )
    click.echo(f"  storage:       {storage}{fake_storage}")
    click.echo(f"  ready in {seconds:.2f} s")
    if stack.fake is not None:
        base = stack.fake.base_url
        click.echo(f"fake Metriport listening on {base}/medical/v1")
        if stack.fake.api_key == DEV_FAKE_METRIPORT_API_KEY:
            click.echo(
                f"  api key:       {stack.fake.api_key}   (header x-api-key; the fixed development key — "
                "--metriport-api-key or MEDPORT_FAKE_METRIPORT_API_KEY to change it)"
            )
        else:
            click.echo(
                "  api key:       (yours, from --metriport-api-key / MEDPORT_FAKE_METRIPORT_API_KEY; header x-api-key)"
            )
        click.echo(f"  facility id:   {stack.fake.facility_id}")
        click.echo(
            f"  developer API: {base}/_fake/webhooks, {base}/_fake/faults, {base}/_fake/state "
            "(header x-api-key: the same key)"
        )
    else:
        click.echo(f"Metriport: the real service at {stack.metriport_base_url}")


def _deployment(stack: Stack, no_deploy: bool, config_problem: str | None, config_path: str = CONFIG_FILENAME) -> None:
    if no_deploy:
        click.echo("bots: not deployed (--no-deploy)")
    elif config_problem:
        click.echo(click.style(f"bots: not deployed — {config_problem}", fg="red"))
    elif stack.deploy is None:
        click.echo(f"bots: no {config_path} here, nothing deployed (`medport init` writes one)")
    else:
        changed = sorted({c.kind for c in stack.deploy.changes if c.status != "unchanged"})
        click.echo(
            f"bots: deployed from {config_path} "
            f"({'changed: ' + ', '.join(changed) if changed else 'no change'}): "
            + ", ".join(f"{k}=Bot/{v}" for k, v in stack.deploy.bot_ids.items())
        )
        if stack.fake is not None:
            click.echo("  webhook bot registered as the fake Metriport's webhook URL (ping sent)")
        else:
            click.echo(
                "  Metriport cannot reach this machine's loopback address: expose the webhook with a public URL,"
            )
            click.echo("  or save a delivery and re-send it with `medport replay FILE`.")


@click.command("emulate")
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=EMULATOR_PORT, show_default=True, type=int, help="Port (0 = any free port).")
@click.option(
    "--db",
    "db_path",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="SQLite file holding the FHIR store.",
)
@click.option(
    "--memory",
    is_flag=True,
    help="Keep everything in memory, the fake Metriport's state too (nothing "
    "survives a restart). Without it the fake keeps its state beside the database (<db>.metriport.sqlite3).",
)
@click.option("--no-deploy", is_flag=True, help="Do not deploy the generated bots on start.")
@admin_options
@click.option(
    "--metriport-port", default=FAKE_METRIPORT_PORT, show_default=True, type=int, help="Port of the fake Metriport."
)
@click.option(
    "--metriport",
    "metriport_mode",
    type=click.Choice(["fake", "sandbox"]),
    default="fake",
    show_default=True,
    help="Use the fake Metriport, or the real sandbox (its key from METRIPORT_API_KEY).",
)
@click.option("--metriport-data", default=None, type=click.Path(), help="Seed data for the fake Metriport.")
@click.option(
    "--metriport-api-key",
    envvar="MEDPORT_FAKE_METRIPORT_API_KEY",
    show_envvar=True,
    default=None,
    show_default=DEV_FAKE_METRIPORT_API_KEY,
    help="API key the fake Metriport accepts.",
)
@click.option(
    "--console-port",
    default=CONSOLE_PORT,
    show_default=True,
    type=int,
    help="Port of the sync console (on 127.0.0.1; a busy port falls back to a free one).",
)
@click.option("--no-console", is_flag=True, help="Do not serve the sync console.")
@click.option(
    "--medplum-version",
    metavar="VERSION",
    default=None,
    help=f"Medplum release to emulate: its bot sandbox, Bot schema, admin-only types ({OLDEST} to {NEWEST}; "
    f"default: medplum.version of the config, else {NEWEST}).",
)
def emulate_command(
    config_path,
    host,
    port,
    db_path,
    memory,
    no_deploy,
    admin_client_id,
    admin_client_secret,
    metriport_port,
    metriport_mode,
    metriport_data,
    metriport_api_key,
    console_port,
    no_console,
    medplum_version,
) -> None:
    """Run the local Medplum emulator and the fake Metriport, with the bots generated from the config deployed."""
    if medplum_version:
        try:
            medplum_release(medplum_version)
        except UnsupportedRelease as e:
            raise click.BadParameter(f"{e} (use {OLDEST} to {NEWEST})", param_hint="--medplum-version") from None
    # the bots run as this user: no secret may stay readable in /proc/<this pid>/environ or cmdline (click read
    # the options and their environment variables already)
    secrets = take_secrets()
    hide_process_environment()
    cfg, problem = None, None
    if not no_deploy and Path(config_path).exists():
        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            problem = str(e)
    overrides = {
        k: v for k, v in (("admin_client_id", admin_client_id), ("admin_client_secret", admin_client_secret)) if v
    }
    t0 = time.perf_counter()
    # one emulator per folder: a second one would deploy over the first's bots, change its secrets and, on exit,
    # leave `medport status` without the state file
    folder = OwnerLock(
        str(FOLDER_LOCK),
        "this folder's .medport/",
        "stop it first (Ctrl-C where it runs), or run the second one from another folder",
    )
    try:
        folder.acquire()
        stack = start_stack(
            cfg,
            db_path=None if memory else db_path,
            host=host,
            port=port,
            metriport=metriport_mode,
            metriport_port=metriport_port,
            metriport_data=metriport_data,
            metriport_delay_s=0.3,
            metriport_api_key=metriport_api_key,
            deploy=cfg is not None,
            settings_overrides=overrides,
            medplum_version=medplum_version,
            env={**os.environ, **secrets},
        )
    except BaseException as e:
        folder.release()
        if isinstance(e, (PortInUse, MissingInput, InUse, StoreRefused)):
            raise click.ClickException(str(e)) from None
        if isinstance(e, MedplumError):
            raise click.ClickException(f"bots: deployment failed at {e}") from None
        raise
    console = None
    try:
        storage = db_path if not memory else "memory"
        _banner(stack, storage, time.perf_counter() - t0)
        _deployment(stack, no_deploy, problem, config_path)
        if not no_console:
            console = serve_for_stack(stack, cfg, port=console_port)
            click.echo(
                f"sync console: {console.url}   (sign in with the admin client id and secret above; "
                "`medport status --json` prints its health figures)"
            )
        statefile.write(_state(stack, host, storage, metriport_mode, console.url if console else None, config_path))
        folder.describe(port=stack.emulator.port, base_url=stack.emulator.base_url)
        tune_gc_for_serving()
        wait_for_stop()
    finally:
        statefile.remove()
        if console is not None:
            console.stop()
        stack.close()
        folder.release()


def _state(
    stack: Stack,
    host: str,
    storage: str,
    metriport_mode: str,
    console_url: str | None = None,
    config_path: str = CONFIG_FILENAME,
) -> dict:
    """What `.medport/emulator.json` holds: where to reach things, never a secret."""
    emu = stack.emulator
    return {
        "base_url": emu.base_url,
        "fhir_url": f"{emu.base_url}fhir/R4/",
        "host": host,
        "port": emu.port,
        "storage": storage,
        "project": emu.state.project()["id"],
        "admin_client_id": emu.admin_client_id,
        "medplum_version": emu.state.release.version,
        "config": str(Path(config_path).resolve()) if stack.deploy else None,
        "bots": dict(stack.deploy.bot_ids) if stack.deploy else {},
        "metriport": metriport_mode,
        "metriport_url": stack.fake.base_url if stack.fake else stack.metriport_base_url,
        "metriport_port": int(stack.fake.base_url.rsplit(":", 1)[1]) if stack.fake else None,
        "facility_id": stack.fake.facility_id if stack.fake else None,
        "console_url": console_url,
    }
