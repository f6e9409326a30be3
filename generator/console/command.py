"""`medport console`: serve the sync console on 127.0.0.1 — against the emulator running from this folder
(`.medport/emulator.json`) by default, or a real Medplum (`--base-url` with an admin client's credentials).
`medport emulate` and `medport demo --keep-running` serve it too (`serve_for_stack`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

from medport.defaults import CONSOLE_PORT, admin_credentials, fake_metriport_api_key

from .. import statefile
from ..generation.config import Config, ConfigError, load_config
from ..options import config_option, medplum_options, metriport_options
from .guard import binds_everything
from .source import Settings, Source


def _config(path: str | None) -> Config | None:
    if path and Path(path).exists():
        try:
            return load_config(path)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
    return None


def config_fields(cfg: Config | None) -> dict:
    """What the console takes from medport.toml: how to find the bots, the identifier systems, the types."""
    if cfg is None:
        return {}
    system = cfg.medplum.identifier_system
    return {
        "bot_identifiers": {
            "patient": f"{system}|{cfg.bots.patient.identifier}",
            "webhook": f"{system}|{cfg.bots.webhook.identifier}",
        },
        "patient_identifier_system": cfg.metriport.patient_identifier_system,
        "resource_identifier_system": cfg.metriport.resource_identifier_system,
        "resource_types": tuple(cfg.webhook_bot.resources),
    }


def default_resource_types() -> tuple:
    try:
        from ..generation.config import validate_data

        return tuple(validate_data({}).webhook_bot.resources)
    except Exception:  # pragma: no cover - the schema always has defaults
        return ()


def settings_for(
    *,
    base_url: str | None,
    client_id: str | None,
    client_secret: str | None,
    fhir_only: bool,
    metriport_url: str | None,
    metriport_api_key: str | None,
    cfg: Config | None,
    stuck_after_s: float = 300.0,
) -> Settings:
    """The console's settings: a real Medplum when `base_url` is given, else the emulator running from this folder."""
    state = None if base_url else statefile.running()
    fields = config_fields(cfg)
    fields.setdefault("resource_types", default_resource_types())
    dflt_id, dflt_secret = admin_credentials()
    kw = dict(
        client_id=client_id or dflt_id,
        client_secret=client_secret or dflt_secret,
        stuck_after_s=stuck_after_s,
        metriport_url=metriport_url,
        metriport_api_key=metriport_api_key,
        **fields,
    )
    if state is not None:
        fake = state.get("metriport") == "fake"
        bots = state.get("bots") or {}
        kw.update(
            base_url=state["base_url"],
            dev_api=not fhir_only,
            fake_url=state.get("metriport_url") if fake else None,
            bot_ids={"patient": bots.get("patient_bot"), "webhook": bots.get("webhook_bot")},
        )
        if not metriport_url:
            kw["metriport_url"] = state.get("metriport_url")
            kw["metriport_api_key"] = metriport_api_key or (
                fake_metriport_api_key() if fake else os.environ.get("METRIPORT_API_KEY")
            )
        return Settings(**kw)
    return Settings(base_url=base_url or statefile.DEFAULT_BASE_URL, dev_api=False, **kw)


def settings_for_stack(stack, cfg: Config | None, *, fhir_only: bool = False) -> Settings:
    """The console of a running stack (emulate, demo): the emulator, its admin client, the fake's log and API."""
    emu = stack.emulator
    fields = config_fields(cfg)
    fields.setdefault("resource_types", default_resource_types())
    fake = stack.fake
    bots = dict(stack.deploy.bot_ids) if stack.deploy else {}
    return Settings(
        base_url=emu.base_url,
        client_id=emu.admin_client_id,
        client_secret=emu.admin_client_secret,
        dev_api=not fhir_only,
        fake_url=fake.base_url if fake else None,
        metriport_url=fake.base_url if fake else stack.metriport_base_url,
        metriport_api_key=fake.api_key if fake else stack.metriport_api_key,
        bot_ids={"patient": bots.get("patient_bot"), "webhook": bots.get("webhook_bot")},
        **fields,
    )


def serve_console(settings: Settings, host: str = "127.0.0.1", port: int = CONSOLE_PORT, *, fallback: bool = True):
    """Serve the console from a thread; returns the `Served` (url, stop()). A busy default port falls back to a free one."""
    from medport.emulator.serving import PortInUse, serve

    from .app import create_app

    if settings.host != host:
        settings = dataclasses.replace(settings, host=host)
    source = Source(settings)
    app = create_app(source)
    warm_up(app)
    try:
        served = serve(app, host, port, threads=4, name="medport-console", what="console", flag="--console-port")
    except PortInUse:
        if not fallback or port == 0:
            raise
        served = serve(app, host, 0, threads=4, name="medport-console", what="console", flag="--console-port")
    served.source = source  # type: ignore[attr-defined]
    served.console = app.extensions["medport_console"]  # type: ignore[attr-defined]
    return served


