"""`python -m medport.emulator.medplum [--host H] [--port N] [--db PATH | --memory] [--medplum-version V]`:
the Medplum emulator
alone (no fake Metriport, no bots deployed) — what `medport emulate --no-deploy` minus the fake does.
Prints `listening on <base url>` once it serves."""

from __future__ import annotations

import argparse
import sys

from ..locks import InUse, StoreRefused
from ..serving import PortInUse, tune_gc_for_serving, wait_for_stop
from .releases import NEWEST, OLDEST, UnsupportedRelease
from .server import DEFAULT_DB, DEFAULT_PORT, start
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medport.emulator.medplum")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file of the FHIR store")
    p.add_argument("--memory", action="store_true", help="keep everything in memory")
    p.add_argument("--medplum-version", default=NEWEST, help=f"Medplum release to emulate ({OLDEST} to {NEWEST})")
    a = p.parse_args(argv)
    try:
        handle = start(
            Settings(db_path=None if a.memory else a.db, medplum_version=a.medplum_version), host=a.host, port=a.port
        )
    except (PortInUse, InUse, StoreRefused, UnsupportedRelease) as e:
        print(e, file=sys.stderr)
        return 2
    print(f"medport emulator (Medplum {a.medplum_version}) listening on {handle.base_url}", flush=True)
    tune_gc_for_serving()
    try:
        wait_for_stop()
    finally:
        handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
