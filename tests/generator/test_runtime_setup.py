"""`medport setup` with a stand-in `npm` (fast, no network): what it runs, progress, the stamp, reuse
without npm, a Node >= 22 on PATH used instead of installing one, and failures in one line. The real
install from the npm registry runs in tests/e2e/test_user_repo.py."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medport import __version__
from medport.emulator import node
from medport.generator.cli.main import main
from medport.generator.local.runtime_setup import cache_key, lock_digest
from tests.paths import NODE, ROOT

# A stand-in npm: records its arguments, then lays out node_modules from the checkout's packages (and the
# pinned Node unless --omit=optional), like `npm ci` with the shipped lockfile would.
FAKE_NPM = """#!/bin/sh
PATH=/usr/bin:/bin
echo "$@" >> "$NPM_LOG"
if [ -n "$NPM_FAIL" ]; then echo "npm error code ECONNREFUSED"; echo "npm error network request failed"; exit 1; fi
mkdir -p node_modules/@medplum node_modules/.bin
for p in core definitions fhirtypes; do ln -s "$CHECKOUT/node_modules/@medplum/$p" node_modules/@medplum/$p; done
ln -s "$CHECKOUT/node_modules/typescript" node_modules/typescript
case "$*" in *--omit=optional*) ;; *) ln -s "$CHECKOUT/node_modules/node" node_modules/node; ln -s ../node/bin/node node_modules/.bin/node;; esac
sleep 0.2
echo "added 6 packages in 0.2s"
"""


@pytest.fixture
def tools(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(0o755)
    log = tmp_path / "npm.log"
    monkeypatch.setenv("PATH", str(bindir))  # no system node or npm: only the stand-ins
    monkeypatch.setenv("NPM_LOG", str(log))
    monkeypatch.setenv("CHECKOUT", str(ROOT))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("MEDPORT_CACHE_DIR", "MEDPORT_NODE", "MEDPORT_NODE_MODULES", "NPM_FAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    node.clear_cache()
    yield {"bin": bindir, "log": log, "cache": tmp_path / "xdg" / "medport" / __version__}
    node.clear_cache()


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_the_pinned_node_then_is_reused_offline(tools, monkeypatch):
    r = CliRunner().invoke(main, ["setup"])
    assert r.exit_code == 0, r.output
    cache = tools["cache"]
    assert calls(tools["log"]) == ["ci --no-audit --no-fund --loglevel=error --no-update-notifier"]
    assert "[1/3] Node: installing Node 22.23.3 from the npm registry" in r.output
    assert "[2/3] npm ci: @medplum/core@5.2.13" in r.output and "npm: added 6 packages" in r.output
    assert "[3/3] checking" in r.output and "ready in" in r.output
    for name in ("package.json", "package-lock.json"):
        assert (cache / name).read_bytes() == (node.NPM_DIR / name).read_bytes()
    stamp = json.loads((cache / node.STAMP).read_text())
    assert stamp["medport"] == __version__ and stamp["lock"] == lock_digest()
    assert stamp["node_version"].startswith("v22.") and stamp["node_source"] == "cache"
    # found by the one discovery, from any folder outside the checkout
    with monkeypatch.context() as m:
        m.setattr(node, "CHECKOUT_ROOT", cache / "not-a-checkout")
        node.clear_cache()
        rt = node.find_runtime()
        assert rt.source == "cache" and rt.node_source == "node_modules" and rt.node_version == stamp["node_version"]
    # again: nothing to do, no npm call (works offline)
    again = CliRunner().invoke(main, ["setup"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert len(calls(tools["log"])) == 1
    # --force reinstalls
    assert CliRunner().invoke(main, ["setup", "--force"]).exit_code == 0
    assert len(calls(tools["log"])) == 2


def test_a_node_22_on_path_is_used_instead_of_installing_one(tools):
    fake = tools["bin"] / "node"
    fake.write_text(
        f'#!/bin/sh\nPATH=/usr/bin:/bin\nif [ "$1" = "--version" ]; then echo v22.9.0; exit 0; fi\nexec {NODE} "$@"\n'
    )
    fake.chmod(0o755)
    r = CliRunner().invoke(main, ["setup"])
    assert r.exit_code == 0, r.output
    assert f"[1/3] Node: using {fake} (v22.9.0) from PATH" in r.output
    assert calls(tools["log"])[0].endswith("--omit=optional")
    assert not (tools["cache"] / "node_modules" / ".bin" / "node").exists()
    stamp = json.loads((tools["cache"] / node.STAMP).read_text())
    assert stamp["node_source"] == "PATH" and stamp["node"] == str(fake)
    # --no-path-node installs the pinned one anyway
    r = CliRunner().invoke(main, ["setup", "--no-path-node", "--force"])
    assert r.exit_code == 0 and "installing Node 22.23.3" in r.output
    assert not calls(tools["log"])[-1].endswith("--omit=optional")


def test_dir_print_dir_and_print_key(tools, tmp_path):
    r = CliRunner().invoke(main, ["setup", "--print-dir"])
    assert r.output.strip() == str(tools["cache"].resolve()) and not calls(tools["log"])
    assert CliRunner().invoke(main, ["setup", "--print-key"]).output.strip() == cache_key()
    assert cache_key().startswith(f"medport-{__version__}-")
    r = CliRunner().invoke(main, ["setup", "--dir", str(tmp_path / "mine")])
    assert r.exit_code == 0 and (tmp_path / "mine" / node.STAMP).exists()
    assert f"export MEDPORT_CACHE_DIR={(tmp_path / 'mine').resolve()}" in r.output


def test_failures_are_one_line_saying_what_to_do(tools, monkeypatch):
    monkeypatch.setenv("NPM_FAIL", "1")
    r = CliRunner().invoke(main, ["setup"])
    assert r.exit_code == 1 and "npm ci failed" in r.output and "npm error network request failed" in r.output
    assert "Traceback" not in r.output and not (tools["cache"] / node.STAMP).exists()
    (tools["bin"] / "npm").unlink()
    r = CliRunner().invoke(main, ["setup"])
    assert r.exit_code == 1 and "needs npm on PATH" in r.output and "Traceback" not in r.output


def test_a_changed_lockfile_invalidates_the_stamp(tools):
    assert CliRunner().invoke(main, ["setup"]).exit_code == 0
    stamp_path = tools["cache"] / node.STAMP
    stamp = json.loads(stamp_path.read_text())
    stamp_path.write_text(json.dumps({**stamp, "lock": "0" * 16}))
    r = CliRunner().invoke(main, ["setup"])
    assert r.exit_code == 0 and "nothing to do" not in r.output and len(calls(tools["log"])) == 2
