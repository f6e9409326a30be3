"""Security model (DESIGN.md "Security model", issue 11): the developer API answers only the emulator's admin
client — no loopback exemption, because bots, other local users and tunnels are loopback too; bot workers
start with a minimal environment; no developer answer carries a secret; deactivated clients as on Medplum."""

from __future__ import annotations

import base64
import socket
import threading

import pytest
import requests

from medport.emulator.medplum.runtime.pool import WORKER_ENV_KEEP, worker_env
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import Client, admin_client, running_emulator

PROJECT = "medport-project"
DEV_ENDPOINTS = [("GET", "_emulator/runs"), ("POST", "_emulator/idle?timeout=0"), ("POST", "_emulator/reset")]


def _basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _patients(c: Client) -> int:
    return len(c.search("Patient", {"_count": "1000"}))


@pytest.fixture(scope="module")
def webhook_client(c):
    """A least-privilege client like the generated webhook client: it may only read and execute Bots."""
    policy = c.create(
        {"resourceType": "AccessPolicy", "name": "webhook", "resource": [{"resourceType": "Bot", "readonly": True}]}
    )
    body = {"name": "webhook-client", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}}
    r = c.request("POST", f"admin/projects/{PROJECT}/client", json=body)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def marker(c):
    return c.create({"resourceType": "Patient", "name": [{"family": "MustSurvive"}]})


