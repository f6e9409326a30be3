"""`.medport/emulator.json`: where a running `medport emulate` can be reached (URLs, ports, pid — never a
secret). Written once the emulator serves, removed when it exits; `medport runs`, `replay` and `status`
read it from the working directory to find the emulator, whatever port it took."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from medport import __version__
from medport.defaults import EMULATOR_BASE_URL

STATE_FILE = Path(".medport") / "emulator.json"
DEFAULT_BASE_URL = EMULATOR_BASE_URL


def write(info: dict, path: Path = STATE_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "pid": os.getpid(),
        "medport": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
    }
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n", "utf-8")
    os.replace(tmp, path)
    return path


def read(path: Path = STATE_FILE) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def remove(path: Path = STATE_FILE) -> None:
    """Remove the file if this process wrote it (a second emulator in the same folder keeps its own)."""
    data = read(path)
    if data is not None and data.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def running(path: Path = STATE_FILE) -> dict | None:
    """The state of an emulator started from this folder that is still running, else None."""
    data = read(path)
    return data if data and pid_alive(data.get("pid")) and data.get("base_url") else None


def emulator_base_url(explicit: str | None) -> str:
    """--base-url (or MEDPLUM_BASE_URL) when given, else the emulator running from this folder, else :8103."""
    if explicit:
        return explicit
    state = running()
    return state["base_url"] if state else DEFAULT_BASE_URL
