"""Fake Metriport Medical API sandbox: a plain-Python backend, a thin Flask layer, signed webhooks."""
from .app import create_app
from .backend import MetriportBackend, MetriportState
from .server import FakeMetriport, make_server

__all__ = ["create_app", "MetriportBackend", "MetriportState", "FakeMetriport", "make_server"]
