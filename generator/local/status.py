"""`medport status`: is an emulator running from this folder, is it ready, where is everything."""

from __future__ import annotations

import json

import click
import requests

from medport.defaults import admin_credentials

from .. import statefile
from ..generation.config import CONFIG_FILENAME
from ..options import config_option, medplum_options


def probe(base_url: str, timeout: float = 5.0) -> dict:
    """The emulator's health (with the admin client's credentials, which the developer API may require)."""
    try:
        r = requests.get(base_url.rstrip("/") + "/_emulator/health", timeout=timeout, auth=admin_credentials())
    except requests.RequestException as e:
        return {"reachable": False, "error": type(e).__name__}
    try:
        body = r.json()
    except ValueError:
        return {"reachable": True, "ready": False, "error": f"HTTP {r.status_code}, not the medport emulator?"}
    return {"reachable": True, **body} if isinstance(body, dict) else {"reachable": True, "ready": False}


def run_counts(base_url: str) -> dict | None:
    try:
        r = requests.get(
            base_url.rstrip("/") + "/_emulator/runs", params={"limit": 10000}, timeout=5, auth=admin_credentials()
        )
        runs = r.json()["runs"] if r.status_code == 200 else None
    except (requests.RequestException, ValueError, KeyError):
        return None
    if runs is None:
        return None
    return {"runs": len(runs), "failed": sum(1 for x in runs if x.get("outcome") != "success")}


def _answers(url: str | None) -> bool:
    if not url:
        return False
    try:
        requests.get(url.rstrip("/") + "/medical/v1/", timeout=3)
    except requests.RequestException:
        return False
    return True


def integration_figures(
    base_url: str | None,
    client_id: str | None,
    client_secret: str | None,
    fhir_only: bool = False,
    config_path: str = CONFIG_FILENAME,
) -> dict:
    """The console's health figures (`medport.generator.console.figures.health`), or {"error": ...}."""
    from ..console.command import settings_for
    from ..console.figures import health
    from ..console.model import reconstruct
    from ..console.source import Source
    from ..generation.config import ConfigError, load_config
    from ..remote.medplum_http import MedplumError

    try:
        cfg = load_config(config_path)
    except (ConfigError, OSError):
        cfg = None
    settings = settings_for(
        base_url=base_url,
        client_id=client_id,
        client_secret=client_secret,
        fhir_only=fhir_only,
        metriport_url=None,
        metriport_api_key=None,
        cfg=cfg,
    )
    try:
        return health(reconstruct(Source(settings).snapshot()))
    except (MedplumError, requests.RequestException) as e:
        return {"error": str(e)}


def _echo_integration(fig: dict) -> None:
    if "error" in fig:
        click.echo(click.style(f"sync       could not read the records: {fig['error']}", fg="red"))
        return
    d, m, p, s, a = fig["deliveries"], fig["messages"], fig["processing"], fig["stuck"], fig["aggregation"]
    rate = "—" if d["success_rate"] is None else f"{d['success_rate'] * 100:.1f} %"
    click.echo(f"webhooks   {d['total']} delivered to the webhook bot, {rate} acknowledged within 4 s")
    click.echo(
        f"messages   {m['total']} stored: "
        + (", ".join(f"{n} {k}" for k, n in m["by_status"].items()) or "none")
        + (click.style(f"; {p['failed_messages']} failed", fg="red") if p["failed_messages"] else "")
        + (click.style(f"; {s['count']} stuck", fg="yellow") if s["count"] else "")
    )
    if a["count"]:
        click.echo(
            f"aggregation  query start → data in Medplum: p50 {a['p50_s']:.1f} s, p95 {a['p95_s']:.1f} s "
            f"({a['count']} done, {a['pending']} awaiting data)"
        )
    wh = fig["metriport_webhook"]
    if wh["configured"]:
        label = "enabled" if wh.get("enabled") else "DISABLED" if wh.get("enabled") is False else "unknown"
        click.echo(f"Metriport  webhook {label}" + (f" ({wh['detail']})" if wh.get("detail") else ""))


