"""`medport replay`: re-deliver a recorded Metriport webhook to the webhook bot, re-signed, or re-run
the stored messages whose processing failed. Safe: imports are idempotent upserts."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime

import click
import requests

from medport.defaults import admin_credentials
from medport.emulator.metriport.webhooks import SIGNATURE_HEADER, sign

from .. import statefile
from ..generation.config import Config
from ..generation.fhir_codes import MEDPORT_CODESYSTEM, MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT, MESSAGE_TASK_CODE
from ..generation.manifest import webhook_execute_url
from ..options import config_option, load_or_exit, medplum_options
from ..progress import Progress
from .medplum_http import MedplumError, MedplumHttp, instant_now

SHOWN_ONE_BY_ONE = 20  # more messages than this: a progress bar instead of a line each


def metriport_body(payload) -> str:
    """What Metriport sends: JSON.stringify(payload) — compact, key order kept, non-ASCII unescaped."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def load_webhook(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: cannot read a webhook JSON file ({e})") from None
    if isinstance(data, dict) and "payload" in data and "meta" not in data:
        data = data["payload"]  # a delivery record from the fake's /_fake/webhooks
    if not isinstance(data, dict) or (not isinstance(data.get("meta"), dict) and "ping" not in data):
        raise click.ClickException(f"{path}: not a Metriport webhook message (expected an object with `meta`)")
    return data


def deliver(url: str, payload, key: str, timeout: float = 30.0) -> requests.Response:
    body = metriport_body(payload)
    return requests.post(
        url,
        data=body.encode("utf-8"),
        timeout=timeout,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(key, body)},
    )


def emulator_target(cfg: Config, http: MedplumHttp) -> tuple[str, str]:
    """(webhook $execute URL with the webhook client's credentials, the project's webhook key) on a Medplum
    the admin client can read (the emulator by default)."""
    system = cfg.medplum.identifier_system
    spec = cfg.bots.webhook
    bot = http.search_one("find webhook bot", "Bot", f"identifier={system}|{spec.identifier}")
    if bot is None:
        raise MedplumError(
            "find webhook bot",
            f"no Bot with identifier {spec.identifier} — deploy first "
            "(`medport emulate` does it at start; `medport deploy` elsewhere)",
        )
    client = http.search_one("find webhook client", "ClientApplication", f"_tag={system}|webhook-client")
    if client is None:
        raise MedplumError("find webhook client", "the webhook ClientApplication is not deployed")
    client = http.fhir("read webhook client", "GET", f"ClientApplication/{client['id']}")
    me = http.request("read project", "GET", "auth/me")
    project = http.fhir("read project", "GET", f"Project/{me['project']['id']}")
    key = next(
        (s.get("valueString") for s in project.get("secret", []) if s.get("name") == "METRIPORT_WEBHOOK_KEY"), ""
    )
    return webhook_execute_url(http.base_url, bot["id"], client["id"], client["secret"]), key


def _ext(task: dict, url: str) -> dict | None:
    return next((e for e in task.get("extension") or [] if isinstance(e, dict) and e.get("url") == url), None)


