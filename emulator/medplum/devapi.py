"""Developer API under `/_emulator/` (LocalStack-style inspection and reset).

Access rule: allowed to a request from a loopback address (the emulator binds 127.0.0.1 by default,
so on a laptop or in CI this is "whoever runs the emulator"), or to any caller presenting the admin
client's credentials (Bearer token or Basic) when the emulator is exposed on another interface.
Everything else gets 403. `/_emulator/health` is always open (readiness probes).
"""
from __future__ import annotations

import ipaddress
import platform
import sys
import time

from flask import Blueprint, Response, request

from .errors import BadRequest, Forbidden, Unauthorized
from .httpio import current_state, is_admin, json_response
from .settings import MEDPLUM_VERSION, PROJECT_ID, VERSION

bp = Blueprint("medport_dev", __name__, url_prefix="/_emulator")


def _is_loopback(addr: str | None) -> bool:
    try:
        return bool(addr) and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard() -> None:
    if _is_loopback(request.remote_addr):
        return
    try:
        principal = current_state().auth.authenticate(request.headers.get("Authorization"))
    except Unauthorized:
        raise Forbidden() from None
    if not is_admin(principal):
        raise Forbidden()


@bp.get("/health")
def health() -> Response:
    st = current_state()
    waiting = [f"{name}: {what}" for name, what in dict(st.waiting_for).items()]
    ready = bool(st.ready) and not waiting
    body = {"status": "ok" if ready else "starting", "ready": ready, "version": VERSION,
            "emulates": f"medplum-server {MEDPLUM_VERSION} (FHIR R4)", "medplum_version": MEDPLUM_VERSION,
            "python": sys.version.split()[0],
            "platform": platform.platform(terse=True), "uptime_s": round(time.time() - st.started_at, 3),
            "base_url": st.base_url, "project": PROJECT_ID}
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
    items = current_state().runs.list(bot=request.args.get("bot") or None, failed=failed, limit=limit,
                              trigger=request.args.get("trigger") or None)
    return json_response({"runs": items, "count": len(items)}, 200, "application/json")


@bp.post("/reset")
def reset() -> Response:
    """Empty the store except the seeded Project, admin ClientApplication and its membership."""
    _guard()
    st = current_state()
    admin_id = st.settings.admin_client_id
    admin_profile = f"ClientApplication/{admin_id}"

    def keep(r: dict) -> bool:
        rt = r.get("resourceType")
        if rt == "Project" and r.get("id") == PROJECT_ID:
            return True
        if rt == "ClientApplication" and r.get("id") == admin_id:
            return True
        if rt == "ProjectMembership" and (r.get("profile") or {}).get("reference") == admin_profile:
            return True
        return False

    st.subscriptions.wait_idle(5.0)
    removed = st.repo.reset(keep)
    project = st.try_read("Project", PROJECT_ID)
    if project and project.get("secret"):
        project = dict(project)
        del project["secret"]  # an empty array is invalid FHIR ("Invalid empty value")
        st.update(project)
    st.runs.clear()
    st.invalidate()
    st.auth.invalidate()
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
    st = current_state()
    deadline = time.monotonic() + timeout
    ok = st.subscriptions.wait_idle(timeout)
    while ok and st.bots.jobs_running() and time.monotonic() < deadline:
        time.sleep(0.02)
        ok = st.subscriptions.wait_idle(max(0.0, deadline - time.monotonic()))
    ok = ok and not st.bots.jobs_running()
    return json_response({"idle": ok, "pending": st.subscriptions.pending()}, 200 if ok else 408,
                         "application/json")
