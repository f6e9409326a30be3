"""`medport demo`: the whole flow, live, on a fresh emulator and fake Metriport."""

from __future__ import annotations

import time

import click

from ..generation.outputs import stale_files
from ..options import config_option, load_or_exit
from .flow import (
    count_imported,
    create_facility_org,
    create_patient,
    data_messages_per_patient,
    deliveries,
    runs,
    wait_for_consolidated,
)
from .stack import start_stack


class LiveView:
    """Prints bot runs and webhook deliveries as they appear (ids and outcomes only — no PHI)."""

    def __init__(self, stack, t0: float):
        self.stack, self.t0 = stack, t0
        self.seen_runs: set[str] = set()
        self.seen_deliveries: set[tuple] = set()
        self.seen_calls = 0

    def _t(self) -> str:
        return click.style(f"[{time.monotonic() - self.t0:6.2f}s]", dim=True)

    def tick(self) -> None:
        """Print what happened since the last tick, in time order (ISO timestamps sort as text)."""
        events: list[tuple[str, str]] = []
        calls = self.stack.fake.state.api_calls() if self.stack.fake else []
        for c in calls[self.seen_calls :]:
            events.append((c["when"], f"metriport    {c['method']:<4} {c['path']} → {c['status']}"))
        self.seen_calls = len(calls)
        for d in deliveries(self.stack):
            key = (d["messageId"], d["status"], d["attempts"])
            if d["status"] == "processing" or key in self.seen_deliveries:
                continue
            self.seen_deliveries.add(key)
            ms = f" in {d['durationMs']:.0f} ms" if d.get("durationMs") is not None else ""
            color = "green" if d["status"] == "success" else "red"
            events.append(
                (
                    d["when"],
                    f"webhook      {d['type']:<32} → "
                    + click.style(f"{d.get('httpStatus')} {d['status']}{ms}", fg=color),
                )
            )
        for r in reversed(runs(self.stack)):
            if r["id"] in self.seen_runs:
                continue
            self.seen_runs.add(r["id"])
            color = "green" if r["outcome"] == "success" else "red"
            trig = r["trigger"].split(":")[0]
            text = (
                f"bot          {r['bot_name']:<24} {trig:<12} "
                + click.style(r["outcome"], fg=color)
                + f" {r['duration_ms']:.0f} ms"
                + (f"  [{r['resource']}]" if r.get("resource") else "")
            )
            last = [ln for ln in (r.get("logs") or "").splitlines() if ln.strip()][-1:]
            if last:
                text += "\n" + click.style(f"{'':>24}↳ {last[0][:140]}", dim=True)
            events.append((r.get("started") or "", text))
        for _, text in sorted(events, key=lambda e: e[0]):
            click.echo(f"{self._t()} {text}")


@click.command("demo")
@config_option
@click.option(
    "--patient",
    default="Jane",
    show_default=True,
    type=click.Choice(["Jane", "Chris", "Ollie", "Andreas", "Kyla"]),
    help="Which sandbox seed patient to create.",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the data to arrive.")
@click.option(
    "--keep-running", is_flag=True, help="Keep the emulator and the fake serving after the demo (Ctrl-C to stop)."
)
def demo_command(config_path, patient, timeout, keep_running):
    """Run the whole flow end to end: Patient saved → patient bot → Metriport → signed webhooks →
    webhook bot → clinical data in Medplum. Exits 0 only when the data is really in Medplum."""
    cfg = load_or_exit(config_path)
    t0 = time.monotonic()
    step = lambda msg: click.echo(click.style("▸ ", fg="cyan") + msg)
    stale = stale_files(cfg, "bots")
    step(
        f"bots rendered from {config_path}"
        + (f" (bots/ has {len(stale)} stale file(s): run `medport generate`)" if stale else " (bots/ is up to date)")
    )
    step("starting the Medplum emulator (in memory) and the fake Metriport; deploying the bots …")
    stack = start_stack(cfg, echo=lambda s: None)
    try:
        _announce_stack(stack, t0, step)
        view = LiveView(stack, t0)
        _wait_for_webhook(stack, view, step)
        org = create_facility_org(stack)
        pat = create_patient(stack, patient, org["id"])
        step(f"created Organization/{org['id']} (facility id) and Patient/{pat['id']} ({patient}) through the FHIR API")
        outcome = wait_for_consolidated(
            stack, expected_messages=data_messages_per_patient(cfg), timeout=timeout, on_tick=view.tick
        )
        view.tick()
        imported = count_imported(stack)
        _print_imported(pat["id"], imported)
        if keep_running:
            click.echo(
                f"bot logs: `medport runs --base-url {stack.base_url}` (or GET {stack.base_url}_emulator/runs "
                "with the admin client's credentials)"
            )
        else:
            click.echo("to look around afterwards (bot logs, the sync console): `medport demo --keep-running`")
        _require_imported(outcome, imported)
        click.echo(click.style(f"✓ flow complete in {time.monotonic() - t0:.1f} s", fg="green", bold=True))
        if keep_running:
            _serve_console(stack, cfg, pat["id"])
    finally:
        stack.close()


def _announce_stack(stack, t0: float, step) -> None:
    counts: dict[str, int] = {}
    for c in stack.deploy.changes:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    step(
        f"Medplum emulator {stack.base_url}  ·  fake Metriport {stack.fake.base_url} "
        f"(facility {stack.fake.facility_id})"
    )
    step("deployed: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + f"  ({time.monotonic() - t0:.1f} s)")


def _wait_for_webhook(stack, view: LiveView, step) -> None:
    """Up to 10 s for the webhook bot to answer Metriport's ping (the fake enables the webhook then)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not stack.fake.state.webhook_status()["webhookEnabled"]:
        view.tick()
        time.sleep(0.05)
    view.tick()
    step(
        "webhook registered with Metriport; ping answered"
        if stack.fake.state.webhook_status()["webhookEnabled"]
        else click.style("webhook ping was not answered — see the webhook bot's run above", fg="red")
    )


def _print_imported(patient_id: str, imported: dict[str, int]) -> None:
    click.echo()
    click.echo(click.style(f"Resources now in Medplum for Patient/{patient_id}:", bold=True))
    width = max([len(k) for k in imported] + [8])
    for rt, n in sorted(imported.items()):
        click.echo(f"  {rt:<{width}}  {n:>5}")
    click.echo(f"  {'total':<{width}}  {sum(imported.values()):>5}")
    click.echo()


def _require_imported(outcome, imported: dict[str, int]) -> None:
    """The demo passes only when every message was imported and data is in Medplum."""
    if outcome.done and not outcome.failed_tasks and sum(imported.values()) > 0:
        return
    why = (
        "timed out waiting for the patient's data"
        if not outcome.done
        else f"{len(outcome.failed_tasks)} message(s) failed to import"
        if outcome.failed_tasks
        else "no resources were imported"
    )
    raise click.ClickException(f"demo failed: {why} — the bot runs above show where")


def _serve_console(stack, cfg, patient_id: str) -> None:
    """The sync console over the stack, until Ctrl-C."""
    from medport.defaults import DEFAULT_ADMIN_CLIENT_SECRET

    from ..console.command import serve_for_stack

    console = serve_for_stack(stack, cfg)
    emu = stack.emulator
    secret = emu.admin_client_secret if emu.admin_client_secret == DEFAULT_ADMIN_CLIENT_SECRET else "(yours)"
    click.echo(
        f"sync console: {console.url}patients/{patient_id}   (sign in with the admin client: "
        f"id {emu.admin_client_id}, secret {secret})"
    )
    click.echo("serving; Ctrl-C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        console.stop()
