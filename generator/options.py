"""What every medport command shares, defined once: the options (`-c/--config`, `-o/--out`, the Medplum server
and its client, the emulator's admin client, Metriport's API), their environment variables (each option names
its variable through click, so every --help shows `[env var: NAME]` the same way and the variable works
wherever the option does), `.env` loading, `-v/--verbose` / `MEDPORT_LOG_LEVEL` and the logging they set up.

A command module takes what it needs:

    @click.command("x")
    @config_option
    @medplum_options(default="emulator")
    def x_command(config_path, base_url, client_id, client_secret): ...

and gets a logger with `logging.getLogger(__name__)` (everything under `medport.` follows the level set here).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from medport.defaults import DEFAULT_ADMIN_CLIENT_ID, DEFAULT_ADMIN_CLIENT_SECRET, EMULATOR_BASE_URL

from .generation.config import CONFIG_FILENAME, ConfigError, load_config

LOG_LEVEL_ENV = "MEDPORT_LOG_LEVEL"
CONFIG_ENV = "MEDPORT_CONFIG"
EMULATOR_DEFAULT = f"the emulator running from this folder (.medport/emulator.json), else {EMULATOR_BASE_URL}"


def _option(*decls, **kw) -> Callable:
    """click.option with the environment variable (if any) shown in --help."""
    if kw.get("envvar"):
        kw.setdefault("show_envvar", True)
    return click.option(*decls, **kw)


def _stack(*decorators: Callable) -> Callable:
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


config_option = _option(
    "-c",
    "--config",
    "config_path",
    default=CONFIG_FILENAME,
    show_default=True,
    envvar=CONFIG_ENV,
    type=click.Path(dir_okay=False),
    help="The medport config file.",
)
out_option = _option(
    "-o",
    "--out",
    "out_dir",
    default="bots",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The folder of the generated files (committed).",
)


def medplum_options(default: str = "emulator", *, purpose: str = "") -> Callable:
    """--base-url / --client-id / --client-secret (MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET, the
    variables Medplum's own CLI reads). `default` says where the command goes without them: "emulator" (the one
    running from this folder, with its admin client) or "config" (medplum.base_url of the config)."""
    where = {
        "emulator": EMULATOR_DEFAULT,
        "config": "medplum.base_url of the config",
        "emulator-here": "the emulator running from this folder (.medport/emulator.json)",
    }[default]
    client = (
        "an admin ClientApplication of the project; Medplum's CLI reads the same variables"
        if default == "config"
        else "default: the emulator's admin client"
    )
    return _stack(
        _option(
            "--base-url",
            envvar="MEDPLUM_BASE_URL",
            show_default=where,
            metavar="URL",
            help="The Medplum server" + (f" {purpose}" if purpose else "") + ".",
        ),
        _option("--client-id", envvar="MEDPLUM_CLIENT_ID", metavar="ID", help=f"Client id ({client})."),
        _option("--client-secret", envvar="MEDPLUM_CLIENT_SECRET", metavar="SECRET", help="That client's secret."),
    )


admin_options = _stack(
    _option(
        "--admin-client-id",
        envvar="MEDPORT_ADMIN_CLIENT_ID",
        default=DEFAULT_ADMIN_CLIENT_ID,
        show_default=True,
        metavar="ID",
        help="The emulator's admin client (its developer API answers only it).",
    ),
    _option(
        "--admin-client-secret",
        envvar="MEDPORT_ADMIN_CLIENT_SECRET",
        default=DEFAULT_ADMIN_CLIENT_SECRET,
        metavar="SECRET",
        show_default="the development default",
        help="The emulator's admin client secret.",
    ),
)

metriport_options = _stack(
    _option(
        "--metriport-url",
        envvar="METRIPORT_BASE_URL",
        metavar="URL",
        show_default="the fake of the emulator running here, else metriport.environment of the config",
        help="Metriport's API root.",
    ),
    _option(
        "--metriport-api-key",
        envvar="METRIPORT_API_KEY",
        metavar="KEY",
        help="Metriport API key (the fake's is known).",
    ),
)


def load_or_exit(config_path: str | Path | None):
    """The typed config, or one line saying what is wrong with it (and exit 1)."""
    try:
        return load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


# ----------------------------------------------------------------------------------------- .env
def load_dotenv_file(path: Path | None = None) -> list[str]:
    """`.env` of the working directory into the environment, as Medplum's CLI reads it (dotenv: variables
    already set win). Returns the names it set."""
    path = path or Path.cwd() / ".env"
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path}: cannot read it ({e}) — fix or remove the file") from None
    added = [k for k, v in values.items() if v is not None and k not in os.environ]
    for k in added:
        os.environ[k] = values[k]  # type: ignore[assignment]
    return added


# ----------------------------------------------------------------------------------------- logging
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def log_level(verbose: int = 0, env: str | None = None) -> int:
    """-v = INFO, -vv = DEBUG; else MEDPORT_LOG_LEVEL (a name or a number); else WARNING."""
    if verbose:
        return logging.DEBUG if verbose > 1 else logging.INFO
    raw = (os.environ.get(LOG_LEVEL_ENV) if env is None else env) or ""
    raw = raw.strip().lower()
    if not raw:
        return logging.WARNING
    if raw.isdigit():
        return int(raw)
    if raw not in LEVELS:
        raise click.BadParameter(
            f"{raw!r} is not a log level: use one of debug, info, warning, error", param_hint=LOG_LEVEL_ENV
        )
    return LEVELS[raw]


class _Handler(logging.StreamHandler[TextIO]):
    """Writes to the sys.stderr of the moment (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_HANDLER: logging.Handler | None = None


def configure_logging(level: int) -> int:
    """medport's loggers (`medport.*`) at `level` on stderr, one line each; other libraries stay at WARNING
    unless DEBUG is asked for (their lines may carry URLs: never asked for by default)."""
    global _HANDLER
    root = logging.getLogger("medport")
    if _HANDLER is None:
        _HANDLER = _Handler()
        _HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(_HANDLER)
        root.propagate = False
    root.setLevel(level)
    _HANDLER.setLevel(level)
    return level


def is_verbose() -> bool:
    return logging.getLogger("medport").isEnabledFor(logging.DEBUG)


def _verbose_callback(ctx: click.Context, _param, value: int) -> int:
    # the group's -v and a command's -v add up; MEDPORT_LOG_LEVEL applies when neither is given
    total = value + (ctx.find_root().meta.get("medport.verbose", 0))
    ctx.find_root().meta["medport.verbose"] = total
    configure_logging(log_level(total))
    return total


def verbose_param() -> click.Option:
    return click.Option(
        ["-v", "--verbose"],
        count=True,
        expose_value=False,
        is_eager=True,
        callback=_verbose_callback,
        help=f"More log lines on stderr (-v info, -vv debug); else {LOG_LEVEL_ENV} "
        "(debug, info, warning, error) [default: warning].",
    )
