"""Fake Metriport Medical API sandbox: state/rules in plain Python, a thin Flask layer, signed webhooks."""
from .api import create_app
from .state import MetriportState
from .server import FakeMetriport, make_server

__all__ = ["create_app", "MetriportState", "FakeMetriport", "make_server"]
