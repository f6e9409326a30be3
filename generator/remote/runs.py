"""`medport runs`: bot executions — from the emulator's developer API, or a real Medplum's AuditEvents."""

from __future__ import annotations

import time
from datetime import datetime

import click
import requests

from medport.defaults import DEFAULT_ADMIN_CLIENT_ID, DEFAULT_ADMIN_CLIENT_SECRET

from .. import statefile
from ..options import admin_options, medplum_options
from .medplum_http import MedplumError, MedplumHttp, not_json_reason

AUDIT_FAILURE = {"4", "8", "12"}


def _dur_ms(period: dict) -> float | None:
    try:
        a = datetime.fromisoformat(period["start"].replace("Z", "+00:00"))
        b = datetime.fromisoformat(period["end"].replace("Z", "+00:00"))
        return (b - a).total_seconds() * 1000
    except (KeyError, ValueError, AttributeError):
        return None


def runs_from_audit_events(http: MedplumHttp, bot: str | None, limit: int) -> list[dict]:
    """Medplum records one AuditEvent per bot execution (type execute; outcome 0 = success; outcomeDesc = logs)."""
    query = f"AuditEvent?_sort=-_lastUpdated&_count={min(limit * 2, 1000)}"
    bot_ids: dict[str, str] = {}
    if bot:
        found = http.fhir("find bot", "GET", f"Bot?name={bot}")
        ids = [e["resource"]["id"] for e in found.get("entry", [])] or [bot]
        query += "&entity=" + ",".join(f"Bot/{i}" for i in ids)
    out = []
    for e in http.fhir("read AuditEvents", "GET", query).get("entry", []):
        ae = e["resource"]
        bot_ref = next(
            (
                x["what"]["reference"]
                for x in ae.get("entity", [])
                if x.get("what", {}).get("reference", "").startswith("Bot/")
            ),
            None,
        )
        if not bot_ref:
            continue
        bot_id = bot_ref.split("/", 1)[1]
        if bot_id not in bot_ids:
            bot_ids[bot_id] = http.fhir("read bot", "GET", bot_ref).get("name", bot_id)
        sub = next(
            (
                x["what"]["reference"]
                for x in ae.get("entity", [])
                if x.get("what", {}).get("reference", "").startswith("Subscription/")
            ),
            None,
        )
        out.append(
            {
                "id": ae["id"],
                "bot_id": bot_id,
                "bot_name": bot_ids[bot_id],
                "trigger": f"subscription:{sub.split('/', 1)[1]}" if sub else "execute",
                "outcome": "failure" if ae.get("outcome") in AUDIT_FAILURE else "success",
                "duration_ms": _dur_ms(ae.get("period") or {}),
                "started": (ae.get("period") or {}).get("start", ""),
                "logs": ae.get("outcomeDesc", ""),
            }
        )
    return out[:limit]


def runs_from_emulator(
    base_url: str,
    bot: str | None,
    failed: bool,
    limit: int,
    admin: tuple[str, str] = (DEFAULT_ADMIN_CLIENT_ID, DEFAULT_ADMIN_CLIENT_SECRET),
) -> list[dict]:
    """The emulator's developer API; it answers only its admin client (Basic `admin` = (id, secret))."""
    params: dict[str, int | str] = {"limit": limit}
    if bot:
        params["bot"] = bot
    if failed:
        params["failed"] = "true"
    try:
        r = requests.get(base_url.rstrip("/") + "/_emulator/runs", params=params, auth=admin, timeout=10)
    except requests.ConnectionError:
        raise click.ClickException(
            f"no emulator at {base_url} — start one with `medport emulate`, or pass "
            "--base-url with --client-id/--client-secret to read a Medplum server's AuditEvents"
        ) from None
    if r.status_code in (401, 403):
        raise click.ClickException(
            f"{base_url}_emulator/runs refused the admin client {admin[0]!r} (HTTP {r.status_code}) "
            "— pass the emulator's --admin-client-id/--admin-client-secret "
            "(env MEDPORT_ADMIN_CLIENT_ID/MEDPORT_ADMIN_CLIENT_SECRET)"
        )
    body = _json_object(r)
    if body is None or not isinstance(body.get("runs"), list):
        raise click.ClickException(
            f"{base_url} is not the medport emulator ({_what_answered(r)}): to list the bot runs "
            "of a Medplum server, pass --client-id/--client-secret (it reads its AuditEvents)"
        )
    if r.status_code != 200:
        raise click.ClickException(f"{base_url}_emulator/runs answered HTTP {r.status_code}")
    return body["runs"]


def _json_object(r: requests.Response) -> dict | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _what_answered(r: requests.Response) -> str:
    return f"HTTP {r.status_code}" + (f", {not_json_reason(r)}" if _json_object(r) is None else "")


def format_run(r: dict, full_logs: bool) -> str:
    color = "green" if r["outcome"] == "success" else "red"
    dur = f"{r['duration_ms']:.0f} ms" if r.get("duration_ms") is not None else "?"
    head = (
        f"{(r.get('started') or '')[:23]:<23}  {r.get('bot_name') or r.get('bot_id'):<26} "
        f"{(r.get('trigger') or '')[:28]:<28} " + click.style(f"{r['outcome']:<8}", fg=color) + f" {dur:>8}"
    )
    logs = [ln for ln in (r.get("logs") or "").splitlines() if ln.strip()]
    if not full_logs:
        logs = logs[-1:]
    return "\n".join([head, *(click.style(f"    {ln}", dim=True) for ln in logs)])


@click.command("runs")
@click.option("--bot", help="Only this bot (name or id).")
@click.option("--failed", is_flag=True, help="Only failed executions.")
@click.option("--limit", default=20, show_default=True, help="How many, the newest.")
@click.option("--follow", is_flag=True, help="Then keep printing new executions as they come, below (Ctrl-C to stop).")
@click.option(
    "--logs", "full_logs", is_flag=True, help="Show the whole captured log of each run, not only its last line."
)
@medplum_options("emulator", purpose="(with --client-id/--client-secret: its AuditEvents)")
@admin_options
def runs_command(
    bot, failed, limit, follow, full_logs, base_url, client_id, client_secret, admin_client_id, admin_client_secret
):
    """List bot executions with outcome, duration and logs, the newest first."""
    base_url = statefile.emulator_base_url(base_url)
    http = MedplumHttp(base_url, client_id, client_secret) if client_id and client_secret else None

    def fetch() -> list[dict]:
        if http is None:
            return runs_from_emulator(base_url, bot, failed, limit, (admin_client_id, admin_client_secret))
        try:
            items = runs_from_audit_events(http, bot, limit)
        except MedplumError as e:
            raise click.ClickException(str(e)) from None
        return [r for r in items if not failed or r["outcome"] != "success"]

    items = fetch()
    if not items and not follow:
        click.echo("no bot executions" + (" matching the filters" if bot or failed else " yet"))
    for r in items:  # newest first, as both sources answer
        click.echo(format_run(r, full_logs))
    if not follow:
        return
    seen = {r["id"] for r in items}
    try:
        while True:
            time.sleep(1.0)
            for r in reversed(fetch()):
                if r["id"] not in seen:
                    seen.add(r["id"])
                    click.echo(format_run(r, full_logs))
    except KeyboardInterrupt:
        pass