@click.command("status")
@medplum_options("emulator", purpose="(with --client-id/--client-secret: the integration's figures from its records)")
@config_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the status as JSON; `integration` holds the sync console's health figures.",
)
def status_command(base_url, client_id, client_secret, config_path, as_json):
    """Show the emulator running from this folder: URLs, readiness, deployed bots, runs, and the integration's
    health figures (those of `medport console`). Exit 1 when none is ready."""
    if base_url and client_id and client_secret:
        _status_of_server(base_url, client_id, client_secret, config_path, as_json)
        return
    state = None if base_url else _running_here(as_json)
    url = base_url or state["base_url"]
    health = probe(url)
    counts = run_counts(url) if health.get("reachable") else None
    fake_up = _answers((state or {}).get("metriport_url")) if (state or {}).get("metriport") == "fake" else None
    fig = (
        integration_figures(base_url, None, None, config_path=config_path)
        if health.get("reachable") and health.get("ready")
        else None
    )
    out = {
        "running": bool(health.get("reachable")),
        "ready": bool(health.get("ready")),
        "base_url": url,
        "health": health,
        "state": state,
        "runs": counts,
        "fake_metriport_answers": fake_up,
        "console_url": (state or {}).get("console_url"),
        "integration": fig,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        _echo_status(out)
    if not out["ready"]:
        raise SystemExit(1)


def _status_of_server(base_url: str, client_id: str, client_secret: str, config_path, as_json: bool) -> None:
    """A server named with its admin credentials: the integration's figures from its FHIR API only."""
    fig = integration_figures(base_url, client_id, client_secret, fhir_only=True, config_path=config_path)
    if as_json:
        click.echo(json.dumps({"running": "error" not in fig, "base_url": base_url, "integration": fig}, indent=2))
    else:
        click.echo(f"Medplum    {base_url}")
        _echo_integration(fig)
    if "error" in fig:
        raise SystemExit(1)


def _running_here(as_json: bool) -> dict:
    """The state file of the emulator running from this folder, or exit 1 saying why there is none."""
    state = statefile.read()
    if state and statefile.pid_alive(state.get("pid")):
        return state
    why = (
        (f"{statefile.STATE_FILE} names pid {state.get('pid')}, which is not running (stale: the emulator was killed)")
        if state
        else f"no {statefile.STATE_FILE} here"
    )
    if as_json:
        click.echo(json.dumps({"running": False, "reason": why}))
        raise SystemExit(1)
    raise click.ClickException(f"no emulator running from this folder ({why}) — start one with `medport emulate`")


def _echo_status(out: dict) -> None:
    state, health, counts, fig = out["state"], out["health"], out["runs"], out["integration"]
    ok = click.style("ready", fg="green") if out["ready"] else click.style("not ready", fg="red")
    click.echo(
        f"emulator   {out['base_url']}  {ok}"
        + (f"  (pid {state['pid']}, since {state.get('started')})" if state else "")
    )
    if not health.get("reachable"):
        click.echo(f"           does not answer ({health.get('error')})")
    for what in health.get("waiting_for", []):
        click.echo(f"           waiting for {what}")
    if state:
        _echo_state(state, out["fake_metriport_answers"])
    if counts is not None:
        click.echo(
            f"runs       {counts['runs']} bot execution(s), {counts['failed']} failed"
            + ("  → `medport runs --failed --logs`" if counts["failed"] else "")
        )
    if fig is not None:
        _echo_integration(fig)
    if out["console_url"]:
        click.echo(f"console    {out['console_url']}")


def _echo_state(state: dict, fake_up: bool | None) -> None:
    click.echo(f"FHIR       {state.get('fhir_url')}")
    click.echo(f"storage    {state.get('storage')}")
    bots = state.get("bots") or {}
    click.echo("bots       " + (", ".join(f"{k}=Bot/{v}" for k, v in bots.items()) if bots else "none deployed"))
    if state.get("metriport") == "fake":
        click.echo(
            f"Metriport  fake at {state.get('metriport_url')}/medical/v1 (facility {state.get('facility_id')})"
            + ("" if fake_up else click.style("  — does not answer", fg="red"))
        )
    else:
        click.echo(f"Metriport  {state.get('metriport_url')}")
