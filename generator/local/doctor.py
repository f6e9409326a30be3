"""`medport doctor`: check what medport needs here — Python, Node 22 and the npm packages, the ports, the
config and generated files, the credentials for deploy and the real sandbox — and say what to do."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from medport import __version__
from medport.defaults import EMULATOR_PORT, FAKE_METRIPORT_PORT
from medport.emulator import node as noderuntime

from .. import statefile
from ..generation.config import CONFIG_FILENAME, ConfigError, load_config
from ..generation.outputs import stale_files
from ..options import config_option, out_option
from .runtime_setup import read_stamp


@dataclass
class Finding:
    level: str  # ok | info | warn | fail
    topic: str
    text: str
    fix: str = ""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def diagnose(config_path: str = CONFIG_FILENAME, out_dir: str = "bots", config_required: bool = False) -> list[Finding]:
    """What is there and what is missing; `config_required`: the config was named (-c, MEDPORT_CONFIG), so its
    absence is a failure, not a hint."""
    running = statefile.running()
    f = [*_python(), *_node(), *_ports(running), *_config(config_path, out_dir, config_required), *_credentials()]
    if running:
        f.append(
            Finding(
                "info",
                "emulator",
                f"`medport emulate` is running here at {running['base_url']} (pid {running['pid']}) — `medport status`",
            )
        )
    return f


def _python() -> list[Finding]:
    """The Python running medport and medport's version."""
    py = ".".join(map(str, sys.version_info[:3]))
    return [
        Finding(
            "ok" if sys.version_info >= (3, 11) else "fail",
            "python",
            f"Python {py} ({sys.executable}), medport {__version__}",
            "" if sys.version_info >= (3, 11) else "medport needs Python >= 3.11",
        )
    ]


def _node() -> list[Finding]:
    """Node and the npm packages (the same discovery emulate, demo and check use), those `medport check`
    type-checks with, medport's cache, npm."""
    f: list[Finding] = []
    noderuntime.clear_cache()
    try:
        rt = noderuntime.find_runtime()
        f.append(Finding("ok", "node", rt.describe()))
    except noderuntime.NodeRuntimeMissing as e:
        rt = None
        f.append(Finding("fail", "node", str(e)))
    if rt is not None:
        # `medport check` type-checks the bots with the packages this discovery finds
        try:
            trt = noderuntime.find_runtime(noderuntime.TYPECHECK_PACKAGES)
            ts = noderuntime.package_version(trt.node_modules, "typescript")
            f.append(
                Finding(
                    "ok",
                    "typecheck",
                    f"typescript {ts}, @medplum/fhirtypes and @medplum/core from the "
                    f"{trt.source} ({trt.node_modules}), for `medport check`",
                )
            )
        except noderuntime.NodeRuntimeMissing as e:
            f.append(
                Finding(
                    "fail", "typecheck", f"`medport check` type-checks the bots: {e}", "`medport setup` installs them"
                )
            )
    cache = noderuntime.cache_dir()
    stamp = read_stamp(cache)
    if stamp:
        f.append(
            Finding("ok", "cache", f"{cache}: set up {stamp.get('installed', '')} (Node {stamp.get('node_version')})")
        )
    else:
        f.append(Finding("info", "cache", f"{cache}: not set up", "" if rt is not None else "`medport setup`"))
    if rt is None and not shutil.which("npm"):
        f.append(
            Finding(
                "fail",
                "npm",
                "no npm on PATH: `medport setup` needs it to fetch Node 22 and the packages",
                "install Node.js + npm from your package manager (any version)",
            )
        )
    return f


