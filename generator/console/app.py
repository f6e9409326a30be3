"""The console's Flask app: `create_app(source)`.

Access: the admin client's credentials, as the emulator's developer API requires them — HTTP Basic
(`client id:secret`), a Bearer token the Medplum server issued to that client (checked with `GET /auth/me`),
or the login form (a session cookie: HttpOnly, SameSite=Strict). No exemption for loopback callers. Every
POST carries the session's CSRF token. Nothing rendered contains a secret or patient demographics (pages name
Patients by id).
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import quote

import requests
from flask import (Flask, Response, abort, jsonify, redirect, render_template, request, session,
                   url_for)

from ..medplum_http import MedplumError
from .figures import health
from .model import reconstruct
from .source import DevApiForbidden, Source, describe_error
from .views import health_view, patient_view, patients_view

HERE = Path(__file__).parent
TOKEN_CHECK_TTL_S = 60.0


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Guard:
    """Who may use the console: the admin client (Basic, Bearer, or a session opened with the login form)."""

    def __init__(self, source: Source):
        self.source = source
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

    def authenticated(self) -> bool:
        if session.get("user") and _same(session["user"], self.source.settings.client_id):
            return True
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            return self.credentials_ok(auth.username or "", auth.password or "")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return self.bearer_ok(header[7:].strip())
        return False


def create_app(source: Source, *, secret_key: bytes | None = None) -> Flask:
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"),
                static_url_path="/static")
    app.config.update(SECRET_KEY=secret_key or secrets.token_bytes(32), SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="medport_console",
                      TEMPLATES_AUTO_RELOAD=False)
    guard = Guard(source)
    app.extensions["medport_console"] = source

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        return session["csrf"]

    @app.context_processor
    def common():
        s = source.settings
        return {"csrf_token": csrf_token(), "server": s.base_url, "dev_api": s.dev_api,
                "signed_in": bool(session.get("user")), "flash_msg": session.pop("flash", None)}

    @app.before_request
    def require_admin():
        if request.endpoint in ("login", "static", "favicon"):
            return None
        if guard.authenticated():
            if request.method == "POST":
                token = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
                if not session.get("csrf") or not _same(token, session["csrf"]):
                    abort(403, "missing or wrong CSRF token: reload the page and try again")
            return None
        if request.path.startswith("/api/") or "text/html" not in request.headers.get("Accept", ""):
            return Response("the medport console needs the admin client's credentials\n", 401,
                            {"WWW-Authenticate": 'Basic realm="medport console"', "Content-Type": "text/plain"})
        return redirect(url_for("login", next=request.full_path.rstrip("?")))

    @app.errorhandler(MedplumError)
    def medplum_error(e):
        return render_template("error.html", title="Medplum answered with an error", message=describe_error(e)), 502

    @app.errorhandler(DevApiForbidden)
    def forbidden_dev_api(e):
        return render_template("error.html", title="Developer API forbidden", message=str(e)), 500

    def safe_next(target: str | None, default: str) -> str:
        # a path on this site only: "//host" and "/\\host" are other sites to a browser
        return target if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
            else default

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = None
        if request.method == "POST":
            if guard.credentials_ok(request.form.get("client_id", ""), request.form.get("client_secret", "")):
                session.clear()
                session["user"] = source.settings.client_id
                return redirect(safe_next(request.args.get("next"), url_for("health_page")))
            error = "These are not the admin client's credentials."
        return render_template("login.html", error=error, next=request.args.get("next", "")), (401 if error else 200)

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index():
        return redirect(url_for("health_page"))

    def integration():
        return reconstruct(source.snapshot())

    @app.get("/health")
    def health_page():
        view = health_view(health(integration()))
        return render_template("health.html", v=view, page="health")

    @app.get("/api/health")
    def health_json():
        return jsonify(health(integration()))

    @app.get("/patients")
    def patients_page():
        return render_template("patients.html", v=patients_view(integration()), page="patients")

    def patient_data(pid: str):
        integ = integration()
        sync = integ.patient(pid)
        if sync is None:
            if source.patient(pid) is None:
                abort(404, f"no Patient/{pid}")
            integ = reconstruct(source.snapshot(fresh=True))
            sync = integ.patient(pid)
            if sync is None:
                abort(404, f"Patient/{pid} is not in the console's window")
        return patient_view(integ, sync, source.patient_history(pid), source.imported_counts(pid))

    @app.get("/patients/<pid>")
    def patient_page(pid):
        return render_template("patient.html", v=patient_data(pid), page="patients")

    @app.get("/api/patients/<pid>")
    def patient_json(pid):
        return jsonify(patient_data(pid))

    @app.post("/messages/<task_id>/replay")
    def replay(task_id):
        integ = integration()
        msg = integ.message(task_id)
        if msg is None:
            abort(404, f"no message Task/{task_id}")
        if not msg.replayable:
            session["flash"] = f"Task/{task_id} is {msg.status}: only failed or stuck messages are replayed"
        else:
            what = source.replay(task_id)
            session["flash"] = f"Task/{task_id} ({what}) put back in the queue"
        back = f"/patients/{quote(next(iter(sorted(msg.patient_ids))))}" if msg.patient_ids else url_for("health_page")
        return redirect(safe_next(request.form.get("next"), back))

    @app.post("/metriport/webhook/retry")
    def retry_webhook():
        ok, text = source.retry_metriport_webhook()
        session["flash"] = ("Metriport re-enabled the webhook: " if ok else "Retry failed: ") + text
        return redirect(url_for("health_page"))

    return app
