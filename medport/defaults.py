"""Where medport's local services listen by default and the development credentials they accept: the one home
of these values — the services, the CLI's options and `medport.testing` read them here (the config schema and the
README, which cannot import, are tested to say the same).

A leaf module (it imports nothing of medport), so the commands that only talk to the services (`runs`, `replay`,
`status`, `doctor`) load without them.
"""

from __future__ import annotations

import os

EMULATOR_PORT = 8103  # Medplum's own port
FAKE_METRIPORT_PORT = 8180
CONSOLE_PORT = 8104  # `medport console`, and the console `medport emulate` serves
EMULATOR_BASE_URL = f"http://127.0.0.1:{EMULATOR_PORT}/"  # also medplum.base_url's default in config.schema.json
FAKE_METRIPORT_URL = f"http://127.0.0.1:{FAKE_METRIPORT_PORT}"
DEFAULT_ADMIN_CLIENT_ID = "medport-admin"
DEFAULT_ADMIN_CLIENT_SECRET = "medport-admin-secret"
# The fake Metriport's API key unless MEDPORT_FAKE_METRIPORT_API_KEY (or `medport emulate --metriport-api-key`)
# says otherwise: fixed and documented, so scripts and SDK clients pointed at the fake need no scraping. It
# opens nothing but the local fake.
DEV_FAKE_METRIPORT_API_KEY = "medport-dev-metriport-key"


def admin_credentials() -> tuple[str, str]:
    """The emulator's admin client (its developer API requires it): MEDPORT_ADMIN_CLIENT_ID/SECRET or the defaults."""
    return (
        os.environ.get("MEDPORT_ADMIN_CLIENT_ID") or DEFAULT_ADMIN_CLIENT_ID,
        os.environ.get("MEDPORT_ADMIN_CLIENT_SECRET") or DEFAULT_ADMIN_CLIENT_SECRET,
    )


def fake_metriport_api_key() -> str:
    return os.environ.get("MEDPORT_FAKE_METRIPORT_API_KEY") or DEV_FAKE_METRIPORT_API_KEY
