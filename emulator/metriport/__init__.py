"""Fake Metriport Medical API sandbox: a plain-Python backend, a thin Flask layer, signed webhooks."""

_EXPORTS = {
    "create_app": ".app",
    "MetriportBackend": ".backend",
    "MetriportState": ".backend",
    "FakeMetriport": ".server",
    "start": ".server",
    "Settings": ".settings",
}

__all__ = ["FakeMetriport", "MetriportBackend", "MetriportState", "Settings", "create_app", "start"]


def __getattr__(name: str):
    # loaded on first use: importing one light module of the package (a signer, the rules, the settings) must not
    # start the whole service (Flask, the backend) — the CLI's commands import those alone
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