def warm_up(app) -> None:
    """Read the records and build the model in the background as the console starts, so the first page does not
    wait for the complete first read (an error is left for that page to show)."""
    import threading

    def build():
        try:
            app.extensions["medport_console"].integration()
        except Exception:
            pass

    threading.Thread(target=build, name="medport-console-warm-up", daemon=True).start()


def serve_for_stack(stack, cfg: Config | None, host: str = "127.0.0.1", port: int = CONSOLE_PORT):
    return serve_console(settings_for_stack(stack, cfg), host, port)


@click.command("console")
@medplum_options("emulator", purpose="whose records the console reads")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Keep it on loopback: 0.0.0.0 binds every interface (a warning says so).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another name the console answers to in the Host header (besides 127.0.0.1, localhost, [::1] "
    "and --host); repeatable. Needed to open it by this machine's name with --host 0.0.0.0.",
)
@click.option("--port", default=CONSOLE_PORT, show_default=True, type=int, help="Port (0 = any free port).")
@click.option(
    "--fhir-only",
    is_flag=True,
    help="Read only Medplum's FHIR records (AuditEvents, Tasks, Patients), never a developer API — what "
    "the console does against a real Medplum.",
)
@metriport_options
@config_option
@click.option(
    "--stuck-after",
    "stuck_after_s",
    default=300.0,
    show_default=True,
    help="Seconds after which a message waiting or in progress without a lease counts as stuck.",
)
@click.option(
    "--cache-seconds",
    "cache_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Pages reuse records read this recently (0: read on every page); only what changed is read again.",
)
@click.option(
    "--app-url",
    help="The Medplum app, for links to resources (default: app.medplum.com for "
    "api.medplum.com, else the FHIR API's URLs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the health figures as JSON and exit (no server).")
def console_command(
    base_url,
    client_id,
    client_secret,
    host,
    allowed_hosts,
    port,
    fhir_only,
    metriport_url,
    metriport_api_key,
    config_path,
    stuck_after_s,
    cache_s,
    app_url,
    as_json,
):
    """Serve the sync console: each Patient's sync state and timeline, what needs attention, replay and rerun."""
    from medport.emulator.serving import PortInUse, wait_for_stop

    from ..remote.medplum_http import MedplumError
    from .figures import health
    from .model import reconstruct

    if base_url and not (client_id and client_secret) and not statefile.running():
        click.echo("note: no --client-id/--client-secret given: using the emulator's admin client", err=True)
    settings = settings_for(
        base_url=base_url,
        client_id=client_id,
        client_secret=client_secret,
        fhir_only=fhir_only,
        metriport_url=metriport_url,
        metriport_api_key=metriport_api_key,
        cfg=_config(config_path),
        stuck_after_s=stuck_after_s,
    )
    settings = dataclasses.replace(
        settings, cache_s=cache_s, app_url=app_url, host=host, allowed_hosts=tuple(allowed_hosts)
    )
    if binds_everything(host) and not as_json:
        click.echo(
            f"warning: --host {host} binds every interface: anyone who can reach this machine can try to sign "
            "in to the console, over plain HTTP. Keep 127.0.0.1 unless you must; it answers to this machine's "
            "name, other names need --allowed-host.",
            err=True,
        )
    source = Source(settings)
    try:
        figures = health(reconstruct(source.snapshot()))
    except MedplumError as e:
        raise click.ClickException(f"cannot read {settings.base_url}: {e}") from None
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    try:
        served = serve_console(settings, host, port, fallback=False)
    except PortInUse as e:
        raise click.ClickException(str(e)) from None
    d = figures["deliveries"]
    click.echo(f"medport console: {served.url}   (sign in with the admin client's id and secret)")
    click.echo(
        f"  reading {settings.base_url} — "
        + (
            "FHIR records and the emulator's developer API"
            if settings.dev_api
            else "FHIR records only (AuditEvents, Tasks, Patients)"
        )
    )
    click.echo(
        f"  {figures['patients']['total']} Patient(s), {figures['messages']['total']} message(s), "
        f"{d['total']} webhook deliveries; Ctrl-C to stop"
    )
    try:
        wait_for_stop()
    finally:
        served.stop()
