"""Pool of warm Node 22 workers (worker.js) that run Medplum bots.

`BotRuntime.execute(ExecRequest) -> ExecResult` is thread-safe. Each worker runs one execution at a
time; when every worker is busy the pool grows up to `max_size` (so a bot that calls another bot over
HTTP while its own execution is open does not deadlock), and queues beyond that. A worker that dies
(bot called process.exit, ran out of memory, was killed on a timeout) fails only the execution it was
running and is replaced.

Protocol: requests are JSON lines on the worker's stdin; responses are JSON lines on a dedicated pipe
(fd passed to the worker in MEDPORT_PROTO_FD), so nothing a bot prints can corrupt it. Log lines are
streamed as they are produced, so the logs of a bot that is killed are still returned.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...node import node_binary, node_modules_dir
from ...procenv import KEEP, hide_process_environment
from .. import jsonsafe
from ..releases import Sandbox

log = logging.getLogger(__name__)

WORKER_JS = str(Path(__file__).with_name("worker.js"))
LOG_LIMIT_BYTES = 10 * 1024  # AuditEvent.outcomeDesc keeps the last 10 KiB of console text
DEFAULT_TIMEOUT_S = 10.0  # Medplum: Bot.timeout default (vmcontext DEFAULT_VM_CONTEXT_TIMEOUT, Lambda default)
READY_TIMEOUT_S = 30.0
IDLE_TTL_S = 30.0  # extra workers (beyond `size`) idle this long are stopped

# Medplum's limits per runtime (server bots/vmcontext.ts, cloud/aws/deploy.ts):
# - vmcontext runs in the Medplum server's own process: no memory limit of its own (the server's heap, Node's
#   default unless the operator sets one) and only the vm timeout, which stops synchronous code. The emulator
#   runs it in workers with Node's default heap (memory_mb=None) and adds a generous wall-clock cap so nothing
#   hangs forever (VMCONTEXT_HARD_CAP_S; on Medplum an OOM there takes the whole server down).
# - awslambda is a Lambda with MemorySize 1024 MB (LAMBDA_MEMORY) and Timeout Bot.timeout (default 10 s, at most
#   900 s): wall clock. Lambda's Node bootstrap gives V8 the function's memory minus a tenth for the young
#   generation (--max-old-space-size = 90 %, --max-semi-space-size = 5 %), and the sandbox is killed when the
#   process as a whole passes MemorySize ("Runtime exited with error: signal: killed", Runtime.OutOfMemory).
LAMBDA_MEMORY_MB = 1024
MAX_LAMBDA_TIMEOUT_S = 900.0
VMCONTEXT_HARD_CAP_S = 900.0
FHIRPATH_TIMEOUT_S = 60.0
WATCH_INTERVAL_S = 0.05  # how often the memory of running Lambda workers is looked at


def lambda_node_args(memory_mb: int) -> list[str]:
    """The V8 limits Lambda's Node runtime sets for a function of `memory_mb` MB."""
    new_space = memory_mb // 10
    return [f"--max-semi-space-size={max(1, new_space // 2)}", f"--max-old-space-size={memory_mb - new_space}"]


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# The only variables a worker inherits: what Node itself needs to find programs,
# the home directory, temp space, time zone, locale and extra CA certificates for TLS. Nothing else of the
# emulator's environment (MEDPORT_ADMIN_CLIENT_SECRET, METRIPORT_*, MEDPLUM_CLIENT_SECRET, cloud credentials,
# NODE_OPTIONS...) reaches a bot: on Medplum bots get secrets only through `event.secrets`. The emulator's own
# /proc view shows no more than these either (procenv.hide_process_environment).
WORKER_ENV_KEEP = tuple(sorted(KEEP))


