"""Developer API under `/_emulator/` (LocalStack-style inspection and reset).

Access rule: only the emulator's own admin client (`Settings.admin_client_id`), by a Bearer token from
client_credentials or by Basic `id:secret`. There is no exemption for loopback peers: bots, other users
of the machine and tunnels all arrive from 127.0.0.1. No credentials (or bad ones) → 401; any other
principal (a project client, a bot's own token, another admin membership) → 403.
`/_emulator/health` stays open (readiness probes) and tells nothing secret.

No answer here carries a secret: run logs and errors have every known secret value (Project secrets,
ClientApplication secrets) and any Authorization credentials replaced by `[redacted]`.

Faults production throws: `GET /executions`, `POST /executions/cut-off?bot=`, `POST /restart`, `GET /cron`,
`POST /cron/run?bot=`, `GET|POST /faults` (`conflict_next`, `batch_delay_ms`).
"""

from __future__ import annotations

import platform
import re
import sys
import time
from typing import Any

from flask import Blueprint, Response, request

from .errors import BadRequest, Forbidden
from .httpio import current_backend, json_response
from .settings import PROJECT_ID, VERSION

bp = Blueprint("medport_dev", __name__, url_prefix="/_emulator")


def _guard() -> None:
    """Only the emulator's admin client passes (401 without valid credentials, 403 for anyone else)."""
    st = current_backend()
    principal = st.auth.authenticate(request.headers.get("Authorization"))  # raises Unauthorized (401)
    if principal.profile != f"ClientApplication/{st.settings.admin_client_id}":
        raise Forbidden()


REDACTED = "[redacted]"
_CREDENTIALS = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_USERINFO = re.compile(r"(\bhttps?://)[^/@\s:]+:[^/@\s]+@")


def secret_values(st) -> list[str]:
    """Every secret the emulator knows of: Project secrets (all projects) and ClientApplication secrets."""
    values: set[str] = {st.settings.admin_client_secret}
    for project in st.search("Project"):
        for s in project.get("secret") or []:
            if isinstance(s, dict):
                values.update(v for k, v in s.items() if k.startswith("value") and isinstance(v, str))
    for client in st.search("ClientApplication"):
        values.update(str(client[k]) for k in ("secret", "retiringSecret") if client.get(k))
    # longest first, so a secret containing another one is replaced whole; short values would blank out
    # ordinary words, and a secret of 1-3 characters protects nothing anyway
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text, secrets: list[str]):
    if not isinstance(text, str) or not text:
        return text
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _CREDENTIALS.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


@bp.get("/health")
def health() -> Response:
    st = current_backend()
    waiting = [f"{name}: {what}" for name, what in dict(st.waiting_for).items()]
    ready = bool(st.ready) and not waiting
    body: dict[str, Any] = {
        "status": "ok" if ready else "starting",
        "ready": ready,
        "version": VERSION,
        "emulates": f"medplum-server {st.release.version} (FHIR R4)",
        "medplum_version": st.release.version,
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "uptime_s": round(time.time() - st.started_at, 3),
        "base_url": st.base_url,
        "project": PROJECT_ID,
    }
    if waiting:
        body["waiting_for"] = waiting
    return json_response(body, 200 if ready else 503, "application/json")


@bp.get("/runs")
def runs() -> Response:
    _guard()
    failed_arg = request.args.get("failed")
    failed = None
    if failed_arg is not None:
        failed = failed_arg.lower() in ("1", "true", "yes", "")
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer", "limit") from None
    limit = max(0, min(limit, 10000))
    st = current_backend()
    items = st.runs.list(
        bot=request.args.get("bot") or None, failed=failed, limit=limit, trigger=request.args.get("trigger") or None
    )
    secrets = secret_values(st) if items else []
    items = [{k: redact(v, secrets) for k, v in item.items()} for item in items]
    return json_response({"runs": items, "count": len(items)}, 200, "application/json")


@bp.post("/reset")
def reset() -> Response:
    """Empty the store except the seeded Project, admin ClientApplication and its membership."""
    _guard()
    st = current_backend()
    admin_id = st.settings.admin_client_id
    admin_profile = f"ClientApplication/{admin_id}"

    def keep(r: dict) -> bool:
        rt = r.get("resourceType")
        if rt == "Project" and r.get("id") == PROJECT_ID:
            return True
        if rt == "ClientApplication" and r.get("id") == admin_id:
            return True
        return rt == "ProjectMembership" and (r.get("profile") or {}).get("reference") == admin_profile

    st.subscriptions.wait_idle(5.0)
    st.service.inject_conflicts(0)  # faults off
    st.service.batch_delay_s = 0.0
    removed = st.repo.reset(keep)
    project = st.try_read("Project", PROJECT_ID)
    if project and project.get("secret"):
        project = dict(project)
        del project["secret"]  # an empty array is invalid FHIR ("Invalid empty value")
        st.update(project)
    st.runs.clear()
    st.invalidate()
    st.subscriptions.invalidate_subscriptions()
    return json_response({"reset": True, "removed": removed}, 200, "application/json")


