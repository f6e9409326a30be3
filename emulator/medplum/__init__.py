"""The Medplum emulator: FHIR store and REST, auth and access policies, bots run the way Medplum runs
them, subscriptions, and a developer API under /_emulator.

Backend (no HTTP): state.py builds it whole — fhir/ (store, search, validation, policies, FhirService),
auth.py, bots.py + runtime/ (warm Node workers), subscriptions.py, runs.py. HTTP: app.py (factory and
error mapping), routes/ (FHIR, OAuth, admin, bot operations), devapi.py, httpio.py (request helpers and
the one `current_state()` accessor). server.py serves it (two listeners, see its docstring).
"""
from importlib import import_module

__all__ = ["create_app", "EmulatorHandle", "start_in_thread", "Settings"]
_HOME = {"create_app": ".app", "EmulatorHandle": ".server", "start_in_thread": ".server", "Settings": ".settings"}


def __getattr__(name: str):
    # loaded on first use: `releases` (plain data the CLI reads at start-up) must not pull in Flask and the FHIR
    # definitions, which need the Node packages `medport setup` installs
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