def _ports(running: dict | None) -> list[Finding]:
    """The ports of `medport emulate`: free, taken by the emulator running here, or by another program."""
    f: list[Finding] = []
    for port, what, flag in (
        (EMULATOR_PORT, "Medplum emulator", "--port"),
        (FAKE_METRIPORT_PORT, "fake Metriport", "--metriport-port"),
    ):
        if _port_free(port):
            f.append(Finding("ok", "port", f"{port} is free for the {what}"))
        elif running and port in (running.get("port"), running.get("metriport_port")):
            f.append(
                Finding("info", "port", f"{port}: the {what} of `medport emulate` (pid {running['pid']}) is on it")
            )
        else:
            f.append(
                Finding(
                    "warn",
                    "port",
                    f"{port} is taken by another program",
                    f"stop it, or run `medport emulate {flag} 0` (any free port)",
                )
            )
    return f


def _config(config_path: str, out_dir: str, config_required: bool) -> list[Finding]:
    """The config and the files generated from it."""
    f: list[Finding] = []
    if not Path(config_path).exists():
        if config_required:
            f.append(
                Finding(
                    "fail",
                    "config",
                    f"{config_path} does not exist",
                    f"check the path, or `medport init` writes {CONFIG_FILENAME} here",
                )
            )
        else:
            f.append(Finding("warn", "config", f"no {config_path} here", "`medport init` writes one"))
    else:
        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            f.append(Finding("fail", "config", str(e).splitlines()[0], f"fix {config_path}"))
        else:
            f.append(Finding("ok", "config", f"{config_path} is valid"))
            stale = stale_files(cfg, out_dir)
            f.append(
                Finding("ok", "bots", f"{out_dir}/ is up to date")
                if not stale
                else Finding(
                    "warn",
                    "bots",
                    f"{len(stale)} file(s) in {out_dir}/ missing or stale",
                    f"`medport generate -c {config_path} -o {out_dir}`",
                )
            )
    return f


def _credentials() -> list[Finding]:
    """The credentials deploy and the real Metriport need (present or not: values are never shown)."""
    f: list[Finding] = []
    have = lambda *names: [n for n in names if os.environ.get(n)]
    medplum = have("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")
    f.append(
        Finding(
            "ok" if len(medplum) == 3 else "info",
            "deploy",
            "MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET set"
            if len(medplum) == 3
            else f"for `medport deploy`: {', '.join(sorted({'MEDPLUM_CLIENT_ID', 'MEDPLUM_CLIENT_SECRET'} - set(medplum)) or ['-'])} "
            "not set",
            ""
            if len(medplum) == 3
            else "export MEDPLUM_CLIENT_ID/MEDPLUM_CLIENT_SECRET (an admin ClientApplication) before deploying",
        )
    )
    metriport = have("METRIPORT_API_KEY", "METRIPORT_WEBHOOK_KEY")
    f.append(
        Finding(
            "ok" if len(metriport) == 2 else "info",
            "metriport",
            "METRIPORT_API_KEY and METRIPORT_WEBHOOK_KEY set"
            if len(metriport) == 2
            else f"for `deploy --set-secrets` and `emulate --metriport sandbox`: "
            f"{', '.join(n for n in ('METRIPORT_API_KEY', 'METRIPORT_WEBHOOK_KEY') if n not in metriport)} not set",
            "" if len(metriport) == 2 else "not needed for emulate, demo or check (the fake Metriport)",
        )
    )
    return f


STYLE = {"ok": ("ok", "green"), "info": ("info", "blue"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}


@click.command("doctor")
@config_option
@out_option
@click.pass_context
def doctor_command(ctx, config_path, out_dir):
    """Check Python, Node 22 and npm packages, ports, config and credentials; say what to do. Exit 1 on a failure."""
    named = ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT
    findings = diagnose(config_path, out_dir, config_required=named)
    for x in findings:
        label, color = STYLE[x.level]
        click.echo(click.style(f"  {label:<5}", fg=color, bold=x.level == "fail") + f" {x.topic:<10} {x.text}")
        if x.fix:
            click.echo(f"  {'':<5} {'':<10} → {x.fix}")
    failed = [x for x in findings if x.level == "fail"]
    if failed:
        raise click.ClickException(f"{len(failed)} problem(s) to fix (see → above)")
    click.echo("medport is ready here")