@bp.post("/idle")
def idle() -> Response:
    _guard()
    try:
        timeout = float(request.args.get("timeout", "30"))
    except ValueError:
        raise BadRequest("timeout must be a number", "timeout") from None
    timeout = max(0.0, min(timeout, 600.0))
    st = current_backend()
    deadline = time.monotonic() + timeout
    ok = st.subscriptions.wait_idle(timeout)
    while ok and st.bots.jobs_running() and time.monotonic() < deadline:
        time.sleep(0.02)
        ok = st.subscriptions.wait_idle(max(0.0, deadline - time.monotonic()))
    ok = ok and not st.bots.jobs_running()
    return json_response({"idle": ok, "pending": st.subscriptions.pending()}, 200 if ok else 408, "application/json")


# -- faults: what production throws (cut-off executions, restarts, cron, serialization conflicts) ----------


def _bot_id_arg() -> str | None:
    """`?bot=` as a Bot id or name (None = every bot)."""
    name = request.args.get("bot") or None
    if not name:
        return None
    for b in current_backend().search("Bot"):
        if name in (b.get("id"), b.get("name")):
            return b["id"]
    raise BadRequest(f"no Bot with id or name {name!r}", "bot")


@bp.get("/executions")
def executions() -> Response:
    """Bot executions in progress (bot id, worker pid, seconds running)."""
    _guard()
    items = current_backend().runtime.running()
    return json_response({"executions": items, "count": len(items)}, 200, "application/json")


@bp.post("/executions/cut-off")
def cut_off() -> Response:
    """Cut off the running executions of `?bot=` (id or name; default all) by killing their workers — what a
    timeout on awslambda, a redeploy, a server restart or a recycled Lambda does midway. Each ends crashed
    (its run and AuditEvent say so); the bot's writes so far stay."""
    _guard()
    bot_id = _bot_id_arg()
    cut = current_backend().runtime.cut_off(
        bot_id, "Execution cut off (developer API: as a restart or a recycled Lambda would)"
    )
    return json_response({"cut_off": cut, "count": len(cut)}, 200, "application/json")


@bp.post("/restart")
def restart() -> Response:
    """Do what a server restart does to work in flight, without stopping the listeners: every running bot
    execution is cut off and every subscription delivery not yet done (queued, scheduled for retry) is
    dropped. Stored data, schedules and tokens stay."""
    _guard()
    st = current_backend()
    dropped = st.subscriptions.drop_pending()
    cut = st.runtime.cut_off(None, "Execution cut off: the server restarted")
    dropped += st.subscriptions.drop_pending()  # deliveries queued by writes the cut-off runs made
    return json_response(
        {"restarted": True, "executions_cut_off": len(cut), "deliveries_dropped": dropped}, 200, "application/json"
    )


@bp.get("/cron")
def cron_list() -> Response:
    """Bots with a cron schedule (cronTiming or cronString) and whether their Project has the cron feature."""
    _guard()
    return json_response({"bots": current_backend().cron.scheduled()}, 200, "application/json")


@bp.post("/cron/run")
def cron_run() -> Response:
    """Run the cron bots now, as their schedule would (all of them, or `?bot=` id or name); answers once they
    finished, with each run's outcome. Only bots whose Project has the `cron` feature run, as on Medplum."""
    _guard()
    st = current_backend()
    if not any(b["enabled"] for b in st.cron.scheduled()):
        raise BadRequest(
            "no cron bot can run: no Bot has a valid cronString/cronTiming, or its Project lacks the 'cron' feature"
        )
    results = st.cron.run_now(_bot_id_arg())
    secrets = secret_values(st) if results else []
    results = [{k: redact(v, secrets) for k, v in r.items()} for r in results]  # logs and errors: no secret
    return json_response({"runs": results, "count": len(results)}, 200, "application/json")


def _faults_body() -> dict:
    svc = current_backend().service
    return {"conflict_next": svc.conflicts_pending(), "batch_delay_ms": round(svc.batch_delay_s * 1000)}


@bp.get("/faults")
def faults_get() -> Response:
    _guard()
    return json_response(_faults_body(), 200, "application/json")


@bp.post("/faults")
def faults_set() -> Response:
    """`{"conflict_next": n}`: the next n conditional writes answer 409 with Postgres' serialization failure
    (40001), what Medplum answers when two requests race and its one retry conflicts too.
    `{"batch_delay_ms": ms}`: every batch/transaction takes that much longer (a slow database; 0 = off)."""
    _guard()
    body = request.get_json(silent=True)
    known = {"conflict_next", "batch_delay_ms"}
    if not isinstance(body, dict) or not body or set(body) - known:
        raise BadRequest("expected an object with conflict_next and/or batch_delay_ms")
    for key, top in (("conflict_next", 10_000), ("batch_delay_ms", 60_000)):
        v = body.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise BadRequest(f"{key} must be an integer from 0 to {top}", key)
    svc = current_backend().service
    if "conflict_next" in body:
        svc.inject_conflicts(body["conflict_next"])
    if "batch_delay_ms" in body:
        svc.batch_delay_s = body["batch_delay_ms"] / 1000.0
    return json_response(_faults_body(), 200, "application/json")
