"""The Medplum emulator: FHIR store and REST, auth and access policies, bots run the way Medplum runs
them, subscriptions, and a developer API under /_emulator.

Backend (no HTTP): backend.py builds it whole — fhir/ (store, search, validation, policies, FhirService,
batch), projects.py, auth.py, bots.py + runtime/ (warm Node workers), subscriptions.py, cron.py, runs.py.
HTTP: app.py (factory and error mapping), routes/ (FHIR, OAuth, admin, bot operations), devapi.py, httpio.py
(request helpers and the one `current_backend()` accessor). server.py serves it (two listeners, see its docstring).
"""

_EXPORTS = {"create_app": ".app", "EmulatorHandle": ".server", "start": ".server", "Settings": ".settings"}

__all__ = ["EmulatorHandle", "Settings", "create_app", "start"]


def __getattr__(name: str):
    # loaded on first use: importing one light module of the package (a signer, the rules, the settings) must not
    # start the whole service (Flask, the backend) — the CLI's commands import those alone
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