def worker_env(base: Mapping[str, str] | None = None, **runtime_vars: str) -> dict[str, str]:
    """The environment of a bot worker: the allow-listed variables of `base` (default os.environ) plus the
    runtime's own plumbing (`runtime_vars`, MEDPORT_* names that worker.js reads and then deletes)."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in WORKER_ENV_KEEP if k in source}
    env.update(runtime_vars)
    return env


@dataclass
class ExecRequest:
    bot_id: str
    code: str
    runtime: str = "vmcontext"  # "vmcontext" | "awslambda"
    timeout_s: float | None = DEFAULT_TIMEOUT_S  # Bot.timeout (seconds); None/0 -> 10
    event: dict = field(default_factory=dict)  # {bot, contentType, input, secrets, traceId, requester, headers}
    base_url: str = ""
    access_token: str = ""
    # The emulator's own, beyond what Medplum hands its runtime (optional):
    default_headers: dict | None = None  # MedplumClient defaultHeaders (Medplum: Cookie when Bot.runAsUser)
    filename: str | None = None  # Bot.executableCode.title: a .mjs/.cjs title decides ESM/CJS on awslambda
    sandbox: Sandbox | None = None  # the vmcontext sandbox of the emulated Medplum release (None = the newest)


@lru_cache(maxsize=16)
def _sandbox_message(sb: Sandbox) -> dict:
    """What worker.js builds a vmcontext sandbox from."""
    return {
        "name": sb.name,
        "console": "log" if sb.console == ("log",) else "full",
        "fetch": sb.fetch,
        "globals": list(sb.globals),
        "requester": sb.requester,
        "response_stream": sb.response_stream,
    }


@dataclass
class ExecResult:
    ok: bool
    returned: bool  # False = the handler returned undefined
    value: Any = None
    error: str | None = None
    logs: str = ""
    duration_ms: float = 0.0
    timed_out: bool = False
    crashed: bool = False
    # The emulator's own, beyond what Medplum's runtime reports:
    worker_pid: int | None = None


class _Call:
    __slots__ = ("crash", "cut_reason", "done", "id", "joiner", "msg", "parts", "size")

    def __init__(self, call_id: int, joiner: str):
        self.id = call_id
        self.done = threading.Event()
        self.msg: dict | None = None
        self.parts: list[str] = []
        self.size = 0
        self.crash: str | None = None
        self.joiner = joiner
        self.cut_reason: str | None = None  # set when the developer API cut this execution off

    def add_log(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text) + 1
        if self.size > 8 * LOG_LIMIT_BYTES and len(self.parts) > 1:
            joined = self.joiner.join(self.parts)[-2 * LOG_LIMIT_BYTES :]
            self.parts = [joined]
            self.size = len(joined)

    def logs(self) -> str:
        text = self.joiner.join(self.parts)
        if self.joiner == "":  # awslambda: Medplum trims the Lambda log tail
            text = text.strip()
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) > LOG_LIMIT_BYTES:
            text = raw[-LOG_LIMIT_BYTES:].decode("utf-8", "ignore")
        return text


class _Worker:
    def __init__(
        self, node: str, env: dict, node_args: list[str], flavor: str = "vmcontext", memory_limit: int | None = None
    ):
        r, w = os.pipe()
        env = dict(env, MEDPORT_PROTO_FD=str(w))
        self.flavor = flavor  # "vmcontext" | "awslambda": which runtime's limits it has
        self.memory_limit = memory_limit  # bytes of RSS past which it is killed (Lambda's MemorySize)
        self.over_memory = False  # killed for passing memory_limit
        # MEDPORT_WORKER_NODE_ARGS (a profiling aid, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"): extra Node flags
        extra = os.environ.get("MEDPORT_WORKER_NODE_ARGS", "").split()
        try:
            self.proc = subprocess.Popen(
                [node, *node_args, *extra, "--disable-warning=ExperimentalWarning", WORKER_JS],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(w,),
                env=env,
                close_fds=True,
            )
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        os.close(w)
        assert self.proc.stdin is not None and self.proc.stderr is not None  # PIPEs
        self._stdin, self._stderr = self.proc.stdin, self.proc.stderr
        self.pid = self.proc.pid
        self._rfile = os.fdopen(r, "rb")
        self.ready = threading.Event()
        self.dead = False
        self.exit_status: int | None = None
        self.known: set[str] = set()  # code keys this worker has compiled/loaded
        self.calls: dict[int, _Call] = {}
        self.last_used = time.monotonic()
        self._stderr_tail: deque[str] = deque(maxlen=40)
        self._wlock = threading.Lock()
        self._err_thread = threading.Thread(
            target=self._stderr_loop, name=f"medport-worker-err-{self.pid}", daemon=True
        )
        self._err_thread.start()
        threading.Thread(target=self._read_loop, name=f"medport-worker-{self.pid}", daemon=True).start()

    # -- io
    def send(self, msg: dict) -> None:
        # jsonsafe: a non-finite number would make a line JSON.parse refuses, and the call would wait for
        # an answer that never comes (it was the hang of test_fuzz_execute_never_5xx: {"a": -Infinity})
        try:
            data = jsonsafe.dumps_bytes(msg) + b"\n"
        except (TypeError, ValueError):  # a value no JSON type holds: as its str
            data = jsonsafe.dumps_bytes(msg, default=str) + b"\n"
        with self._wlock:
            self._stdin.write(data)
            self._stdin.flush()

    def _read_loop(self) -> None:
        try:
            for line in self._rfile:
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("worker %s: bad protocol line (%d bytes)", self.pid, len(line))
                    continue
                t = msg.get("t")
                if t == "log":
                    call = self.calls.get(msg.get("id"))
                    if call is not None:
                        call.add_log(msg.get("s", ""))
                elif t in ("res", "fp", "pong"):
                    call = self.calls.get(msg.get("id"))
                    if call is not None:
                        call.msg = msg
                        call.done.set()
                elif t == "ready":
                    self.ready.set()
        except (OSError, ValueError):
            pass
        finally:
            self._on_exit()

    def _stderr_loop(self) -> None:
        try:
            for raw in self._stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._stderr_tail.append(line)
                log.debug("worker %s: %s", self.pid, line)
        except (OSError, ValueError):
            pass

    def _on_exit(self) -> None:
        self.dead = True
        try:
            self.exit_status = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_status = self.proc.wait()
        self._err_thread.join(1)  # the stderr tail tells an out-of-memory abort apart
        reason = self.describe_exit()
        for call in list(self.calls.values()):
            if not call.done.is_set():
                call.crash = reason
                call.done.set()
        self.ready.set()  # wake anyone waiting for readiness
        try:
            self._rfile.close()
        except OSError:
            pass

    def describe_exit(self) -> str:
        status = self.exit_status
        tail = "\n".join(self._stderr_tail)
        if self.over_memory:
            mb = (self.memory_limit or 0) // (1024 * 1024)
            return f"Runtime exited with error: signal: killed (memory over the function's {mb} MB)"
        if "heap out of memory" in tail or "Reached heap limit" in tail:
            return "Runtime exited with error: JavaScript heap out of memory"
        if status is None:
            return "Runtime exited"
        if status < 0:
            return f"Runtime exited with error: signal {-status}"
        return f"Runtime exited with error: exit status {status}"

    def lambda_error(self) -> dict:
        """The invoke payload AWS Lambda answers when the runtime process dies (what Medplum gets back)."""
        status = self.exit_status
        tail = "\n".join(self._stderr_tail)
        if self.over_memory:
            detail, kind = "signal: killed", "Runtime.OutOfMemory"
        elif "heap out of memory" in tail or "Reached heap limit" in tail:
            detail, kind = "signal: aborted (core dumped)", "Runtime.ExitError"  # V8's fatal OOM aborts
        elif status is not None and status < 0:
            detail, kind = (
                {
                    9: "signal: killed",
                    6: "signal: aborted (core dumped)",
                    15: "signal: terminated",
                    11: "signal: segmentation fault (core dumped)",
                }.get(-status, f"signal: {-status}"),
                "Runtime.ExitError",
            )
        else:
            detail, kind = f"exit status {status}", "Runtime.ExitError"
        return {
            "errorType": kind,
            "errorMessage": f"RequestId: {uuid.uuid4()} Error: Runtime exited with error: {detail}",
        }

    def kill(self) -> None:
        self.dead = True
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self) -> None:
        self.dead = True
        try:
            self._stdin.close()  # EOF -> the worker exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass


class BotRuntime:
    """Warm bot workers, each with the limits of the runtime it serves (Medplum's, see LAMBDA_MEMORY_MB):
    `memory_mb` caps the heap of vmcontext workers (None = Node's default, like the Medplum server process that
    runs vmcontext bots); `lambda_memory_mb` is the Lambda's MemorySize (V8 limits as Lambda sets them, and the
    worker killed when its memory passes it); `hard_cap_s` bounds a vmcontext execution's wall clock (Medplum
    has none for async code: a generous cap so nothing hangs forever)."""

    def __init__(
        self,
        size: int = 2,
        max_size: int = 8,
        hard_cap_s: float = VMCONTEXT_HARD_CAP_S,
        memory_mb: int | None = None,
        lambda_memory_mb: int = LAMBDA_MEMORY_MB,
    ):
        self.size = max(0, int(size))
        self.max_size = max(1, int(max_size), self.size)
        self.hard_cap_s = float(hard_cap_s)
        self.memory_mb = int(memory_mb) if memory_mb else None
        self.lambda_memory_mb = int(lambda_memory_mb)
        # a bot can read /proc/<this pid>/environ and cmdline: no secret may show there
        hide_process_environment()
        self._node = node_binary()
        nm = node_modules_dir()
        # awslambda code is written here; a node_modules link makes `require`/`import` of @medplum/core work
        # from the bot file for both CJS and ESM (on Lambda the bot layer provides them).
        self._bot_dir = tempfile.mkdtemp(prefix="medport-bots-")
        try:
            os.symlink(nm, os.path.join(self._bot_dir, "node_modules"), target_is_directory=True)
        except OSError:
            pass
        self._env = worker_env(MEDPORT_NODE_MODULES=str(nm), MEDPORT_BOT_DIR=self._bot_dir)
        self._cond = threading.Condition()
        # waiters for a worker of one runtime wait on its own condition (same lock): a worker that goes idle
        # wakes one of them, not every waiting thread
        self._avail = {f: threading.Condition(self._cond._lock) for f in ("vmcontext", "awslambda")}  # type: ignore[attr-defined]
        self._waiting = {"vmcontext": 0, "awslambda": 0}
        self._workers: set[_Worker] = set()
        self._idle: dict[str, list[_Worker]] = {"vmcontext": [], "awslambda": []}
        self._starting = 0
        self._closed = False
        self._ids = itertools.count(1)
        # executions in progress: call id -> (bot id, worker, monotonic start, call) — for cut_off()
        self._running: dict[int, tuple[str, _Worker, float, _Call]] = {}
        self._running_lock = threading.Lock()
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        with self._cond:
            for _ in range(self.size):
                w = self._spawn("vmcontext")
                self._workers.add(w)
                self._idle["vmcontext"].append(w)

    # ------------------------------------------------------------ pool
    def _spawn(self, flavor: str = "vmcontext") -> _Worker:
        if flavor == "awslambda":
            limit = self.lambda_memory_mb * 1024 * 1024
            return _Worker(self._node, self._env, lambda_node_args(self.lambda_memory_mb), "awslambda", limit)
        args = [f"--max-old-space-size={self.memory_mb}"] if self.memory_mb else []
        return _Worker(self._node, self._env, args, "vmcontext")

    def _acquire(self, flavor: str = "vmcontext") -> _Worker:
        while True:
            spawn = False
            to_stop: _Worker | None = None
            with self._cond:
                while True:
                    if self._closed:
                        raise RuntimeError("BotRuntime is closed")
                    idle = self._idle[flavor]
                    if idle:
                        w = idle.pop()  # LIFO: the warmest worker
                        if w.dead:
                            self._workers.discard(w)
                            continue
                        break
                    if len(self._workers) + self._starting < self.max_size:
                        self._starting += 1
                        spawn = True
                        break
                    other = self._idle["awslambda" if flavor == "vmcontext" else "vmcontext"]
                    if other:  # every slot taken, some idle with the other runtime's limits: swap one
                        to_stop = other.pop(0)
                        self._workers.discard(to_stop)
                        self._starting += 1
                        spawn = True
                        break
                    self._waiting[flavor] += 1
                    try:
                        self._avail[flavor].wait()
                    finally:
                        self._waiting[flavor] -= 1
            if to_stop is not None:
                threading.Thread(target=to_stop.stop, daemon=True).start()
            if spawn:
                new_w = None
                try:
                    new_w = self._spawn(flavor)
                finally:
                    with self._cond:
                        self._starting -= 1
                        if new_w is not None:
                            self._workers.add(new_w)
                        self._wake_all()
                w = new_w
            if not w.ready.wait(READY_TIMEOUT_S) or w.dead:
                reason = w.describe_exit() if w.dead else "worker did not become ready"
                log.error("bot worker %s failed to start: %s", w.pid, reason)
                w.kill()
                with self._cond:
                    self._workers.discard(w)
                    self._wake_all()
                raise RuntimeError(f"bot worker failed to start: {reason}")
            if w.memory_limit:
                self._ensure_watcher()
            return w

    def _release(self, w: _Worker, retire: bool = False) -> None:
        now = time.monotonic()
        w.last_used = now
        to_stop: list[_Worker] = []
        with self._cond:
            freed = False
            if retire or w.dead or self._closed:
                self._workers.discard(w)
                if not w.dead:
                    to_stop.append(w)
                freed = True
            else:
                self._idle[w.flavor].append(w)
            # stop extra workers that stayed idle (the pool shrinks back to `size` vmcontext workers)
            excess = len(self._workers) - self.size
            if excess > 0:
                for flavor in ("awslambda", "vmcontext"):
                    for old in list(self._idle[flavor]):
                        if excess <= 0:
                            break
                        if now - old.last_used > IDLE_TTL_S:
                            self._idle[flavor].remove(old)
                            self._workers.discard(old)
                            to_stop.append(old)
                            excess -= 1
            # keep `size` warm vmcontext workers: replace dead ones in the background of this call
            missing = self.size - (sum(1 for x in self._workers if x.flavor == "vmcontext") + self._starting)
            if missing > 0 and not self._closed:
                for _ in range(missing):
                    try:
                        nw = self._spawn("vmcontext")
                    except OSError as exc:  # pragma: no cover
                        log.error("could not start a bot worker: %s", exc)
                        break
                    self._workers.add(nw)
                    self._idle["vmcontext"].insert(0, nw)
                    freed = True
            if freed or to_stop or not self._waiting[w.flavor]:
                self._wake_all()  # a slot or another runtime's waiter: everyone looks again
            else:
                self._avail[w.flavor].notify()
        for old in to_stop:
            threading.Thread(target=old.stop, daemon=True).start()

    def _wake_all(self) -> None:
        """(lock held) Wake every thread waiting for a worker."""
        for cond in self._avail.values():
            cond.notify_all()

    def _ensure_watcher(self) -> None:
        with self._cond:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="medport-worker-memory", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        """Lambda's memory limit: a worker running an execution whose resident memory passes its function's
        MemorySize is killed, as Lambda kills the sandbox (the execution then fails with Runtime.OutOfMemory)."""
        while not self._watch_stop.wait(WATCH_INTERVAL_S):
            with self._running_lock:
                busy = {w for _b, w, _t, _c in self._running.values() if w.memory_limit}
            for w in busy:
                if not w.dead and _rss_bytes(w.pid) > (w.memory_limit or 0):
                    w.over_memory = True
                    w.kill()

    # ------------------------------------------------------------ API
    def execute(self, req: ExecRequest) -> ExecResult:
        t0 = time.perf_counter()
        runtime, timeout_s, deadline = self._limits(req)
        code = req.code or ""
        sandbox = req.sandbox if runtime == "vmcontext" else None
        flavor = f"{runtime}@{sandbox.name}" if sandbox else runtime  # a release wraps the code its own way
        key = f"{flavor}:{req.bot_id}:{hashlib.sha256(code.encode('utf-8')).hexdigest()[:24]}"
        try:
            w = self._acquire(runtime)
        except RuntimeError as exc:
            return ExecResult(
                ok=False, returned=False, error=str(exc), crashed=True, duration_ms=(time.perf_counter() - t0) * 1000
            )
        retire = False
        try:
            msg = _exec_message(req, runtime, key, timeout_s, sandbox)
            for attempt in range(2):
                # the code goes along when the worker does not hold it (or lost it: the second attempt)
                if key not in w.known or attempt:
                    msg["code"] = code
                call, finished = self._send_and_wait(w, msg, req.bot_id, runtime, deadline)
                if not finished:
                    retire = True
                    w.kill()
                    call.done.wait(5)
                    w.calls.pop(call.id, None)
                    return self._timeout_result(runtime, timeout_s, deadline, call, w, t0)
                w.calls.pop(call.id, None)
                if call.crash is not None:
                    retire = True
                    return _crash_result(runtime, call, w, t0)
                res = call.msg or {}
                if res.get("need_code"):
                    w.known.discard(key)
                    continue
                w.known.add(key)
                retire = bool(res.get("recycle"))
                return ExecResult(
                    ok=bool(res.get("ok")),
                    returned=bool(res.get("returned")),
                    value=res.get("value"),
                    error=res.get("error"),
                    logs=call.logs(),
                    duration_ms=(time.perf_counter() - t0) * 1000,
                    timed_out=bool(res.get("timed_out")),
                    crashed=False,
                    worker_pid=w.pid,
                )
            return ExecResult(
                ok=False,
                returned=False,
                error="worker lost the bot code",
                crashed=True,
                duration_ms=(time.perf_counter() - t0) * 1000,
                worker_pid=w.pid,
            )
        finally:
            self._release(w, retire=retire)

    def _limits(self, req: ExecRequest) -> tuple[str, float, float]:
        """The runtime, the bot's timeout and how long to wait for its answer: Lambda's timeout is wall clock;
        Medplum's vm timeout covers synchronous code only, so the hard cap bounds the rest."""
        runtime = req.runtime if req.runtime in ("vmcontext", "awslambda") else "vmcontext"
        timeout_s = float(req.timeout_s) if req.timeout_s else DEFAULT_TIMEOUT_S
        if runtime == "awslambda":
            timeout_s = min(timeout_s, MAX_LAMBDA_TIMEOUT_S)  # Medplum refuses to deploy a longer one
            return runtime, timeout_s, timeout_s
        return runtime, timeout_s, max(self.hard_cap_s, timeout_s + 1.0)

    def _send_and_wait(self, w: _Worker, msg: dict, bot_id: str, runtime: str, deadline: float) -> tuple[_Call, bool]:
        """Send one execution to the worker and wait for its end; (the call, whether it ended in time). A worker
        whose pipe breaks is killed: the call then carries its exit as the crash."""
        call = _Call(next(self._ids), "" if runtime == "awslambda" else "\n")
        msg["id"] = call.id
        w.calls[call.id] = call
        with self._running_lock:
            self._running[call.id] = (bot_id, w, time.monotonic(), call)
        try:
            w.send(msg)
        except (OSError, ValueError):
            w.kill()
            call.done.wait(5)
            if call.crash is None:
                call.crash = w.describe_exit()
        try:
            return call, call.done.wait(deadline)
        finally:
            with self._running_lock:
                self._running.pop(call.id, None)

    @staticmethod
    def _timeout_result(
        runtime: str, timeout_s: float, deadline: float, call: _Call, w: _Worker, t0: float
    ) -> ExecResult:
        if runtime == "awslambda":
            # AWS Lambda: "Task timed out after N.NN seconds", errorType Sandbox.Timedout
            text = f"Task timed out after {timeout_s:.2f} seconds"
            call.add_log(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {text}\n")
            value = {"errorType": "Sandbox.Timedout", "errorMessage": text}
            returned = True
        else:
            text = (
                f"Bot execution exceeded the emulator's hard cap of {deadline:g} s "
                f"(the vm timeout of {timeout_s:g} s only stops synchronous code); the worker was killed"
            )
            call.add_log(text)
            value, returned = None, False
        return ExecResult(
            ok=False,
            returned=returned,
            value=value,
            error=text,
            logs=call.logs(),
            duration_ms=(time.perf_counter() - t0) * 1000,
            timed_out=True,
            crashed=False,
            worker_pid=w.pid,
        )

    def eval_fhirpath(self, expression: str, resource: dict, variables: dict | None = None) -> list:
        """Evaluate FHIRPath like Medplum's subscription criteria: evalFhirPathTyped(expr, [resource], vars),
        each variable (`%current`, `%previous`; the `%` may be omitted) passed through toTypedValue.
        Returns the plain values. Raises ValueError on a bad expression."""
        w = self._acquire()
        retire = False
        try:
            call = _Call(next(self._ids), "\n")
            w.calls[call.id] = call
            try:
                w.send(
                    {
                        "op": "fhirpath",
                        "id": call.id,
                        "expression": expression,
                        "resource": resource,
                        "variables": variables or {},
                    }
                )
            except (OSError, ValueError):
                w.kill()
            limit = min(self.hard_cap_s, FHIRPATH_TIMEOUT_S)
            if not call.done.wait(limit):
                retire = True
                w.kill()
                raise TimeoutError(f"FHIRPath evaluation exceeded {limit:g} s")
            w.calls.pop(call.id, None)
            if call.crash is not None:
                retire = True
                raise RuntimeError(f"bot worker died evaluating FHIRPath: {call.crash}")
            msg = call.msg or {}
            if not msg.get("ok"):
                raise ValueError(msg.get("error") or "FHIRPath evaluation failed")
            return msg.get("value") or []
        finally:
            self._release(w, retire=retire)

    def running(self) -> list[dict]:
        """The executions in progress: bot id, worker pid, seconds since they started."""
        now = time.monotonic()
        with self._running_lock:
            return [
                {"execution": cid, "bot_id": bot_id, "worker_pid": w.pid, "running_s": round(now - t, 3)}
                for cid, (bot_id, w, t, _call) in sorted(self._running.items())
            ]

    def cut_off(self, bot_id: str | None = None, reason: str = "Execution cut off") -> list[dict]:
        """Kill the worker of every execution in progress (of `bot_id`, or all): what a server restart, a
        redeploy or a recycled Lambda does to a running bot. Each one ends crashed, with `reason` in its error
        and logs; its worker is replaced. Returns the executions cut off."""
        with self._running_lock:
            victims = [(cid, b, w, c) for cid, (b, w, _t, c) in self._running.items() if bot_id in (None, b)]
        out = []
        for cid, b, w, call in victims:
            call.cut_reason = reason
            w.kill()
            out.append({"execution": cid, "bot_id": b, "worker_pid": w.pid})
        return out

    def stats(self) -> dict:
        with self._cond:
            return {
                "workers": len(self._workers),
                "idle": sum(len(v) for v in self._idle.values()),
                "starting": self._starting,
                "by_runtime": {f: sum(1 for w in self._workers if w.flavor == f) for f in self._idle},
                "pids": sorted(w.pid for w in self._workers),
            }

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            for idle in self._idle.values():
                idle.clear()
            self._watch_stop.set()
            self._wake_all()
        threads = [threading.Thread(target=w.stop, daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        shutil.rmtree(self._bot_dir, ignore_errors=True)

    def __enter__(self) -> BotRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _exec_message(req: ExecRequest, runtime: str, key: str, timeout_s: float, sandbox: Any) -> dict:
    """The worker's `exec` message (the code is added by the caller when the worker does not hold it)."""
    msg = {
        "op": "exec",
        "runtime": runtime,
        "key": key,
        "hash": key.rsplit(":", 1)[1],
        "bot_id": req.bot_id,
        "timeout_ms": int(timeout_s * 1000),
        "event": req.event or {},
        "base_url": req.base_url,
        "access_token": req.access_token,
        "default_headers": req.default_headers,
        "filename": req.filename,
    }
    if sandbox is not None:
        msg["sandbox"] = _sandbox_message(sandbox)
    return msg


def _crash_result(runtime: str, call: _Call, w: _Worker, t0: float) -> ExecResult:
    """The worker died (killed, out of memory, process.exit), noticed as its pipe closed: the execution fails now
    with that reason. Lambda answers the invoke with its error payload (Medplum returns it), and the log tail ends
    with the runtime's own line."""
    error = f"{call.cut_reason}: {call.crash}" if call.cut_reason else str(call.crash)
    if runtime == "awslambda" and not call.cut_reason:
        payload = w.lambda_error()
        call.add_log(f"{payload['errorMessage']}\n{payload['errorType']}\n")
        return ExecResult(
            ok=False,
            returned=True,
            value=payload,
            error=error,
            logs=call.logs(),
            duration_ms=(time.perf_counter() - t0) * 1000,
            crashed=True,
            worker_pid=w.pid,
        )
    if call.cut_reason:
        call.add_log(error)
    return ExecResult(
        ok=False,
        returned=False,
        error=error,
        logs=call.logs(),
        duration_ms=(time.perf_counter() - t0) * 1000,
        crashed=True,
        worker_pid=w.pid,
    )
