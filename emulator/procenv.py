"""Keep the emulator's secrets out of what its bots can read through /proc.

Bots run as the same user as the emulator, and `/proc/<pid>/environ` of a same-user process is readable: it
shows the environment block the process was STARTED with (the kernel reads that memory, not the current
`environ`), so deleting a variable (`os.environ.pop`, `unsetenv`) does not take it out of that view.
`/proc/<pid>/cmdline` (readable by anyone) shows the arguments, e.g. `--admin-client-secret X`.

`hide_process_environment()` therefore overwrites the memory itself (Linux): every variable of the initial
block is first copied to the heap (`setenv`, so C code calling `getenv` still finds it; Python's `os.environ`
is a copy made at start-up and keeps working), then its bytes in the block are zeroed — except the few names
bot workers also get (`KEEP`). The values of secret options are overwritten with `*` in the argument block.
`take_secrets()` removes the named secrets from `os.environ` too (and so from any child started without an
explicit environment), after the caller has read them.
"""

from __future__ import annotations

import ctypes
import os
import threading

# what a bot worker also gets (runtime/pool.py WORKER_ENV_KEEP): nothing secret
KEEP = frozenset(
    (
        "PATH",
        "HOME",
        "TZ",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LC_MESSAGES",
        "TMPDIR",
        "TEMP",
        "TMP",
        "SYSTEMROOT",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    )
)
SECRET_ENV = (
    "MEDPORT_ADMIN_CLIENT_SECRET",
    "METRIPORT_WEBHOOK_KEY",
    "METRIPORT_API_KEY",
    "MEDPORT_FAKE_METRIPORT_API_KEY",
    "MEDPLUM_CLIENT_SECRET",
)
SECRET_FLAG_WORDS = ("secret", "key", "token", "password")

_done = False
_lock = threading.Lock()


def take_secrets(names: tuple[str, ...] = SECRET_ENV) -> dict[str, str]:
    """Remove the named variables from `os.environ` (unsetenv) and return those that were set."""
    return {n: v for n in names if (v := os.environ.pop(n, None)) is not None}


def _blocks() -> tuple[int, int, int, int] | None:
    """(arg_start, arg_end, env_start, env_end) of this process (/proc/self/stat fields 48-51), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # fields[0] is field 3
        a0, a1, e0, e1 = (int(x) for x in fields[45:49])
    except (OSError, ValueError):
        return None
    return (a0, a1, e0, e1) if 0 < a0 <= a1 and 0 < e0 <= e1 else None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _secret_flag(arg: bytes) -> bool:
    a = arg.lower()
    return a.startswith(b"--") and any(w.encode() in a for w in SECRET_FLAG_WORDS)


def hide_process_environment() -> bool:
    """Zero this process's initial environment block except `KEEP`, and mask secret option values in its argument
    block (see the module docstring). Once per process; True when the /proc view was rewritten."""
    global _done
    with _lock:
        if _done:
            return True
        blocks = _blocks()
        if blocks is None:
            return False  # not Linux: there is no /proc to read the environment through
        arg_start, arg_end, env_start, env_end = blocks
        env = _read("/proc/self/environ")
        if len(env) == env_end - env_start:
            offset = 0
            for entry in env.split(b"\0"):
                name, eq, _ = entry.partition(b"=")
                if eq and name.decode(errors="replace") not in KEEP:
                    key = os.fsdecode(name)
                    if key in os.environ:
                        os.putenv(key, os.environ[key])  # setenv: C's environ now points at a heap copy
                    ctypes.memset(env_start + offset, 0, len(entry))
                offset += len(entry) + 1
        args = _read("/proc/self/cmdline")
        if len(args) == arg_end - arg_start:
            offset, mask_next = 0, False
            for arg in args.split(b"\0"):
                start = offset + arg.index(b"=") + 1 if _secret_flag(arg) and b"=" in arg else offset
                if mask_next or (_secret_flag(arg) and b"=" in arg):
                    ctypes.memset(arg_start + start, ord("*"), offset + len(arg) - start)
                mask_next = _secret_flag(arg) and b"=" not in arg
                offset += len(arg) + 1
        _done = True
        return True