def test_health_stays_open(emu):
    r = requests.get(emu.base_url + "_emulator/health", timeout=10)
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.mark.parametrize("method, path", DEV_ENDPOINTS)
def test_unauthenticated_loopback_peer_is_refused(emu, c, marker, method, path):
    before = _patients(c)
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, _basic(emu.admin_client_id, "wrong")):
        r = requests.request(method, emu.base_url + path, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome", (headers, r.text)
    assert _patients(c) == before


@pytest.mark.parametrize("method, path", DEV_ENDPOINTS)
def test_the_admin_client_passes_bearer_or_basic(emu, c, method, path):
    if path.endswith("reset"):
        pytest.skip("reset by the admin: test_auth_admin.py::test_developer_api")
    assert c.request(method, path).status_code == 200
    r = requests.request(
        method, emu.base_url + path, headers=_basic(emu.admin_client_id, emu.admin_client_secret), timeout=10
    )
    assert r.status_code == 200


def test_the_webhook_client_cannot_reset(emu, c, webhook_client, marker):
    before = _patients(c)
    hook = Client(emu.base_url, webhook_client["id"], webhook_client["secret"])
    for method, path in DEV_ENDPOINTS:
        assert hook.request(method, path).status_code == 403, path
        r = requests.request(
            method, emu.base_url + path, headers=_basic(webhook_client["id"], webhook_client["secret"]), timeout=10
        )
        assert r.status_code == 403, path
    assert _patients(c) == before and c.read("Patient", marker["id"])


def test_another_admin_membership_is_not_the_admin_client(emu, c, marker):
    """Project admins (e.g. a deploy client) use the FHIR and admin APIs; the developer API is the emulator's own."""
    other = c.request("POST", f"admin/projects/{PROJECT}/client", json={"name": "second-admin"}).json()
    membership = emu.state.membership_for_profile(f"ClientApplication/{other['id']}")
    assert c.request("POST", f"admin/projects/{PROJECT}/members/{membership['id']}", json={"admin": True}).ok
    second = Client(emu.base_url, other["id"], other["secret"])
    assert second.request("GET", f"admin/projects/{PROJECT}").status_code == 200  # it is a project admin
    assert second.request("POST", "_emulator/reset").status_code == 403
    assert c.read("Patient", marker["id"])


BOT_RESETS = """
exports.handler = async (medplum, event) => {
  const url = medplum.getBaseUrl() + '_emulator/reset';
  const anonymous = await fetch(url, { method: 'POST' });
  const withToken = await fetch(url, { method: 'POST', headers: { Authorization: 'Bearer ' + medplum.getAccessToken() } });
  return { anonymous: anonymous.status, withToken: withToken.status };
};
"""


@pytest.mark.parametrize("runtime", ["vmcontext", "awslambda"])
def test_a_bot_cannot_reset_the_emulator(c, marker, runtime):
    before = _patients(c)
    bot = c.create_bot(f"resetter-{runtime}", BOT_RESETS, runtimeVersion=runtime)
    r = c.execute(bot["id"], {})
    assert r.status_code == 200, r.text
    assert r.json() == {"anonymous": 401, "withToken": 403}  # no credentials / the bot's own token
    assert _patients(c) == before and c.read("Patient", marker["id"])


class _Forwarder:
    """A loopback TCP forwarder — what a tunnel (ngrok, ssh -L, cloudflared) does: every request it relays
    reaches the emulator from 127.0.0.1."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_a_tunnel_is_not_the_local_user(emu, c, marker):
    fwd = _Forwarder(emu.port)
    try:
        base = f"http://127.0.0.1:{fwd.port}/"
        assert requests.get(base + "_emulator/health", timeout=10).status_code == 200
        for method, path in DEV_ENDPOINTS:
            r = requests.request(method, base + path, headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 401, (path, r.text)
        r = requests.get(
            base + "_emulator/runs",
            timeout=10,
            headers={"Connection": "close", **_basic(emu.admin_client_id, emu.admin_client_secret)},
        )
        assert r.status_code == 200
    finally:
        fwd.close()
    assert c.read("Patient", marker["id"])


# --- bot workers: a minimal environment ---------------------------------------------------------------------
SECRET_ENV = {
    "MEDPORT_ADMIN_CLIENT_SECRET": "env-admin-secret-4711",
    "METRIPORT_WEBHOOK_KEY": "env-webhook-key-4711",
    "MEDPLUM_CLIENT_SECRET": "env-medplum-secret-4711",
    "METRIPORT_API_KEY": "env-api-key-4711",
    "AWS_SECRET_ACCESS_KEY": "env-aws-4711",
    "NODE_OPTIONS": "--require /nonexistent.js",
}
ENV_BOTS = {
    # awslambda is an ordinary Node module: process.env is right there
    "awslambda": "exports.handler = async (medplum, event) => ({ env: process.env, secret: event.secrets.S.valueString });",
    # vmcontext has no `process`, but the sandbox is no security boundary (nor on Medplum): the classic escape
    "vmcontext": (
        "exports.handler = async (medplum, event) => {\n"
        "  const p = this.constructor.constructor('return process')();\n"
        "  return { env: p.env, secret: event.secrets.S.valueString };\n};"
    ),
}


@pytest.fixture(scope="module")
def env_emu():
    mp = pytest.MonkeyPatch()
    for k, v in SECRET_ENV.items():
        mp.setenv(k, v)
    try:
        with running_emulator(Settings()) as h:  # its BotRuntime starts inside this environment
            yield h
    finally:
        mp.undo()


@pytest.mark.parametrize("runtime", ["awslambda", "vmcontext"])
def test_bots_see_no_emulator_environment(env_emu, runtime):
    c = admin_client(env_emu)
    assert env_emu.admin_client_secret == SECRET_ENV["MEDPORT_ADMIN_CLIENT_SECRET"]
    assert c.request("POST", f"admin/projects/{PROJECT}/secrets", json=[{"name": "S", "valueString": "proj-1"}]).ok
    bot = c.create_bot(f"env-{runtime}", ENV_BOTS[runtime], runtimeVersion=runtime)
    r = c.execute(bot["id"], {})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["secret"] == "proj-1"  # secrets reach a bot through event.secrets, as on Medplum
    env = out["env"]
    assert set(env) <= set(WORKER_ENV_KEEP), sorted(set(env) - set(WORKER_ENV_KEEP))
    assert "PATH" in env
    text = r.text
    for value in SECRET_ENV.values():
        assert value not in text


def test_worker_env_is_an_allow_list():
    env = worker_env(
        {
            "PATH": "/bin",
            "HOME": "/h",
            "TZ": "UTC",
            "LANG": "C.UTF-8",
            "SECRET": "x",
            "MEDPORT_ADMIN_CLIENT_SECRET": "y",
            "NODE_OPTIONS": "--inspect",
        },
        MEDPORT_BOT_DIR="/tmp/b",
    )
    assert env == {"PATH": "/bin", "HOME": "/h", "TZ": "UTC", "LANG": "C.UTF-8", "MEDPORT_BOT_DIR": "/tmp/b"}


# --- no developer answer carries a secret --------------------------------------------------------------------
LEAKY_BOT = """
exports.handler = async (medplum, event) => {
  console.log('key=' + event.secrets.LEAK_KEY.valueString);
  console.log('auth=' + JSON.stringify(event.headers.authorization));
  console.log('url=https://hook-client:hook-pass-8899@example.com/fhir/R4/Bot/1/$execute');
  throw new Error('failed with ' + event.secrets.LEAK_KEY.valueString);
};
"""


def test_runs_are_redacted(emu, c, webhook_client):
    secret = "leak-key-0123456789abcdef"
    assert c.request("POST", f"admin/projects/{PROJECT}/secrets", json=[{"name": "LEAK_KEY", "valueString": secret}]).ok
    bot = c.create_bot("leaky", LEAKY_BOT)
    basic = _basic(webhook_client["id"], webhook_client["secret"])
    assert c.execute(bot["id"], {}, headers=basic).status_code == 400  # as the webhook client, by Basic
    runs = c.request("GET", "_emulator/runs", params={"bot": bot["id"]})
    assert runs.status_code == 200
    text = runs.text
    assert secret not in text and webhook_client["secret"] not in text and basic["Authorization"] not in text
    assert "hook-pass-8899" not in text and emu.admin_client_secret not in text
    assert "[redacted]" in runs.json()["runs"][0]["logs"] and "[redacted]" in runs.json()["runs"][0]["error"]
    for method, path in (("GET", "_emulator/health"), ("POST", "_emulator/idle?timeout=0")):
        body = c.request(method, path).text
        assert secret not in body and emu.admin_client_secret not in body


# --- deactivated ClientApplication ---------------------------------------------------------------------------
def test_deactivated_client_keeps_its_tokens_like_medplum(emu, c):
    """What Medplum does (packages/server/src/oauth/, the newest stored source: utils.ts 7124222923 / commit
    73b1a75d, token.ts 60c56fb4):
    - token.ts `handleClientCredentials`: `if (client.status && client.status !== 'active')` → 400
      invalid_request "Invalid client": no new token;
    - utils.ts `getLoginForAccessToken`: verifies the JWT, reads the Login, requires `login.membership` and
      `!login.revoked` — the ClientApplication's status is never read, so a token issued before keeps working
      until it expires;
    - utils.ts `getLoginForBasicAuth`: reads the ClientApplication, compares the secret, finds its membership —
      no status check either, so Basic auth keeps working.
    Deactivating a client therefore does not lock it out on Medplum: rotate its secret (Basic) and wait out or
    revoke its tokens. The emulator shows the same, so nobody learns otherwise in production."""
    created = c.request("POST", f"admin/projects/{PROJECT}/client", json={"name": "to-deactivate"}).json()
    holder = Client(emu.base_url, created["id"], created["secret"])  # token issued while active
    assert holder.request("GET", "fhir/R4/Patient").status_code == 200
    client = c.read("ClientApplication", created["id"])
    client["status"] = "off"
    c.update(client)
    r = requests.post(
        emu.base_url + "oauth2/token",
        timeout=10,
        data={"grant_type": "client_credentials", "client_id": created["id"], "client_secret": created["secret"]},
    )
    assert r.status_code == 400 and r.json() == {"error": "invalid_request", "error_description": "Invalid client"}
    assert holder.request("GET", "fhir/R4/Patient").status_code == 200  # the existing Bearer token
    basic = requests.get(emu.base_url + "fhir/R4/Patient", headers=_basic(created["id"], created["secret"]), timeout=10)
    assert basic.status_code == 200
    # rotating the secret is what ends Basic auth
    client = c.read("ClientApplication", created["id"])
    client["secret"] = "rotated-" + created["secret"]
    c.update(client)
    basic = requests.get(emu.base_url + "fhir/R4/Patient", headers=_basic(created["id"], created["secret"]), timeout=10)
    assert basic.status_code == 401


# --- the emulator's own environment and arguments, read through /proc by a bot ---------------------------------
PROC_BOT = """
const fs = require('fs');
exports.handler = async () => {
  const ppid = /PPid:\\s*(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1];
  const read = (name) => { try { return fs.readFileSync('/proc/' + ppid + '/' + name, 'latin1'); } catch (e) { return 'unreadable: ' + e.code; } };
  return { ppid: Number(ppid), environ: read('environ'), cmdline: read('cmdline') };
};
"""
PROC_CANARIES = {
    "MEDPORT_ADMIN_CLIENT_SECRET": "canary-admin-secret-5150",
    "METRIPORT_WEBHOOK_KEY": "canary-webhook-5150",
    "METRIPORT_API_KEY": "canary-api-key-5150",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-5150",
}
FLAG_CANARY = "canary-fake-key-on-the-command-line-5150"


def test_bots_cannot_read_secrets_through_proc(tmp_path):
    """`medport emulate` started with secrets in its environment and on its command line: neither a vmcontext nor an
    awslambda bot finds them in /proc/<ppid>/environ or /proc/<ppid>/cmdline (ppid = the emulator)."""
    import os
    import re
    import subprocess
    import sys

    from medport.testing import wait_until
    from tests.paths import ROOT

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medport.generator.cli.main",
            "emulate",
            "--memory",
            "--port",
            "0",
            "--metriport-port",
            "0",
            "--no-console",
            "--metriport-api-key",
            FLAG_CANARY,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **PROC_CANARIES, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        assert wait_until(
            lambda: (line := proc.stdout.readline()) and lines.append(line) is None and line.startswith("bots:"), 60
        ), "".join(lines)
        base = re.search(r"listening on (http://\S+)", "".join(lines)).group(1)
        c = Client(base, "medport-admin", PROC_CANARIES["MEDPORT_ADMIN_CLIENT_SECRET"])  # the secret still works
        for runtime in ("vmcontext", "awslambda"):
            bot = c.create_bot(f"proc-{runtime}", PROC_BOT, runtimeVersion=runtime)
            r = c.execute(bot["id"], {})
            assert r.status_code == 200, r.text
            seen = r.json()
            assert seen["ppid"] == proc.pid, (runtime, seen["ppid"], proc.pid)
            assert "PATH=" in seen["environ"], (runtime, seen["environ"][:200])  # the bot could read the file
            assert "emulate" in seen["cmdline"]
            for value in (*PROC_CANARIES.values(), FLAG_CANARY):
                assert value not in seen["environ"] and value not in seen["cmdline"], (runtime, value)
            names = {e.split("=", 1)[0] for e in seen["environ"].split("\0") if "=" in e}
            assert names <= set(WORKER_ENV_KEEP), (runtime, sorted(names - set(WORKER_ENV_KEEP)))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
