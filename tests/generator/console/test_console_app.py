"""The Flask app on synthetic records: access (Basic, Bearer, a server-side session that logout revokes),
sign-in throttling, open redirects, the Host check, security headers, every page, and the actions (replay one,
replay all failed, rerun the patient bot, retry the webhook) with their CSRF token."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from medport.generator.console import command
from medport.generator.console.app import create_app
from medport.generator.remote.medplum_http import MedplumError
from tests.generator.console.synthetic import flow, iso, patient, patient_run, snapshot, task

CREDS = {"client_id": "admin", "client_secret": "admin-secret"}


class FakeSource:
    def __init__(self, snap):
        self.snap, self.settings, self.replayed, self.reran = snap, snap.settings, [], []
        self.http = None
        self.dirty = False
        self.conflict: set[str] = set()

    def snapshot(self, fresh=False):
        return self.snap

    def patient(self, pid):
        return {"id": pid}

    def patient_history(self, pid, version=""):
        return [{"meta": {"lastUpdated": iso(0), "versionId": "v1", "author": {"reference": "ClientApplication/x"}}}]

    def task_history(self, tid):
        return [{"status": "requested", "meta": {"lastUpdated": iso(1)}}]

    def imported_counts(self, pid, as_of=""):
        return {"Condition": 3}

    def replay(self, task_id):
        if task_id in self.conflict:
            raise MedplumError("requeue", "precondition failed", 412)
        self.replayed.append(task_id)
        return "message"

    def rerun_patient_bot(self, pid):
        self.reran.append(pid)
        return "metriport-patient-bot"

    def retry_metriport_webhook(self):
        return True, "Metriport answered 200"


def _records():
    ev, tasks = flow()
    tasks[1]["status"], tasks[1]["statusReason"] = "failed", {"text": "1 failure(s): 500"}
    tasks.append(task("s1", "medical.document-download", "requested", "p1", updated=1))
    ev.append(patient_run("p2", 5, "Metriport POST /medical/v1/patient/match answered 503", outcome="4"))
    return snapshot([patient("p1", "m1"), patient("p2")], tasks, ev, webhook={"webhookEnabled": True}, now=1000)


@pytest.fixture
def client():
    src = FakeSource(_records())
    c = create_app(src).test_client()
    c.source = src
    return c


def signed_in(client) -> str:
    r = client.post("/login", data=CREDS)
    assert r.status_code == 302
    with client.session_transaction() as s:
        return s.get("csrf", "")


def csrf(client) -> str:
    page = client.get("/health").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_the_console_requires_the_admin_credentials(client):
    assert client.get("/api/health").status_code == 401
    r = client.get("/health", headers={"Accept": "text/html"})
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.get("/api/health", auth=("admin", "nope")).status_code == 401
    assert client.get("/api/health", auth=("admin", "admin-secret")).status_code == 200
    assert client.post("/login", data={"client_id": "admin", "client_secret": "bad"}).status_code == 401
    r = client.post("/login?next=/patients", data=CREDS)
    assert r.status_code == 302 and r.headers["Location"].endswith("/patients")
    page = client.get("/patients").get_data(as_text=True)
    assert "Patient/p1" in page and "admin-secret" not in page


@pytest.mark.parametrize(
    "elsewhere",
    [
        "//evil.example/x",
        "/\\evil.example/x",
        "https://evil.example/",
        "/%09/evil.example",
        "/%0a/evil.example",
        "%09//evil.example",
    ],
)
def test_sign_in_never_redirects_off_site(client, elsewhere):
    r = client.post(f"/login?next={elsewhere}", data=CREDS)
    assert r.status_code == 302 and "evil.example" not in r.headers["Location"], r.headers["Location"]


def test_a_session_cookie_stops_working_at_logout(client):
    signed_in(client)
    token = csrf(client)
    with client.session_transaction() as s:
        stolen = dict(s)
    assert client.get("/patients").status_code == 200
    assert client.post("/logout", data={"csrf": token}).status_code == 302
    with client.session_transaction() as s:  # the same signed cookie, replayed after logout
        s.update(stolen)
    r = client.get("/patients", headers={"Accept": "text/html"})
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_sign_in_is_throttled_after_repeated_failures(client):
    for _ in range(5):
        assert client.post("/login", data={"client_id": "admin", "client_secret": "x"}).status_code == 401
    r = client.post("/login", data=CREDS)  # even the right secret waits its turn
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "try again" in r.get_data(as_text=True)
    assert client.get("/api/health", auth=("admin", "admin-secret")).status_code == 401  # Basic too
    other = client.post("/login", data=CREDS, environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert other.status_code == 302  # per address


def test_the_host_header_must_name_the_console(client):
    assert client.get("/login", headers={"Host": "evil.example"}).status_code == 421
    assert (
        client.get("/api/health", auth=("admin", "admin-secret"), headers={"Host": "evil.example:8104"}).status_code
        == 421
    )
    assert client.get("/login", headers={"Host": "127.0.0.1:8104"}).status_code == 200
    assert client.get("/login", headers={"Host": "[::1]:8104"}).status_code == 200


def test_every_answer_carries_the_security_headers(client):
    for r in (client.get("/login"), client.get("/api/health"), client.get("/health", headers={"Host": "x.example"})):
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
        assert r.headers["Referrer-Policy"] == "no-referrer"


def test_pages_render_without_inline_styles_or_scripts(client):
    """The CSP allows no inline style or script: the pages must not need them."""
    signed_in(client)
    for url in ("/health", "/patients", "/patients?state=failed", "/patients/p1", "/messages/p1-t1", "/login"):
        page = client.get(url).get_data(as_text=True)
        assert client.get(url).status_code == 200, url
        assert " style=" not in page and "<style" not in page and "<script>" not in page, url
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), url


def test_pages_and_the_replay_action(client):
    signed_in(client)
    health = client.get("/health").get_data(as_text=True)
    assert 'id="card-processing-failures" data-value="1"' in health and "<svg" in health
    assert health.index('id="attention"') < health.index('id="cards"')  # needs attention first
    assert 'data-kind="patient-bot-failed"' in health and 'class="rerun-btn" data-patient="p2"' in health
    assert 'class="replay-btn" data-task="p1-t1"' in health and 'class="replay-btn" data-task="s1"' in health
    page = client.get("/patients/p1").get_data(as_text=True)
    assert 'data-webhooks="4"' in page and 'class="replay-btn" data-task="p1-t1"' in page
    assert 'data-in-medplum="3"' in page
    msg = client.get("/messages/p1-t1").get_data(as_text=True)
    assert 'id="message-status" data-status="failed"' in msg and "1 failure(s): 500" in msg
    assert client.get("/messages/nope").status_code == 404
    assert client.post("/messages/p1-t1/replay").status_code == 403  # no CSRF token
    token = csrf(client)
    r = client.post("/messages/p1-t1/replay", data={"csrf": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/patients/p1")
    assert client.source.replayed == ["p1-t1"]
    client.post("/messages/p1-t0/replay", data={"csrf": token})  # completed: not replayed
    assert client.source.replayed == ["p1-t1"]
    assert "only failed or stuck" in client.get("/patients/p1").get_data(as_text=True)
    r = client.post("/metriport/webhook/retry", data={"csrf": token})
    assert r.status_code == 302 and "re-enabled" in client.get("/health").get_data(as_text=True)
    assert client.get("/api/patients/p1").get_json()["counts"]["failed"] == 1
    assert client.get("/api/messages/p1-t1").get_json()["status"] == "failed"


def test_replay_all_failed_and_rerun(client):
    signed_in(client)
    token = csrf(client)
    client.source.conflict = {"s1"}
    r = client.post("/messages/replay-failed", data={"csrf": token, "next": "/health"})
    assert r.status_code == 302 and client.source.replayed == ["p1-t1"]
    assert "1 message(s) put back in the queue; 1 changed meanwhile" in client.get("/health").get_data(as_text=True)
    r = client.post("/patients/p2/rerun", data={"csrf": token, "next": "/patients/p2"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/patients/p2") and client.source.reran == ["p2"]
    r = client.post("/patients/p2/rerun", data={"csrf": token, "next": "//evil.example"})
    assert "evil" not in r.headers["Location"]


def test_the_list_page_filters_searches_and_pages(client):
    signed_in(client)
    page = client.get("/patients?state=failed").get_data(as_text=True)
    assert 'data-patient="p2"' in page and 'data-patient="p1"' not in page
    assert 'href="/patients?state=imported"' in page
    assert 'data-patient="p1"' in client.get("/patients?q=m1").get_data(as_text=True)
    assert 'data-matching="0"' in client.get("/patients?q=zzz").get_data(as_text=True)
    assert client.get("/patients?page=x&sort=nonsense&state=<b>").status_code == 200


def test_binding_every_interface_warns(monkeypatch, tmp_path):
    served = []

    class Stub:
        def __init__(self, settings):
            self.settings = settings

        def snapshot(self, fresh=False):
            return _records()

    class Served:
        url = "http://127.0.0.1:9/"

        def stop(self):
            served.append("stopped")

    monkeypatch.setattr(command, "Source", Stub)
    monkeypatch.setattr(
        command,
        "serve_console",
        lambda settings, host, port, fallback: served.append((settings.host, settings.allowed_hosts)) or Served(),
    )
    monkeypatch.setattr("medport.emulator.serving.wait_for_stop", lambda: None)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        command.console_command,
        [
            "--base-url",
            "http://127.0.0.1:1/",
            "--client-id",
            "a",
            "--client-secret",
            "b",
            "--host",
            "0.0.0.0",
            "--allowed-host",
            "console.lan",
        ],
    )
    assert r.exit_code == 0, r.output + r.stderr
    assert "binds every interface" in r.stderr and "--allowed-host" in r.stderr
    assert served == [("0.0.0.0", ("console.lan",)), "stopped"]
    quiet = CliRunner().invoke(
        command.console_command, ["--base-url", "http://127.0.0.1:1/", "--client-id", "a", "--client-secret", "b"]
    )
    assert "binds every interface" not in quiet.stderr
