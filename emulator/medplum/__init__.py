"""The Medplum emulator: FHIR store and REST, auth and access policies, bots run the way Medplum runs
them, subscriptions, and a developer API under /_emulator.

Backend (no HTTP): state.py builds it whole — fhir/ (store, search, validation, policies, FhirService),
auth.py, bots.py + runtime/ (warm Node workers), subscriptions.py, runs.py. HTTP: app.py (factory and
error mapping), routes/ (FHIR, OAuth, admin, bot operations), devapi.py, httpio.py (request helpers and
the one `current_state()` accessor). server.py serves it (two listeners, see its docstring).
"""
from .app import create_app
from .server import EmulatorHandle, start_in_thread
from .settings import Settings

__all__ = ["create_app", "EmulatorHandle", "start_in_thread", "Settings"]
