"""Where medport's local services listen by default and the development credentials they accept.

Kept apart from the services themselves so the commands that only talk to them (`runs`, `replay`, `status`,
`doctor`) and `medport.testing` load without the emulator (which needs Node 22 and the npm packages at
import). The emulator's and the fake's own constants are tested to be equal to these.
"""
from __future__ import annotations

import os

EMULATOR_PORT = 8103                    # Medplum's own port
FAKE_METRIPORT_PORT = 8180
CONSOLE_PORT = 8104                     # `medport console`, and the console `medport emulate` serves
DEFAULT_ADMIN_CLIENT_ID = "medport-admin"
DEFAULT_ADMIN_CLIENT_SECRET = "medport-admin-secret"
# The fake Metriport's API key unless MEDPORT_FAKE_METRIPORT_API_KEY (or `medport emulate --metriport-api-key`)
# says otherwise: fixed and documented, so scripts and SDK clients pointed at the fake need no scraping. It
# opens nothing but the local fake.
DEV_FAKE_METRIPORT_API_KEY = "medport-dev-metriport-key"


def admin_credentials() -> tuple[str, str]:
    """The emulator's admin client (its developer API requires it): MEDPORT_ADMIN_CLIENT_ID/SECRET or the defaults."""
    return (os.environ.get("MEDPORT_ADMIN_CLIENT_ID") or DEFAULT_ADMIN_CLIENT_ID,
            os.environ.get("MEDPORT_ADMIN_CLIENT_SECRET") or DEFAULT_ADMIN_CLIENT_SECRET)


def fake_metriport_api_key() -> str:
    return os.environ.get("MEDPORT_FAKE_METRIPORT_API_KEY") or DEV_FAKE_METRIPORT_API_KEY
