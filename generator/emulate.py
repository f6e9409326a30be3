"""`medport emulate` = the emulator's own command plus what only medport knows: at start, the fake
Metriport beside it and, when a medport.toml is in the working directory, the bots generated from it
deployed through the same code as `medport deploy` (medport.generator.stack.deploy_into)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from medport.emulator.medplum.server import EMULATE_HOOKS, emulate_command  # noqa: F401 — the command medport exposes

from .config import CONFIG_FILENAME, ConfigError, load_config
from .medplum_http import MedplumError
from .stack import SANDBOX_URL, deploy_into


_RUNNING: list = []


def _on_ready(handle, extra: dict) -> None:
    fake = None
    if extra.get("metriport", "fake") == "fake":
        from medport.emulator.metriport.server import make_server

        port = int(extra.get("metriport_port") or 0)
        try:
            fake = make_server(host="127.0.0.1", port=port, data_path=extra.get("metriport_data"))
        except OSError as e:
            raise click.ClickException(f"cannot start the fake Metriport on 127.0.0.1:{port} ({e.strerror or e}) — "
                                       "pass --metriport-port (0 picks a free port), or --metriport sandbox") from None
        _RUNNING.append(fake)  # lives as long as the emulator process
        base, api_key = fake.base_url, fake.api_key
        click.echo(f"fake Metriport listening on {base}/medical/v1")
        click.echo(f"  api key:       {api_key}   (header x-api-key; a local fake key)")
        click.echo(f"  facility id:   {fake.facility_id}")
        click.echo(f"  developer API: {base}/_fake/webhooks, {base}/_fake/faults")
    else:
        base = os.environ.get("METRIPORT_BASE_URL", SANDBOX_URL)
        api_key = os.environ.get("METRIPORT_API_KEY", "")
        click.echo(f"Metriport: the real service at {base}")
        if not api_key:
            click.echo(click.style("  METRIPORT_API_KEY is not set: the patient bot will fail until it is", fg="yellow"))
    if not extra.get("deploy", True):
        click.echo("bots: not deployed (--no-deploy)")
        return
    if not Path(CONFIG_FILENAME).exists():
        click.echo(f"bots: no {CONFIG_FILENAME} here, nothing deployed (`medport init` writes one)")
        return
    try:
        cfg = load_config(CONFIG_FILENAME)
    except ConfigError as e:
        click.echo(click.style(f"bots: not deployed — {e}", fg="red"))
        return
    webhook_key = os.environ.get("METRIPORT_WEBHOOK_KEY") or secrets.token_hex(32)
    try:
        result, _admin, url = deploy_into(handle, cfg, metriport_base_url=base, api_key=api_key,
                                          webhook_key=webhook_key)
    except MedplumError as e:
        click.echo(click.style(f"bots: deployment failed at {e}", fg="red"))
        return
    changed = sorted({c.kind for c in result.changes if c.status != "unchanged"})
    click.echo(f"bots: deployed from {CONFIG_FILENAME} ({'changed: ' + ', '.join(changed) if changed else 'no change'}): "
               + ", ".join(f"{k}=Bot/{v}" for k, v in result.bot_ids.items()))
    if fake is not None:
        fake.state.set_webhook(url, webhook_key, ping=True)
        click.echo("  webhook bot registered as the fake Metriport's webhook URL (ping sent)")
    else:
        click.echo("  Metriport cannot reach this machine's loopback address: expose the webhook with a public URL,")
        click.echo("  or save a delivery and re-send it with `medport replay FILE`.")


EMULATE_HOOKS.append(_on_ready)
