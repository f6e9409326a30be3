"""`medport replay`: re-deliver a recorded Metriport webhook to the webhook bot, re-signed, or re-run
the stored messages whose processing failed. Safe: imports are idempotent upserts."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from datetime import datetime

import click
import requests

from . import statefile
from .config import Config
from .medplum_http import MedplumError, MedplumHttp, instant_now
from .render import MEDPORT_CODESYSTEM, MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT, MESSAGE_TASK_CODE
from .localdefaults import admin_credentials
from .manifest import webhook_execute_url
from .options import config_option, load_or_exit, medplum_options
from .progress import Progress

SHOWN_ONE_BY_ONE = 20   # more messages than this: a progress bar instead of a line each


def metriport_body(payload) -> str:
    """What Metriport sends: JSON.stringify(payload) — compact, key order kept, non-ASCII unescaped."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def sign(body: str, key: str) -> str:
    return hmac.new(key.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).hexdigest()


def load_webhook(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: cannot read a webhook JSON file ({e})") from None
    if isinstance(data, dict) and "payload" in data and "meta" not in data:
        data = data["payload"]  # a delivery record from the fake's /_fake/webhooks
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) and "ping" not in data:
        raise click.ClickException(f"{path}: not a Metriport webhook message (expected an object with `meta`)")
    return data


def deliver(url: str, payload, key: str, timeout: float = 30.0) -> requests.Response:
    body = metriport_body(payload)
    return requests.post(url, data=body.encode("utf-8"), timeout=timeout,
                         headers={"Content-Type": "application/json", "x-metriport-signature": sign(body, key)})


def emulator_target(cfg: Config, http: MedplumHttp) -> tuple[str, str]:
    """(webhook $execute URL with the webhook client's credentials, the project's webhook key) on a Medplum
    the admin client can read (the emulator by default)."""
    system = cfg.medplum.identifier_system
    spec = cfg.bots.webhook
    bot = http.search_one("find webhook bot", "Bot", f"identifier={system}|{spec.identifier}")
    if bot is None:
        raise MedplumError("find webhook bot", f"no Bot with identifier {spec.identifier} — deploy first "
                                               "(`medport emulate` does it at start; `medport deploy` elsewhere)")
    client = http.search_one("find webhook client", "ClientApplication", f"_tag={system}|webhook-client")
    if client is None:
        raise MedplumError("find webhook client", "the webhook ClientApplication is not deployed")
    client = http.fhir("read webhook client", "GET", f"ClientApplication/{client['id']}")
    me = http.request("read project", "GET", "auth/me")
    project = http.fhir("read project", "GET", f"Project/{me['project']['id']}")
    key = next((s.get("valueString") for s in project.get("secret", []) if s.get("name") == "METRIPORT_WEBHOOK_KEY"), "")
    return webhook_execute_url(http.base_url, bot["id"], client["id"], client["secret"]), key


def _ext(task: dict, url: str) -> dict | None:
    return next((e for e in task.get("extension") or [] if isinstance(e, dict) and e.get("url") == url), None)


