"""pytest plugin (entry point `pytest11`, loaded automatically once medport is installed): fixtures that
start medport's Medplum emulator and fake Metriport for your tests.

    medport_stack      emulator + fake Metriport, the bots of your medport.toml deployed (`MedportStack`)
    medport_emulator   the emulator alone, no bots (`Emulator`)
    medport_fake       the fake Metriport alone (`FakeMetriport`)

ini options (pytest.ini / pyproject `[tool.pytest.ini_options]`):
    medport_config = medport.toml   config the bots are rendered from (relative to the rootdir)
    medport_scope  = session        fixture scope: session (default, one stack for the run), module or function
    medport_medplum_version = 5.1.26   Medplum release the emulator emulates (default: the config's
                                    medplum.version, else the newest); `--medplum-version` on the command line wins

If Node 22 or an npm package is missing the fixtures fail with one line saying what to run (`medport setup`).
`-p no:medport` disables the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import pytest

# medport.testing (Flask, the emulator, the bot runtime) is imported inside the fixtures, not here: pytest
# imports every installed plugin at start-up, and a test run that uses none of these fixtures must not pay for it.

Scope = Literal["session", "package", "module", "class", "function"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "medport_config",
        "medport.toml the medport_stack fixture deploys (relative to the rootdir)",
        default="medport.toml",
    )
    parser.addini(
        "medport_scope", "scope of the medport fixtures: session (default), module or function", default="session"
    )
    parser.addini(
        "medport_medplum_version",
        "Medplum release the medport emulator emulates (default: the config's medplum.version, else the newest)",
        default="",
    )
    parser.getgroup("medport").addoption(
        "--medplum-version",
        dest="medport_medplum_version",
        default=None,
        metavar="VERSION",
        help="Medplum release the medport fixtures' emulator emulates (e.g. 5.1.26; default: the config's "
        "medplum.version, else the newest)",
    )


def _medplum_version(config: pytest.Config) -> str | None:
    return config.getoption("medport_medplum_version") or str(config.getini("medport_medplum_version") or "") or None


def _scope(fixture_name: str, config: pytest.Config) -> Scope:
    scope = str(config.getini("medport_scope") or "session").strip()
    if scope not in SCOPES:
        raise pytest.UsageError(f"medport_scope = {scope!r}: use one of {', '.join(SCOPES)}")
    return scope


def _config_path(config: pytest.Config) -> Path:
    value = Path(str(config.getini("medport_config") or "medport.toml"))
    if value.is_absolute():
        return value
    at_root = config.rootpath / value
    return at_root if at_root.exists() or not (Path.cwd() / value).exists() else Path.cwd() / value


def _start(what, *args, **kw):
    from medport.emulator.medplum.releases import UnsupportedRelease
    from medport.emulator.node import NodeRuntimeMissing
    from medport.generator.generation.config import ConfigError

    try:
        return what(*args, **kw)
    except (NodeRuntimeMissing, ConfigError, UnsupportedRelease) as e:
        problem = str(e)
    pytest.fail(f"medport: {problem}", pytrace=False)


@pytest.fixture(scope=_scope)
def medport_stack(request: pytest.FixtureRequest):
    """The emulator and the fake Metriport on free ports, in memory, with the bots generated from your
    medport.toml deployed (secrets set, webhook registered). A `medport.testing.MedportStack`."""
    from medport.testing import start_stack

    path = _config_path(request.config)
    if not path.exists():
        pytest.fail(
            f"medport: {path} not found — run `medport init`, or set `medport_config` in your pytest ini", pytrace=False
        )
    stack = _start(start_stack, path, medplum_version=_medplum_version(request.config))
    yield stack
    stack.close()


@pytest.fixture(scope=_scope)
def medport_emulator(request: pytest.FixtureRequest):
    """The Medplum emulator alone (in memory, no bots): a `medport.testing.Emulator`."""
    from medport.testing import start_emulator

    version = _medplum_version(request.config)
    emulator = _start(start_emulator, **({"medplum_version": version} if version else {}))
    yield emulator
    emulator.close()


@pytest.fixture(scope=_scope)
def medport_fake():
    """The fake Metriport alone: a `medport.testing.FakeMetriport` (`base_url`, `api_key`, `facility_id`)."""
    from medport.testing import start_fake_metriport

    fake = _start(start_fake_metriport)
    yield fake
    fake.close()
