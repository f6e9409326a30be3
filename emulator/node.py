"""Where the project's npm packages and its pinned Node 22 binary live.

The system Node is 20 and @medplum/core 5.x needs 22, so nothing in medport ever runs
`node` from PATH: everything goes through `node_binary()`.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


class NodeRuntimeMissing(RuntimeError):
    pass


def _candidates() -> list[Path]:
    env = os.environ.get("MEDPORT_NODE_MODULES")
    out = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    out += [p / "node_modules" for p in (here.parent, *here.parents)]
    cwd = Path.cwd().resolve()
    out += [p / "node_modules" for p in (cwd, *cwd.parents)]
    return out


@lru_cache(maxsize=1)
def node_modules_dir() -> Path:
    for cand in _candidates():
        if (cand / "@medplum" / "core").is_dir():
            return cand
    raise NodeRuntimeMissing(
        "npm packages not found (looked for node_modules/@medplum/core next to medport and above the "
        "current directory). Run `make setup` (or `npm ci`) in the medport checkout, or set MEDPORT_NODE_MODULES."
    )


def node_binary() -> str:
    path = node_modules_dir() / ".bin" / "node"
    if not path.exists():
        raise NodeRuntimeMissing(f"{path} is missing: run `npm ci` so the pinned Node 22 (npm package node@22) is installed.")
    return str(path)


def definitions_dir() -> Path:
    return node_modules_dir() / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