def _iso_to_epoch(value: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def stuck_messages(http: MedplumHttp, stale_after_s: float = 120.0, now: float | None = None) -> list[tuple[dict, str]]:
    """Stored messages to run again, with why: failed ones; in progress whose lease expired (their processing
    was cut off: timeout, redeploy, restart); requested ones nothing picked up for `stale_after_s` (the
    subscription delivery was lost)."""
    now = time.time() if now is None else now
    code = f"{MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}"
    out: list[tuple[dict, str]] = []
    for status in ("failed", "in-progress", "requested"):
        found = http.fhir(f"find {status} messages", "GET", f"Task?code={code}&status={status}&_count=1000")
        for t in (e["resource"] for e in found.get("entry", [])):
            if status == "failed":
                out.append((t, "failed"))
            elif status == "in-progress":
                lease = _iso_to_epoch((_ext(t, MESSAGE_LEASE_EXT) or {}).get("valueDateTime"))
                if lease is None or lease <= now:
                    out.append((t, "cut off (lease expired)"))
            else:
                updated = _iso_to_epoch((t.get("meta") or {}).get("lastUpdated"))
                if updated is not None and updated < now - stale_after_s:
                    out.append((t, f"waiting for more than {stale_after_s:.0f} s"))
    return out


def requeue_body(task: dict) -> dict:
    """The Task put back in the queue by a person: status requested, attempts start over, the old outcome
    and lease dropped; the checkpoint kept, so the next run resumes where the last one stopped."""
    drop = {MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT}
    t = {k: v for k, v in task.items() if k not in ("statusReason", "output")}
    t["extension"] = [e for e in task.get("extension") or [] if e.get("url") not in drop]
    if not t["extension"]:
        del t["extension"]
    t["status"] = "requested"
    t["lastModified"] = instant_now()
    return t


def requeue_task(http: MedplumHttp, task: dict) -> dict:
    """Put one stored message back to `requested` (`requeue_body`), guarded by the version read (If-Match): a
    message that changed since (being processed) is not touched — MedplumError with status 412."""
    vid = (task.get("meta") or {}).get("versionId")
    return http.fhir(f"requeue Task/{task['id']}", "PUT", f"Task/{task['id']}", json_body=requeue_body(task),
                     headers={"If-Match": f'W/"{vid}"'} if vid else None)


def replay_failed(http: MedplumHttp, wait_s: float, echo=click.echo, stale_after_s: float = 120.0) -> tuple[int, int]:
    """Put every failed, cut-off or forgotten stored message back to `requested`: the Task subscription
    processes it again (from its checkpoint, attempts counted afresh)."""
    tasks = stuck_messages(http, stale_after_s)
    if not tasks:
        echo("no failed messages to replay (none cut off or left waiting either)")
        return 0, 0
    many = len(tasks) > SHOWN_ONE_BY_ONE   # then a progress bar (a line now and then off a terminal)
    bar = Progress(len(tasks), "requeued", echo=echo) if many else None
    for i, (t, why) in enumerate(tasks, 1):
        try:
            requeue_task(http, t)
        except MedplumError as e:
            if e.status == 412:
                echo(f"Task/{t['id']}: changed meanwhile (being processed) — left alone")
                continue
            raise
        if bar:
            bar.update(i)
        else:
            echo(f"requeued Task/{t['id']} ({t.get('description', 'message')}; {why})")
    if bar:
        bar.close(f"requeued {len(tasks)} message(s)")
    deadline = time.monotonic() + wait_s
    pending = {t["id"] for t, _ in tasks}
    ok = failed = 0
    bar = Progress(len(pending), "processed", echo=echo) if many else None
    while pending and time.monotonic() < deadline:
        time.sleep(0.3)
        for tid in list(pending):
            status = http.fhir("read Task", "GET", f"Task/{tid}")["status"]
            if status in ("completed", "failed"):
                pending.discard(tid)
                ok, failed = ok + (status == "completed"), failed + (status == "failed")
                if not bar or status == "failed" and failed <= SHOWN_ONE_BY_ONE:
                    echo(f"Task/{tid}: " + click.style(status, fg="green" if status == "completed" else "red"))
        if bar:
            bar.update(ok + failed, f"{failed} failed" if failed else "")
    if bar:
        bar.close(f"{ok} completed, {failed} failed")
    for i, tid in enumerate(pending):
        if i == SHOWN_ONE_BY_ONE:
            echo(f"… and {len(pending) - i} more still processing — check `medport runs`")
            break
        echo(f"Task/{tid}: still processing after {wait_s:.0f} s — check `medport runs`")
    return ok, failed


@click.command("replay")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@config_option
@click.option("--to", "to_url", help="A Medplum $execute URL (credentials may be inline). Default: the webhook bot on the emulator.")
@click.option("--webhook-key", envvar="METRIPORT_WEBHOOK_KEY", show_envvar=True,
              help="Key to sign with. Default on the emulator: its Project secret.")
@click.option("--failed", is_flag=True,
              help="Re-run the stored messages whose processing failed, was cut off (lease expired) or never started.")
@medplum_options("emulator", purpose="holding the webhook bot and its messages")
@click.option("--wait", "wait_s", default=60.0, show_default=True, help="With --failed: seconds to wait for the results.")
def replay_command(file, config_path, to_url, webhook_key, failed, base_url, client_id, client_secret, wait_s):
    """Re-deliver the Metriport webhook in FILE (JSON) to the webhook bot, re-signed, and show its answer."""
    if not file and not failed:
        raise click.UsageError("give a webhook FILE to replay, or --failed")
    admin_id, admin_secret = admin_credentials()
    http = MedplumHttp(statefile.emulator_base_url(base_url), client_id or admin_id, client_secret or admin_secret)
    try:
        if failed:
            stale = 120.0
            if os.path.exists(config_path):
                stale = float(load_or_exit(config_path).webhook_bot.lease_seconds)
            ok, bad = replay_failed(http, wait_s, stale_after_s=stale)
            if bad:
                raise click.ClickException(f"{bad} message(s) failed again — `medport runs --failed --logs` shows why")
            return
        payload = load_webhook(file)
        key = webhook_key
        if not to_url:
            to_url, project_key = emulator_target(load_or_exit(config_path), http)
            key = key or project_key
        if not key:
            raise click.ClickException("no webhook key: pass --webhook-key or set METRIPORT_WEBHOOK_KEY")
    except MedplumError as e:
        raise click.ClickException(str(e)) from None
    kind = payload.get("meta", {}).get("type", "ping" if "ping" in payload else "?")
    shown = to_url.split("@", 1)[-1] if "@" in to_url else to_url
    click.echo(f"replaying {kind} message {payload.get('meta', {}).get('messageId', '')} → {shown}")
    t0 = time.monotonic()
    try:
        resp = deliver(to_url, payload, key)
    except requests.RequestException as e:
        raise click.ClickException(f"delivery failed: {type(e).__name__} — is the server up?") from None
    ms = (time.monotonic() - t0) * 1000
    click.echo(f"answer: HTTP {resp.status_code} in {ms:.0f} ms")
    click.echo(resp.text[:2000])
    if resp.status_code >= 300:
        raise click.ClickException("the webhook bot refused the message")
