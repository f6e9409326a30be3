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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...node import node_binary, node_modules_dir
from .. import jsonsafe

log = logging.getLogger(__name__)

WORKER_JS = str(Path(__file__).with_name("worker.js"))
LOG_LIMIT_BYTES = 10 * 1024  # DESIGN: AuditEvent.outcomeDesc keeps the last 10 KiB of console text
DEFAULT_TIMEOUT_S = 10.0  # Medplum: Bot.timeout default (vmcontext DEFAULT_VM_CONTEXT_TIMEOUT, Lambda default)
READY_TIMEOUT_S = 30.0
IDLE_TTL_S = 30.0  # extra workers (beyond `size`) idle this long are stopped

# The only variables a worker inherits (DESIGN "Security model"): what Node itself needs to find programs,
# the home directory, temp space, time zone, locale and extra CA certificates for TLS. Nothing else of the
# emulator's environment (MEDPORT_ADMIN_CLIENT_SECRET, METRIPORT_*, MEDPLUM_CLIENT_SECRET, cloud credentials,
# NODE_OPTIONS...) reaches a bot: on Medplum bots get secrets only through `event.secrets`.
WORKER_ENV_KEEP = ("PATH", "HOME", "TZ", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TMPDIR",
                   "TEMP", "TMP", "SYSTEMROOT", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR")


def worker_env(base: dict[str, str] | None = None, **runtime_vars: str) -> dict[str, str]:
    """The environment of a bot worker: the allow-listed variables of `base` (default os.environ) plus the
    runtime's own plumbing (`runtime_vars`, MEDPORT_* names that worker.js reads and then deletes)."""
    base = os.environ if base is None else base
    env = {k: base[k] for k in WORKER_ENV_KEEP if k in base}
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
    # Additions (optional):
    default_headers: dict | None = None  # MedplumClient defaultHeaders (Medplum: Cookie when Bot.runAsUser)
    filename: str | None = None  # Bot.executableCode.title: a .mjs/.cjs title decides ESM/CJS on awslambda


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
    # Additions:
    worker_pid: int | None = None


class _Call:
    __slots__ = ("id", "done", "msg", "parts", "size", "crash", "joiner")

    def __init__(self, call_id: int, joiner: str):
        self.id = call_id
        self.done = threading.Event()
        self.msg: dict | None = None
        self.parts: list[str] = []
        self.size = 0
        self.crash: str | None = None
        self.joiner = joiner

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
    def __init__(self, node: str, env: dict, memory_mb: int):
        r, w = os.pipe()
        env = dict(env, MEDPORT_PROTO_FD=str(w))
        try:
            self.proc = subprocess.Popen(
                [node, f"--max-old-space-size={int(memory_mb)}", "--disable-warning=ExperimentalWarning", WORKER_JS],
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
        self._err_thread = threading.Thread(target=self._stderr_loop, name=f"medport-worker-err-{self.pid}", daemon=True)
        self._err_thread.start()
        threading.Thread(target=self._read_loop, name=f"medport-worker-{self.pid}", daemon=True).start()

    # -- io
    def send(self, msg: dict) -> None:
        # jsonsafe: a non-finite number would make a line JSON.parse refuses, and the call would wait for
        # an answer that never comes (it was the hang of test_fuzz_execute_never_5xx: {"a": -Infinity})
        data = (jsonsafe.dumps(msg, default=str, ensure_ascii=True) + "\n").encode("ascii")
        with self._wlock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

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
            for raw in self.proc.stderr:
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
        if "heap out of memory" in tail or "Reached heap limit" in tail:
            return "Runtime exited with error: JavaScript heap out of memory"
        if status is None:
            return "Runtime exited"
        if status < 0:
            return f"Runtime exited with error: signal {-status}"
        return f"Runtime exited with error: exit status {status}"

    def kill(self) -> None:
        self.dead = True
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self) -> None:
        self.dead = True
        try:
            self.proc.stdin.close()  # EOF -> the worker exits
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
    def __init__(self, size: int = 2, max_size: int = 8, hard_cap_s: float = 60, memory_mb: int = 256):
        self.size = max(0, int(size))
        self.max_size = max(1, int(max_size), self.size)
        self.hard_cap_s = float(hard_cap_s)
        self.memory_mb = int(memory_mb)
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
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._starting = 0
        self._closed = False
        self._ids = itertools.count(1)
        with self._cond:
            for _ in range(self.size):
                w = self._spawn()
                self._workers.add(w)
                self._idle.append(w)

    # ------------------------------------------------------------ pool
    def _spawn(self) -> _Worker:
        return _Worker(self._node, self._env, self.memory_mb)

    def _acquire(self) -> _Worker:
        while True:
            spawn = False
            with self._cond:
                while True:
                    if self._closed:
                        raise RuntimeError("BotRuntime is closed")
                    if self._idle:
                        w = self._idle.pop()  # LIFO: the warmest worker
                        if w.dead:
                            self._workers.discard(w)
                            continue
                        break
                    if len(self._workers) + self._starting < self.max_size:
                        self._starting += 1
                        spawn = True
                        break
                    self._cond.wait()
            if spawn:
                new_w = None
                try:
                    new_w = self._spawn()
                finally:
                    with self._cond:
                        self._starting -= 1
                        if new_w is not None:
                            self._workers.add(new_w)
                        self._cond.notify_all()
                w = new_w
            if not w.ready.wait(READY_TIMEOUT_S) or w.dead:
                reason = w.describe_exit() if w.dead else "worker did not become ready"
                log.error("bot worker %s failed to start: %s", w.pid, reason)
                w.kill()
                with self._cond:
                    self._workers.discard(w)
                    self._cond.notify_all()
                raise RuntimeError(f"bot worker failed to start: {reason}")
            return w

    def _release(self, w: _Worker, retire: bool = False) -> None:
        now = time.monotonic()
        w.last_used = now
        to_stop: list[_Worker] = []
        with self._cond:
            if retire or w.dead or self._closed:
                self._workers.discard(w)
                if not w.dead:
                    to_stop.append(w)
            else:
                self._idle.append(w)
            # stop extra workers that stayed idle (the pool shrinks back to `size`)
            excess = len(self._workers) - self.size
            if excess > 0:
                for old in list(self._idle):
                    if excess <= 0:
                        break
                    if now - old.last_used > IDLE_TTL_S:
                        self._idle.remove(old)
                        self._workers.discard(old)
                        to_stop.append(old)
                        excess -= 1
            # keep `size` warm workers: replace dead ones in the background of this call
            missing = self.size - (len(self._workers) + self._starting)
            replacements = []
            if missing > 0 and not self._closed:
                for _ in range(missing):
                    try:
                        nw = self._spawn()
                    except OSError as exc:  # pragma: no cover
                        log.error("could not start a bot worker: %s", exc)
                        break
                    self._workers.add(nw)
                    self._idle.insert(0, nw)
                    replacements.append(nw)
            self._cond.notify_all()
        for old in to_stop:
            threading.Thread(target=old.stop, daemon=True).start()

    # ------------------------------------------------------------ API
    def execute(self, req: ExecRequest) -> ExecResult:
        t0 = time.perf_counter()
        runtime = req.runtime if req.runtime in ("vmcontext", "awslambda") else "vmcontext"
        timeout_s = float(req.timeout_s) if req.timeout_s else DEFAULT_TIMEOUT_S
        if runtime == "awslambda":
            deadline = timeout_s  # Lambda: wall clock
        else:
            deadline = max(self.hard_cap_s, timeout_s + 1.0)  # vm timeout covers sync code; the cap the rest
        code = req.code or ""
        key = f"{runtime}:{req.bot_id}:{hashlib.sha256(code.encode('utf-8')).hexdigest()[:24]}"
        try:
            w = self._acquire()
        except RuntimeError as exc:
            return ExecResult(ok=False, returned=False, error=str(exc), crashed=True,
                              duration_ms=(time.perf_counter() - t0) * 1000)
        retire = False
        try:
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
            for _attempt in range(2):
                call = _Call(next(self._ids), "" if runtime == "awslambda" else "\n")
                if key not in w.known or _attempt:
                    msg["code"] = code
                msg["id"] = call.id
                w.calls[call.id] = call
                try:
                    w.send(msg)
                except (OSError, ValueError):
                    w.kill()
                    call.done.wait(5)
                    if call.crash is None:
                        call.crash = w.describe_exit()
                finished = call.done.wait(deadline)
                if not finished:
                    retire = True
                    w.kill()
                    call.done.wait(5)
                    w.calls.pop(call.id, None)
                    return self._timeout_result(runtime, timeout_s, deadline, call, w, t0)
                w.calls.pop(call.id, None)
                if call.crash is not None:
                    retire = True
                    return ExecResult(ok=False, returned=False, error=call.crash, logs=call.logs(),
                                      duration_ms=(time.perf_counter() - t0) * 1000, crashed=True,
                                      worker_pid=w.pid)
                res = call.msg or {}
                if res.get("need_code"):
                    w.known.discard(key)
                    continue
                w.known.add(key)
                if res.get("recycle"):
                    retire = True
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
            return ExecResult(ok=False, returned=False, error="worker lost the bot code", crashed=True,
                              duration_ms=(time.perf_counter() - t0) * 1000, worker_pid=w.pid)
        finally:
            self._release(w, retire=retire)

    @staticmethod
    def _timeout_result(runtime: str, timeout_s: float, deadline: float, call: _Call, w: _Worker,
                        t0: float) -> ExecResult:
        if runtime == "awslambda":
            # AWS Lambda: "Task timed out after N.NN seconds", errorType Sandbox.Timedout
            text = f"Task timed out after {timeout_s:.2f} seconds"
            call.add_log(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {text}\n")
            value = {"errorType": "Sandbox.Timedout", "errorMessage": text}
            returned = True
        else:
            text = (f"Bot execution exceeded the emulator's hard cap of {deadline:g} s "
                    f"(the vm timeout of {timeout_s:g} s only stops synchronous code); the worker was killed")
            call.add_log(text)
            value, returned = None, False
        return ExecResult(ok=False, returned=returned, value=value, error=text, logs=call.logs(),
                          duration_ms=(time.perf_counter() - t0) * 1000, timed_out=True, crashed=False,
                          worker_pid=w.pid)

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
                w.send({"op": "fhirpath", "id": call.id, "expression": expression, "resource": resource,
                        "variables": variables or {}})
            except (OSError, ValueError):
                w.kill()
            if not call.done.wait(self.hard_cap_s):
                retire = True
                w.kill()
                raise TimeoutError(f"FHIRPath evaluation exceeded {self.hard_cap_s:g} s")
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

    def stats(self) -> dict:
        with self._cond:
            return {"workers": len(self._workers), "idle": len(self._idle), "starting": self._starting,
                    "pids": sorted(w.pid for w in self._workers)}

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
            self._cond.notify_all()
        threads = [threading.Thread(target=w.stop, daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        shutil.rmtree(self._bot_dir, ignore_errors=True)

    def __enter__(self) -> "BotRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
