"""The CLI's conventions, for every command: the shared options (one definition, environment variables shown the
same way and honoured), `.env`, `-v`/MEDPORT_LOG_LEVEL, `python -m medport`, one-line errors, progress output —
and each defect found in use, reproduced here (checks after the fact, a missing config called ready, runs in
the wrong order, HTML printed raw, a misleading enroll error, hundreds of progress lines)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import pytest
from click.testing import CliRunner

from medport.generator import options
from medport.generator.cli.main import main
from medport.generator.progress import Progress
from tests.paths import ROOT

SHARED = {
    "--base-url": "MEDPLUM_BASE_URL",
    "--client-id": "MEDPLUM_CLIENT_ID",
    "--client-secret": "MEDPLUM_CLIENT_SECRET",
    "--config": "MEDPORT_CONFIG",
    "--metriport-url": "METRIPORT_BASE_URL",
    "--metriport-api-key": "METRIPORT_API_KEY",
    "--admin-client-id": "MEDPORT_ADMIN_CLIENT_ID",
    "--admin-client-secret": "MEDPORT_ADMIN_CLIENT_SECRET",
}
NEEDS_CONFIG = {
    "generate",
    "check",
    "deploy",
    "demo",
    "emulate",
    "enroll",
    "document-urls",
    "replay",
    "console",
    "doctor",
    "status",
}
NEEDS_MEDPLUM = {"deploy", "runs", "replay", "status", "console", "enroll", "document-urls"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    # setenv first so that monkeypatch records each name's original state: a `.env` the CLI loads writes
    # os.environ directly, and must not leak into later tests.
    for name in [*SHARED.values(), options.LOG_LEVEL_ENV]:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    options.configure_logging(logging.WARNING)


def commands() -> dict[str, click.Command]:
    ctx = click.Context(main)
    return {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}


def long_name(p: click.Parameter) -> str:
    return max(p.opts, key=len)


def test_shared_options_are_one_definition_with_their_variables_shown():
    cmds = commands()
    seen: dict[str, set] = {}
    for name, cmd in cmds.items():
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            assert "[env" not in (p.help or "") and "(env " not in (p.help or ""), (
                f"{name} {long_name(p)}: the variable is written by hand in the help, not shown by click"
            )
            if p.envvar:
                assert p.show_envvar, f"{name} {long_name(p)}: env var {p.envvar} not shown in --help"
            if long_name(p) in SHARED and (name, long_name(p)) != ("emulate", "--metriport-api-key"):
                # (emulate's --metriport-api-key is the key its fake accepts: MEDPORT_FAKE_METRIPORT_API_KEY)
                assert p.envvar == SHARED[long_name(p)], f"{name} {long_name(p)} reads {p.envvar}"
                seen.setdefault(long_name(p), set()).add((p.help, p.envvar))
        opts = {long_name(p) for p in cmd.params}
        assert "--verbose" in opts, name
        if name in NEEDS_CONFIG:
            assert "--config" in opts and "-c" in next(p for p in cmd.params if long_name(p) == "--config").opts, name
        if name in NEEDS_MEDPLUM:
            assert {"--base-url", "--client-id", "--client-secret"} <= opts, name
    # the same words everywhere (only --base-url names its purpose per command)
    for opt in ("--client-secret", "--config", "--metriport-url", "--metriport-api-key", "--admin-client-id"):
        assert len(seen[opt]) == 1, (opt, seen[opt])
    out = " ".join(CliRunner().invoke(main, ["status", "--help"]).output.split())
    assert "[env var: MEDPLUM_BASE_URL; default:" in out


def test_status_base_url_comes_from_medplum_base_url_and_from_dot_env(tmp_path, monkeypatch):
    """Before: `status` ignored MEDPLUM_BASE_URL and said no emulator runs here. `.env` is read like Medplum's
    CLI reads it; a variable already set wins."""
    r = CliRunner().invoke(main, ["status"], env={"MEDPLUM_BASE_URL": "http://127.0.0.1:9/"})
    assert r.exit_code == 1 and "http://127.0.0.1:9/" in r.output and "does not answer" in r.output, r.output
    (tmp_path / ".env").write_text("# Medplum's CLI reads this too\nMEDPLUM_BASE_URL=http://127.0.0.1:7/\n")
    r = CliRunner().invoke(main, ["status", "--json"])
    assert json.loads(r.output)["base_url"] == "http://127.0.0.1:7/"
    monkeypatch.setenv("MEDPLUM_BASE_URL", "http://127.0.0.1:9/")
    r = CliRunner().invoke(main, ["status", "--json"])
    assert json.loads(r.output)["base_url"] == "http://127.0.0.1:9/"


def test_log_level_from_v_and_the_environment():
    assert options.log_level(0, "") == logging.WARNING
    assert options.log_level(1, "") == logging.INFO and options.log_level(2, "error") == logging.DEBUG
    assert options.log_level(0, "DEBUG") == logging.DEBUG and options.log_level(0, "15") == 15
    r = CliRunner().invoke(main, ["doctor", "--help"], env={"MEDPORT_LOG_LEVEL": "loud"})
    assert r.exit_code == 2 and "MEDPORT_LOG_LEVEL" in r.output and "Traceback" not in r.output
    CliRunner().invoke(main, ["-v", "generate", "--help"])
    assert logging.getLogger("medport").level == logging.INFO
    CliRunner().invoke(main, ["-v", "generate", "-v", "--help"])  # the group's and the command's add up
    assert logging.getLogger("medport").level == logging.DEBUG


def test_python_dash_m_medport():
    r = subprocess.run(
        [sys.executable, "-m", "medport", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith("medport, version"), r.stdout + r.stderr


def test_an_unexpected_error_is_one_line_and_vv_shows_its_traceback(monkeypatch):
    from medport.generator.local import doctor

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "diagnose", boom)
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == [
        "Error: unexpected error: RuntimeError: boom — run again with -vv for "
        "the traceback, and report it if it persists"
    ]
    r = CliRunner().invoke(main, ["-vv", "doctor"])
    assert r.exit_code == 1 and "Traceback" in r.output and "RuntimeError: boom" in r.output


# --------------------------------------------------------------------------------------------- defects
def test_check_junit_into_a_missing_folder(tmp_path):
    """Before: a traceback after every check had run. Now the folder is made first (as pytest does); a path
    that cannot be written is one line before any check runs."""
    (tmp_path / "medport.toml").write_text("")
    r = CliRunner().invoke(main, ["check", "--no-scenarios", "--junit", "missing/dir/x.xml"])
    assert "Traceback" not in r.output and (tmp_path / "missing/dir/x.xml").read_text().startswith("<?xml")
    (tmp_path / "file").write_text("")
    r = CliRunner().invoke(main, ["check", "--no-scenarios", "--junit", "file/x.xml"])
    assert r.exit_code == 1 and "medport check:" not in r.output
    assert r.output.count("\n") == 1 and "cannot write the JUnit report file/x.xml" in r.output


def test_doctor_with_a_missing_named_config_fails():
    """Before: `doctor -c missing.toml` said "medport is ready here" and exited 0."""
    r = CliRunner().invoke(main, ["doctor", "-c", "missing.toml"])
    assert r.exit_code == 1 and "missing.toml does not exist" in r.output and "is ready" not in r.output


class _Server:
    """A local HTTP server answering every request with one fixed response."""

    def __init__(self, status: int, ctype: str, body: bytes):
        class H(BaseHTTPRequestHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


HTML = (
    b"<!DOCTYPE html><html><head><title>Error</title></head><body><pre>Cannot GET /_emulator/runs</pre></body></html>"
)


def test_runs_against_a_server_answering_html_is_one_line():
    """Before: `medport runs` against a real Medplum on :8103 printed its HTML page."""
    with _Server(404, "text/html; charset=utf-8", HTML) as srv:
        r = CliRunner().invoke(main, ["runs", "--base-url", srv.url])
        assert r.exit_code == 1 and "<" not in r.output and r.output.count("\n") == 1, r.output
        assert "is not the medport emulator" in r.output and "--client-id/--client-secret" in r.output
        # with credentials it reads AuditEvents through the FHIR client: the same page is named, not printed
        r = CliRunner().invoke(main, ["-vv", "runs", "--base-url", srv.url, "--client-id", "x", "--client-secret", "y"])
        assert r.exit_code == 1 and "<html" not in r.output and "an HTML page (text/html)" in r.output, r.output
        assert "DEBUG medport.generator.remote.medplum_http: POST oauth2/token -> 404" in r.output


def test_runs_prints_the_newest_first():
    """Before: the help said newest first and the runs came oldest first."""
    runs = [
        {
            "id": str(i),
            "bot_name": f"bot-{i}",
            "trigger": "execute",
            "outcome": "success",
            "duration_ms": 1,
            "started": f"2026-01-01T00:00:0{i}Z",
            "logs": "",
        }
        for i in (3, 2, 1)
    ]  # the emulator: newest first
    with _Server(200, "application/json", json.dumps({"runs": runs}).encode()) as srv:
        r = CliRunner().invoke(main, ["runs", "--base-url", srv.url])
    assert r.exit_code == 0, r.output
    assert [ln.split()[1] for ln in r.output.splitlines()] == ["bot-3", "bot-2", "bot-1"]


def test_enroll_without_an_emulator_says_so():
    """Before: "no Metriport API key for https://api.sandbox.metriport.com" when no emulator ran here."""
    (ROOT / "medport.toml").read_text()
    r = CliRunner().invoke(main, ["enroll", "-c", str(ROOT / "medport.toml")])
    assert r.exit_code == 1 and "no emulator running from this folder" in r.output and "medport emulate" in r.output
    assert "API key" not in r.output


# --------------------------------------------------------------------------------------------- progress
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_off_a_terminal_is_a_few_lines():
    lines, clock = [], FakeClock()
    bar = Progress(10_000, "Patients linked", echo=lines.append, tty=False, clock=clock)
    for done in range(0, 10_001, 20):  # 500 polls over ~8 minutes
        clock.t += 1.0
        bar.update(done, "requests 1 processing" if done < 10_000 else "requests 1 completed")
    bar.close()
    assert 10 <= len(lines) <= 30, lines
    assert lines[-1].startswith("  Patients linked: 10000/10000 (100 %)") and "requests 1 completed" in lines[-1]
    assert re.search(r"ETA \d+ min \d\d s", lines[5]), lines[5]


def test_progress_on_a_terminal_is_a_bar_with_its_eta():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = Progress(100, "requeued", file=out, tty=True)
    for i in range(1, 101):
        bar.update(i)
    bar.close()
    text = out.getvalue()
    assert "requeued" in text and "100/100" in text and "\r" in text


def test_enroll_progress_on_ten_thousand_patients_is_a_bar_not_hundreds_of_lines(monkeypatch):
    """Before: a 10,000-patient enroll printed a line per poll (hundreds). The wait loop now feeds one Progress."""
    from medport.generator.generation.config import validate_data
    from medport.generator.remote import enroll

    jobs = [enroll.Job(f"req-{i}", "fac", 5000, False, f"task-{i}") for i in range(2)]
    state = {"polls": 0}

    def refresh(_http, job):
        job.status = "completed" if state["polls"] >= 400 else "processing"
        job.counts = {"linked": 5000} if job.status == "completed" else {}

    def linked(_http, _cfg):
        state["polls"] += 1
        return min(10_000, state["polls"] * 25)

    monkeypatch.setattr(enroll, "refresh", refresh)
    monkeypatch.setattr(enroll, "linked_count", linked)
    lines: list[str] = []
    assert enroll.wait(None, validate_data({}, "t"), jobs, 60, lines.append, 0, poll_s=0, tty=False)
    assert state["polls"] > 400 and len(lines) <= 15, lines
    assert "10000/10000" in lines[-1]


def test_the_readmes_command_reference_is_the_commands_own():
    from medport.generator.cli.docs import command_reference_markdown

    readme = (ROOT / "README.md").read_text()
    assert command_reference_markdown() in readme, (
        "README command reference is stale: run `python -m medport.generator.cli.docs`"
    )
