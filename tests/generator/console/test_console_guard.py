"""The console's security rules in plain Python: redirects that stay on the site, server-side sessions, sign-in
throttling with exponential backoff, the Host check."""

from __future__ import annotations

import socket

import pytest

from medport.generator.console import guard


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "/\\evil.example/x",
        "\\\\evil.example",
        "https://evil.example/",
        "/\t/evil.example",
        "/\n/evil.example",
        "\t//evil.example",
        "/\r\n/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\\/evil.example",
        "http:/evil.example",
        "/\x00/x",
        "",
        None,
    ],
)
def test_a_redirect_never_leaves_the_site(target):
    assert guard.safe_next(target, "/health") == "/health"


@pytest.mark.parametrize(
    "target, kept",
    [
        ("/patients", "/patients"),
        ("/patients?state=failed&q=a", "/patients?state=failed&q=a"),
        ("/patients/p1", "/patients/p1"),
        ("/%09/x", "/%09/x"),
    ],
)
def test_a_path_on_the_site_is_kept(target, kept):
    assert guard.safe_next(target, "/health") == kept


def test_a_revoked_or_idle_session_is_refused():
    s = guard.Sessions(idle_s=3600)
    sid = s.open()
    assert s.valid(sid) and not s.valid("forged") and not s.valid(None)
    s.revoke(sid)
    assert not s.valid(sid)
    idle = guard.Sessions(idle_s=-1)
    assert not idle.valid(idle.open())


def test_sign_in_failures_back_off_exponentially_per_client():
    now = [1000.0]
    t = guard.Throttle(free=5, max_wait_s=300, clock=lambda: now[0])
    for _ in range(5):
        assert t.wait_s("a") == 0
        t.failed("a")
    assert t.wait_s("a") == pytest.approx(1.0) and t.wait_s("b") == 0  # another client is not held back
    waits = []
    for _ in range(10):
        now[0] += t.wait_s("a")
        t.failed("a")
        waits.append(t.wait_s("a"))
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0] and waits[-1] == 300  # doubling, capped
    t.succeeded("a")
    assert t.wait_s("a") == 0
    t.failed("c")
    now[0] += guard.FORGET_AFTER_S + 1
    assert t.wait_s("c") == 0  # old failures are forgotten


def test_the_host_header_must_name_the_console(monkeypatch):
    monkeypatch.delenv("MEDPORT_ALLOWED_HOSTS", raising=False)
    allowed = guard.allowed_hosts("127.0.0.1")
    for ok in ("127.0.0.1:8104", "localhost:8104", "LOCALHOST", "localhost.", "[::1]:8104", "127.0.0.1", None):
        assert guard.host_allowed(ok, allowed), ok
    for bad in ("evil.example", "evil.example:8104", "127.0.0.1.evil.example", "", "10.0.0.5:8104", "[::2]:1"):
        assert not guard.host_allowed(bad, allowed), bad
    lan = guard.allowed_hosts("10.0.0.5", ("console.lan",))
    assert guard.host_allowed("10.0.0.5:8104", lan) and guard.host_allowed("console.lan:8104", lan)
    every = guard.allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() in every and not guard.host_allowed("0.0.0.0:8104", every)
    monkeypatch.setenv("MEDPORT_ALLOWED_HOSTS", "tunnel.example, other.example")
    assert guard.host_allowed("tunnel.example:443", guard.allowed_hosts("127.0.0.1"))
    assert (
        guard.binds_everything("0.0.0.0") and guard.binds_everything("::") and not guard.binds_everything("127.0.0.1")
    )
