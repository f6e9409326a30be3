"""`python -m medport.emulator.metriport [--port N] [--api-key K] [--data PATH] [--delay S]`: run the fake.

Prints one JSON line `{"baseUrl", "apiKey", "facilityId"}` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from medport.defaults import FAKE_METRIPORT_PORT

from ..shared import converted_ccda_dir
from .server import start
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medport.emulator.metriport")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=FAKE_METRIPORT_PORT)
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--data", default=None, help="FHIR bundle file or folder of bundles (default: shared fixtures if present)"
    )
    p.add_argument("--delay", type=float, default=0.3, help="seconds between async steps")
    a = p.parse_args(argv)
    fixtures = converted_ccda_dir()
    data = a.data or (str(fixtures) if fixtures else None)
    fake = start(Settings(api_key=a.api_key, data_path=data, delay_s=a.delay), a.host, a.port)
    print(json.dumps({"baseUrl": fake.base_url, "apiKey": fake.api_key, "facilityId": fake.facility_id}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
