"""emulator/locks.py: one process per store (a second one is refused naming the first), and stores that carry
their layout's version (new → stamped, unversioned medport store → migrated, newer or foreign → refused)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from medport.emulator.locks import InUse, OwnerLock, StoreRefused, open_versioned
from medport.emulator.medplum.fhir.store import SCHEMA as FHIR_SCHEMA
from medport.emulator.medplum.fhir.store import STORE_KIND, Repository
from medport.emulator.medplum.fhir.store import STORE_VERSION as FHIR_VERSION
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import running_emulator
from medport.emulator.metriport.persist import SCHEMA as FAKE_SCHEMA
from medport.emulator.metriport.persist import StateStore
from tests.paths import ROOT


def _stamp(path) -> dict:
    with sqlite3.connect(path) as c:
        return dict(c.execute("SELECT key, value FROM medport_store").fetchall())


def test_a_second_owner_is_refused_naming_the_first(tmp_path):
    first = OwnerLock(str(tmp_path / "x.lock"), "the thing", "stop it").acquire()
    first.describe(port=8103, base_url="http://127.0.0.1:8103/")
    with pytest.raises(InUse) as e:
        OwnerLock(str(tmp_path / "x.lock"), "the thing", "stop it").acquire()
    assert str(e.value) == (
        f"the thing is in use by another medport emulator (pid {os.getpid()}, port 8103, "
        "http://127.0.0.1:8103/): stop it"
    )
    first.release()
    OwnerLock(str(tmp_path / "x.lock"), "the thing", "stop it").acquire().release()


def test_a_dead_owner_leaves_no_lock(tmp_path):
    """The kernel drops a flock when its process dies, even on kill -9."""
    path = tmp_path / "x.lock"
    code = (
        f"import os; from medport.emulator.locks import OwnerLock; OwnerLock({str(path)!r}, 'x', 'y').acquire(); "
        "os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    OwnerLock(str(path), "x", "y").acquire().release()


def test_two_emulators_on_one_database_the_second_is_refused(tmp_path):
    db = str(tmp_path / "emu.sqlite3")
    with running_emulator(Settings(db_path=db)) as first:
        with pytest.raises(InUse) as e:
            running_emulator(Settings(db_path=db)).__enter__()
        assert f"pid {os.getpid()}" in str(e.value) and f"port {first.port}" in str(e.value)
        assert f"the database {db}" in str(e.value) and "--db" in str(e.value)
        # the refused one touched nothing: the first one still serves and writes
        assert first.state.repo.create({"resourceType": "Patient"})["id"]
    with running_emulator(Settings(db_path=db)):  # once the first stopped, the database is free
        pass


def test_two_fakes_on_one_state_file(tmp_path):
    path = str(tmp_path / "fake.sqlite3")
    first = StateStore(path)
    with pytest.raises(InUse):
        StateStore(path)
    first.close()
    StateStore(path).close()


# the FHIR store's layout before stores had a version (1): token texts without their raw value, no binary_content
FHIR_SCHEMA_1 = FHIR_SCHEMA.replace(
    "value TEXT, raw TEXT);\nCREATE INDEX IF NOT EXISTS idx_text_v",
    "value TEXT);\nCREATE INDEX IF NOT EXISTS idx_text_v",
).split("CREATE TABLE IF NOT EXISTS binary_content")[0]


@pytest.mark.parametrize(
    "opener, schema, kind, version",
    [
        (Repository, FHIR_SCHEMA_1, STORE_KIND, str(FHIR_VERSION)),
        (StateStore, FAKE_SCHEMA, "medport-fake-metriport", "1"),
    ],
)
def test_stores_carry_a_version_and_an_unversioned_one_is_migrated(tmp_path, opener, schema, kind, version):
    assert (
        "binary_content" not in FHIR_SCHEMA_1
        and "raw TEXT);\nCREATE INDEX IF NOT EXISTS idx_text_v" not in FHIR_SCHEMA_1
    )
    new = str(tmp_path / "new.sqlite3")
    opener(new).close()
    assert _stamp(new) == {"kind": kind, "version": version}
    # a store an earlier medport wrote (same tables, no version row) keeps its data and gets the version
    old = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(old) as c:
        c.executescript(schema)
        if opener is Repository:
            c.execute(
                "INSERT INTO resources (type, id, vid, lu, content) VALUES ('Patient', 'p1', 'v1', 0, "
                '\'{"resourceType":"Patient","id":"p1"}\')'
            )
        else:
            c.execute("INSERT INTO objects (kind, key, data) VALUES ('meta', 'cx', '{\"cxId\":\"c\"}')")
    store = opener(old)
    try:
        if opener is Repository:
            assert store.read("Patient", "p1")["id"] == "p1"
            store.create({"resourceType": "Patient", "name": [{"text": "Migrated"}]})  # writes the new columns
            with sqlite3.connect(old) as c:
                assert "raw" in {r[1] for r in c.execute("PRAGMA table_info(idx_text)")}
                assert c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'binary_content'").fetchone()[0] == 1
        else:
            assert store.get("meta", "cx") == {"cxId": "c"}
    finally:
        store.close()
    assert _stamp(old) == {"kind": kind, "version": version}


@pytest.mark.parametrize("opener", [Repository, StateStore])
def test_newer_foreign_or_other_kind_stores_are_refused_with_one_line(tmp_path, opener):
    newer = str(tmp_path / "newer.sqlite3")
    opener(newer).close()
    with sqlite3.connect(newer) as c:
        c.execute("UPDATE medport_store SET value = '7' WHERE key = 'version'")
    with pytest.raises(StoreRefused) as e:
        opener(newer)
    assert "newer medport (store version 7" in str(e.value) and "\n" not in str(e.value)
    foreign = str(tmp_path / "foreign.sqlite3")
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreRefused) as e:
        opener(foreign)
    assert "is not a medport-" in str(e.value) and "invoices" in str(e.value)
    other = Repository if opener is StateStore else StateStore
    wrong = str(tmp_path / "wrong.sqlite3")
    other(wrong).close()
    with pytest.raises(StoreRefused) as e:
        opener(wrong)
    assert "store, not a" in str(e.value)
    for path in (newer, foreign, wrong):  # refused: the lock is given back
        with pytest.raises(StoreRefused):
            opener(path)


def test_migrations_run_in_order(tmp_path):
    path = str(tmp_path / "m.sqlite3")
    c = sqlite3.connect(path, isolation_level=None)
    open_versioned(c, path, kind="k", version=1, schema="CREATE TABLE IF NOT EXISTS t (a)", tables={"t"})
    steps = []
    migrations = {
        1: lambda conn: (steps.append(1), conn.execute("ALTER TABLE t ADD COLUMN b")),
        2: lambda conn: steps.append(2),
    }
    assert (
        open_versioned(
            c, path, kind="k", version=3, schema="CREATE TABLE IF NOT EXISTS t (a)", tables={"t"}, migrations=migrations
        )
        == 1
    )
    assert steps == [1, 2] and _stamp(path)["version"] == "3"
    c.close()


def test_the_emulator_refuses_a_newer_database_with_one_line(tmp_path):
    db = str(tmp_path / "emu.sqlite3")
    Repository(db).close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE medport_store SET value = '99' WHERE key = 'version'")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medport.generator.cli.main",
            "emulate",
            "--db",
            db,
            "--port",
            "0",
            "--metriport-port",
            "0",
            "--no-console",
            "--no-deploy",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "newer medport" in err and "Traceback" not in err, err
