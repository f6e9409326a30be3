"""The console's Flask app: `create_app(source)` — the routes are the `console` blueprint.

Access: the admin client's credentials, as the emulator's developer API requires them — HTTP Basic
(`client id:secret`), a Bearer token the Medplum server issued to that client (checked with `GET /auth/me`),
or the login form (a server-side session: the cookie names a session id that signing out revokes; HttpOnly,
SameSite=Strict). No exemption for loopback callers; failed sign-ins are throttled per address; the Host header
must name the console. Every POST carries the session's CSRF token. Nothing rendered contains a secret or patient
demographics (pages name Patients by id). The rules themselves are in `guard.py`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import requests
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from ..remote.medplum_http import MedplumError
from .figures import RANGES, health
from .guard import SECURITY_HEADERS, Sessions, Throttle, allowed_hosts, host_allowed, safe_next
from .source import DevApiForbidden, Source, describe_error
from .views import Console, health_view, message_view, patient_view, patients_view, range_start

HERE = Path(__file__).parent
TOKEN_CHECK_TTL_S = 60.0
_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medport-console-read")
PUBLIC_ENDPOINTS = ("console.login", "static", "console.favicon")

bp = Blueprint("console", __name__)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Guard:
    """Who may use the console: the admin client (Basic, Bearer, or a live session opened with the login form)."""

    def __init__(self, source: Source):
        self.source = source
        self.sessions = Sessions()
        self.throttle = Throttle()
        self.hosts = allowed_hosts(source.settings.host, source.settings.allowed_hosts)
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def credentials_ok(self, client_id: str, secret: str) -> bool:
        s = self.source.settings
        return _same(client_id or "", s.client_id) and _same(secret or "", s.client_secret)

    def bearer_ok(self, token: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._tokens.get(token, 0) > now:
                return True
        try:
            r = requests.get(self.source.http.url("auth/me"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
            profile = ((r.json() or {}).get("profile") or {}) if r.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return False
        ref = profile.get("reference") or (f"{profile.get('resourceType')}/{profile.get('id')}" if profile else "")
        ok = _same(ref, f"ClientApplication/{self.source.settings.client_id}")
        if ok:
            with self._lock:
                self._tokens[token] = now + TOKEN_CHECK_TTL_S
        return ok

    def signed_in(self) -> bool:
        return self.sessions.valid(session.get("sid"))

    def authenticated(self) -> bool:
        """A live session, or credentials on the request itself (Basic counts toward the sign-in throttle)."""
        if self.signed_in():
            return True
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            who = request.remote_addr or "?"
            if self.throttle.wait_s(who) > 0:
                return False
            ok = self.credentials_ok(auth.username or "", auth.password or "")
            (self.throttle.succeeded if ok else self.throttle.failed)(who)
            return ok
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return self.bearer_ok(header[7:].strip())
        return False


def _guard() -> Guard:
    return current_app.extensions["medport_console_guard"]


def _console() -> Console:
    return current_app.extensions["medport_console"]


def _source() -> Source:
    return _console().source


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


@bp.app_context_processor
def common():
    s = _source().settings
    return {
        "csrf_token": _csrf_token(),
        "server": s.base_url,
        "dev_api": s.dev_api,
        "authenticated": g.get("authenticated", False),
        "signed_in": _guard().signed_in(),
        "flash_msg": session.pop("flash", None),
    }


@bp.before_app_request
def require_admin():
    if not host_allowed(request.host, _guard().hosts):
        return Response(
            f"this console does not answer to the host {request.host!r}: open it by an address it is "
            "served on (127.0.0.1, localhost, or one given with --allowed-host)\n",
            421,
            {"Content-Type": "text/plain"},
        )
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if _guard().authenticated():
        g.authenticated = True
        if request.method == "POST":
            token = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
            if not session.get("csrf") or not _same(token, session["csrf"]):
                abort(403, "missing or wrong CSRF token: reload the page and try again")
        return None
    if request.path.startswith("/api/") or "text/html" not in request.headers.get("Accept", ""):
        return Response(
            "the medport console needs the admin client's credentials\n",
            401,
            {"WWW-Authenticate": 'Basic realm="medport console"', "Content-Type": "text/plain"},
        )
    return redirect(url_for("console.login", next=request.full_path.rstrip("?")))


@bp.after_app_request
def security_headers(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


@bp.app_errorhandler(MedplumError)
def medplum_error(e):
    return render_template("error.html", title="Medplum answered with an error", message=describe_error(e)), 502


@bp.app_errorhandler(DevApiForbidden)
def forbidden_dev_api(e):
    return render_template("error.html", title="Developer API forbidden", message=str(e)), 500


@bp.app_errorhandler(requests.RequestException)
def medplum_unreachable(e):
    return render_template(
        "error.html",
        title="Medplum did not answer",
        message=f"{type(e).__name__}: check that {_source().settings.base_url} is up, then reload",
    ), 502


@bp.get("/favicon.ico")
def favicon():
    return Response(status=204)


@bp.route("/login", methods=["GET", "POST"])
def login():
    error, status = None, 200
    if request.method == "POST":
        who = request.remote_addr or "?"
        wait = _guard().throttle.wait_s(who)
        if wait > 0:
            error, status = f"Too many failed sign-ins: try again in {wait:.0f} s.", 429
        elif _guard().credentials_ok(request.form.get("client_id", ""), request.form.get("client_secret", "")):
            _guard().throttle.succeeded(who)
            _guard().sessions.revoke(session.get("sid"))
            session.clear()
            session["sid"] = _guard().sessions.open()
            return redirect(safe_next(request.args.get("next"), url_for("console.health_page")))
        else:
            _guard().throttle.failed(who)
            error, status = "These are not the admin client's credentials.", 401
    resp = Response(render_template("login.html", error=error, next=request.args.get("next", "")), status)
    if status == 429:
        resp.headers["Retry-After"] = str(max(1, round(_guard().throttle.wait_s(request.remote_addr or "?"))))
    return resp


@bp.post("/logout")
def logout():
    _guard().sessions.revoke(session.get("sid"))
    session.clear()
    return redirect(url_for("console.login"))


@bp.get("/")
def index():
    return redirect(url_for("console.health_page"))


def _range() -> str:
    key = request.args.get("range", "all")
    return key if key in RANGES else "all"


@bp.get("/health")
def health_page():
    console, key = _console(), _range()
    view = console.cached(console.integration(), f"view {key}", lambda integ: health_view(integ, key))
    return render_template("health.html", v=view, page="health")


@bp.get("/api/health")
def health_json():
    console, key = _console(), _range()
    figures = console.cached(
        console.integration(), f"figures {key}", lambda integ: health(integ, range_start(key, integ.now))
    )
    return jsonify(figures)


def _page_number() -> int:
    try:
        return int(request.args.get("page", "1"))
    except ValueError:
        return 1


@bp.get("/patients")
def patients_page():
    view = patients_view(
        _console().integration(),
        state=request.args.get("state", ""),
        q=request.args.get("q", "")[:200],
        sort=request.args.get("sort", "activity"),
        page=_page_number(),
    )
    return render_template("patients.html", v=view, page="patients")


def _found(lookup, missing: str):
    """(model, what `lookup(model)` finds): in the current model, else in one read now (it may be that new)."""
    integ = _console().integration()
    hit = lookup(integ)
    if hit is None:
        integ = _console().integration(fresh=True)
        hit = lookup(integ)
        if hit is None:
            abort(404, missing)
    return integ, hit


def _patient_data(pid: str) -> dict:
    integ, sync = _found(lambda i: i.patient(pid), f"no Patient/{pid} (or not in the console's window)")
    src = _source()
    newest = max((m.updated.isoformat() for m in sync.messages if m.updated), default="")
    # the Patient's versions and its imported resources, both kept until they change: read side by side
    history = _READS.submit(src.patient_history, pid, sync.version)
    counts = src.imported_counts(pid, newest)
    return patient_view(
        integ, sync, history.result(), counts, src.settings.links_base, src.settings.resource_identifier_system
    )


def _message_data(task_id: str) -> dict:
    integ, m = _found(lambda i: i.message(task_id), f"no message Task/{task_id}")
    s = _source().settings
    return message_view(integ, m, _source().task_history(task_id), s.links_base, s.resource_identifier_system)


def _page_and_json(rule: str, endpoint: str, template: str, page: str, data) -> None:
    """A page, and the same data as JSON under /api."""
    bp.add_url_rule(rule, endpoint, lambda **kw: render_template(template, v=data(**kw), page=page))
    bp.add_url_rule("/api" + rule, endpoint + "_json", lambda **kw: jsonify(data(**kw)))


_page_and_json("/patients/<pid>", "patient_page", "patient.html", "patients", _patient_data)
_page_and_json("/messages/<task_id>", "message_page", "message.html", "messages", _message_data)


def _back(default: str) -> BaseResponse:
    return redirect(safe_next(request.form.get("next"), default))


@bp.post("/messages/<task_id>/replay")
def replay(task_id):
    msg = _console().integration().message(task_id)
    if msg is None:
        abort(404, f"no message Task/{task_id}")
    if not msg.replayable:
        session["flash"] = f"Task/{task_id} is {msg.status}: only failed or stuck messages are replayed"
    else:
        try:
            what = _source().replay(task_id)
            session["flash"] = f"Task/{task_id} ({what}) put back in the queue"
        except MedplumError as e:
            if e.status != 412:
                raise
            session["flash"] = f"Task/{task_id} changed meanwhile (being processed): left alone"
    back = (
        f"/patients/{quote(next(iter(sorted(msg.patient_ids))))}" if msg.patient_ids else url_for("console.health_page")
    )
    return _back(back)


@bp.post("/messages/replay-failed")
def replay_failed():
    """Every failed or stuck message back in the queue (412: changed meanwhile, left alone)."""
    done, skipped = 0, 0
    for m in [m for m in _console().integration().messages if m.replayable]:
        try:
            _source().replay(m.task_id)
            done += 1
        except MedplumError as e:
            if e.status != 412:
                raise
            skipped += 1
    session["flash"] = f"{done} message(s) put back in the queue" + (
        f"; {skipped} changed meanwhile and were left alone" if skipped else ""
    )
    return _back(url_for("console.health_page"))


@bp.post("/patients/<pid>/rerun")
def rerun(pid):
    name = _source().rerun_patient_bot(pid)
    session["flash"] = f"{name} ran again on Patient/{pid}"
    return _back(url_for("console.patient_page", pid=pid))


@bp.post("/metriport/webhook/retry")
def retry_webhook():
    ok, text = _source().retry_metriport_webhook()
    session["flash"] = ("Metriport re-enabled the webhook: " if ok else "Retry failed: ") + text
    return _back(url_for("console.health_page"))


def create_app(source: Source, *, secret_key: bytes | None = None) -> Flask:
    app = Flask(
        __name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"), static_url_path="/static"
    )
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="medport_console",
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions["medport_console"] = Console(source)
    app.extensions["medport_console_guard"] = Guard(source)
    app.register_blueprint(bp)
    return app