def _iso_to_epoch(value: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass
class MessageStates:
    """Stored messages by what `replay --failed` can do with them."""

    stuck: list[tuple[dict, str]]  # to run again, with why: failed, cut off, or forgotten
    in_flight: list[tuple[dict, float]]  # in progress under a live lease, with its seconds left


def message_states(http: MedplumHttp, stale_after_s: float = 30.0, now: float | None = None) -> MessageStates:
    """Failed messages; in progress whose lease expired (their processing was cut off: timeout, redeploy,
    restart); requested ones nothing picked up for `stale_after_s` (the subscription delivery was lost); and those
    still in progress under a live lease (a run holds them — or held them, if it crashed since)."""
    now = time.time() if now is None else now
    code = f"{MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}"
    out = MessageStates([], [])
    for status in ("failed", "in-progress", "requested"):
        found = http.fhir(f"find {status} messages", "GET", f"Task?code={code}&status={status}&_count=1000")
        for t in (e["resource"] for e in found.get("entry", [])):
            if status == "failed":
                out.stuck.append((t, "failed"))
            elif status == "in-progress":
                lease = _iso_to_epoch((_ext(t, MESSAGE_LEASE_EXT) or {}).get("valueDateTime"))
                if lease is None or lease <= now:
                    out.stuck.append((t, "cut off (lease expired)"))
                else:
                    out.in_flight.append((t, lease - now))
            else:
                updated = _iso_to_epoch((t.get("meta") or {}).get("lastUpdated"))
                if updated is not None and updated < now - stale_after_s:
                    out.stuck.append((t, f"waiting for more than {stale_after_s:.0f} s"))
    return out


def stuck_messages(http: MedplumHttp, stale_after_s: float = 30.0, now: float | None = None) -> list[tuple[dict, str]]:
    """The stored messages to run again, with why (`message_states(...).stuck`)."""
    return message_states(http, stale_after_s, now).stuck


def _described(t: dict) -> str:
    return f"Task/{t['id']} ({t.get('description', 'message')}"


def requeue_body(task: dict) -> dict:
    """The Task put back in the queue: status requested, attempts start over, the old outcome and lease dropped;
    the checkpoint kept, so the next run resumes where the last one stopped. What the webhook bot writes when it
    is asked to requeue (`requeue_task`); written by anyone else, the bot refuses the Task."""
    drop = {MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT}
    t = {k: v for k, v in task.items() if k not in ("statusReason", "output")}
    t["extension"] = [e for e in task.get("extension") or [] if e.get("url") not in drop]
    if not t["extension"]:
        del t["extension"]
    t["status"] = "requested"
    t["lastModified"] = instant_now()
    return t


def webhook_bot_id(http: MedplumHttp, cfg: Config | None = None, tasks=()) -> str:
    """The webhook bot's id: by its identifier (from the config), else the Bot that stored one of the messages
    (meta.author, read in extended mode)."""
    if cfg is not None:
        system = cfg.medplum.identifier_system
        bot = http.search_one("find webhook bot", "Bot", f"identifier={system}|{cfg.bots.webhook.identifier}")
        if bot is not None:
            return bot["id"]
    for t in tasks:
        author = ((t.get("meta") or {}).get("author") or {}).get("reference", "")
        if author.startswith("Bot/"):
            return author.split("/", 1)[1]
    raise MedplumError(
        "find webhook bot",
        "no webhook bot found — deploy first (`medport emulate` does it at start; "
        "`medport deploy` elsewhere), or pass -c with your medport.toml",
    )


def requeue_task(http: MedplumHttp, task: dict, bot_id: str, take_over: bool = False) -> dict:
    """Put one stored message back in the queue through the webhook bot itself (`$execute` with
    `{"medportRequeue": <Task id>}`): the bot checks the message's stored signature and writes the Task as itself —
    a message Task written by anyone else is refused by the bot, so people never write it. A message that changed
    since (being processed), or that does not verify, is not touched: MedplumError with status 412."""
    body = {"medportRequeue": task["id"], **({"takeOver": True} if take_over else {})}
    out = http.fhir(f"requeue Task/{task['id']}", "POST", f"Bot/{bot_id}/$execute", json_body=body)
    if not isinstance(out, dict) or not out.get("requeued"):
        reason = out.get("reason") if isinstance(out, dict) else None
        raise MedplumError(f"requeue Task/{task['id']}", reason or "not requeued", 412)
    return out


def replay_failed(
    http: MedplumHttp,
    wait_s: float,
    echo=click.echo,
    stale_after_s: float = 30.0,
    take_over: bool = False,
    cfg: Config | None = None,
) -> tuple[int, int]:
    """Put every failed, cut-off or forgotten stored message back to `requested` (through the webhook bot): the
    Task subscription processes it again (from its checkpoint, attempts counted afresh). Messages still under a
    lease are listed with the time left; `take_over` requeues them too (the user says the run holding them is dead:
    it stops at its next lease renewal if it is not)."""
    states = message_states(http, stale_after_s)
    tasks = _to_requeue(states, take_over, echo)
    if not tasks:
        echo("no failed messages to replay (none cut off or left waiting either)")
        return 0, 0
    bot_id = webhook_bot_id(http, cfg, [t for t, _ in tasks])
    many = len(tasks) > SHOWN_ONE_BY_ONE  # then a progress bar (a line now and then off a terminal)
    in_flight = {t["id"] for t, _ in states.in_flight}
    _requeue_all(http, tasks, bot_id, in_flight, echo, many)
    return _await_outcomes(http, {t["id"] for t, _ in tasks}, wait_s, echo, many)


def _to_requeue(states, take_over: bool, echo) -> list[tuple[dict, str]]:
    """The stuck messages, and those in flight when `take_over`; the others in flight are named, not touched."""
    tasks = list(states.stuck)
    for n, (t, left) in enumerate(states.in_flight):
        if take_over:
            tasks.append((t, f"in progress, lease taken over {left:.0f} s before it ran out"))
        elif n < SHOWN_ONE_BY_ONE:
            echo(
                f"{_described(t)}) is in progress under a lease for {left:.0f} s more: a run holds it, or held it "
                "before a crash"
            )
    if states.in_flight and not take_over:
        echo(
            f"{len(states.in_flight)} message(s) in flight: the sweep resumes them once their lease runs out; if "
            "their run is dead (the server or the emulator crashed), `medport replay --failed --take-over` resumes "
            "them now"
        )
    return tasks


def _requeue_all(
    http: MedplumHttp, tasks: list[tuple[dict, str]], bot_id: str, in_flight: set[str], echo, many: bool
) -> None:
    """Each Task back to `requested`; one changed meanwhile (412) is left alone."""
    bar = Progress(len(tasks), "requeued", echo=echo) if many else None
    for i, (t, why) in enumerate(tasks, 1):
        try:
            requeue_task(http, t, bot_id, take_over=t["id"] in in_flight)
        except MedplumError as e:
            if e.status == 412:
                echo(f"Task/{t['id']}: left alone — {str(e).split(': ', 1)[-1]}")
                continue
            raise
        if bar:
            bar.update(i)
        else:
            echo(f"requeued {_described(t)}; {why})")
    if bar:
        bar.close(f"requeued {len(tasks)} message(s)")


def _await_outcomes(http: MedplumHttp, pending: set[str], wait_s: float, echo, many: bool) -> tuple[int, int]:
    """(completed, failed) among the requeued Tasks within `wait_s`; those still processing are named."""
    deadline = time.monotonic() + wait_s
    ok = failed = 0
    bar = Progress(len(pending), "processed", echo=echo) if many else None
    while pending and time.monotonic() < deadline:
        time.sleep(0.3)
        for tid in list(pending):
            status = http.fhir("read Task", "GET", f"Task/{tid}")["status"]
            if status in ("completed", "failed", "rejected"):
                pending.discard(tid)
                ok, failed = ok + (status == "completed"), failed + (status != "completed")
                if not bar or (status != "completed" and failed <= SHOWN_ONE_BY_ONE):
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
@click.option(
    "--to",
    "to_url",
    help="A Medplum $execute URL (credentials may be inline). Default: the webhook bot on the emulator.",
)
@click.option(
    "--webhook-key",
    envvar="METRIPORT_WEBHOOK_KEY",
    show_envvar=True,
    help="Key to sign with. Default on the emulator: its Project secret.",
)
@click.option(
    "--failed",
    is_flag=True,
    help="Re-run the stored messages whose processing failed, was cut off (lease expired) or never started; "
    "list those still under a lease, with the time left.",
)
@click.option(
    "--take-over",
    is_flag=True,
    help="With --failed: also resume the messages still under a lease now (after a crash: their run is dead).",
)
@medplum_options("emulator", purpose="holding the webhook bot and its messages")
@click.option(
    "--wait", "wait_s", default=60.0, show_default=True, help="With --failed: seconds to wait for the results."
)
def replay_command(
    file, config_path, to_url, webhook_key, failed, take_over, base_url, client_id, client_secret, wait_s
):
    """Re-deliver the Metriport webhook in FILE (JSON) to the webhook bot, re-signed, and show its answer."""
    if not file and not failed:
        raise click.UsageError("give a webhook FILE to replay, or --failed")
    if take_over and not failed:
        raise click.UsageError("--take-over goes with --failed")
    admin_id, admin_secret = admin_credentials()
    http = MedplumHttp(statefile.emulator_base_url(base_url), client_id or admin_id, client_secret or admin_secret)
    try:
        if failed:
            stale, cfg = 30.0, None
            if os.path.exists(config_path):
                cfg = load_or_exit(config_path)
                stale = float(cfg.webhook_bot.lease_seconds)
            _ok, bad = replay_failed(http, wait_s, stale_after_s=stale, take_over=take_over, cfg=cfg)
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
