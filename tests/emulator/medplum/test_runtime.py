"""Bot runtime: warm Node workers running bots like Medplum's vmcontext and awslambda runtimes."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medport.emulator.medplum.runtime import BotRuntime, ExecRequest
from medport.emulator.medplum.runtime.pool import LOG_LIMIT_BYTES
from medport.testing import wait_until
from tests.paths import ROOT

HL7 = "x-application/hl7-v2+er7"


@pytest.fixture(scope="module")
def rt():
    runtime = BotRuntime(size=2, max_size=8, hard_cap_s=3, memory_mb=256)
    yield runtime
    runtime.close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _reply(self):
        self.server.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path.split("/")[2]))
        body = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _reply
    do_POST = _reply


@pytest.fixture(scope="module")
def http():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def ev(input=None, content_type="application/json", **kw):
    e = {
        "bot": {"reference": "Bot/b1"},
        "contentType": content_type,
        "input": input,
        "secrets": {},
        "traceId": "trace-1",
        "requester": {"reference": "ClientApplication/c1"},
        "headers": {},
    }
    e.update(kw)
    return e


def run(
    rt,
    code,
    runtime="vmcontext",
    timeout_s=10,
    event=None,
    base_url="http://127.0.0.1:9/",
    bot_id=None,
    token="tok-123",
    **kw,
):
    return rt.execute(
        ExecRequest(
            bot_id or f"bot-{abs(hash(code))}",
            code,
            runtime,
            timeout_s,
            event if event is not None else ev({}),
            base_url,
            token,
            **kw,
        )
    )


# ---------------------------------------------------------------- vmcontext sandbox


def test_vmcontext_globals_are_medplums(rt):
    code = """exports.handler = async (medplum, event) => {
      return {
        setTimeout: typeof setTimeout, process: typeof process, Buffer: typeof Buffer, setInterval: typeof setInterval,
        fetch: typeof fetch, URL: typeof URL, URLSearchParams: typeof URLSearchParams, Hl7Message: typeof Hl7Message,
        MedplumClient: typeof MedplumClient, ContentType: typeof ContentType, require: typeof require,
        TextEncoder: typeof TextEncoder, TextDecoder: typeof TextDecoder, Headers: typeof Headers,
        Request: typeof Request, Response: typeof Response, ReadableStream: typeof ReadableStream,
        TransformStream: typeof TransformStream, console: typeof console.log,
        globalEvent: typeof event, medplum: medplum instanceof MedplumClient,
        crypto: typeof require('crypto').createHmac,
        eventKeys: Object.keys(event).sort(),
      };
    };"""
    r = run(rt, code)
    assert r.ok and r.returned, r
    v = r.value
    for absent in ("setTimeout", "process", "Buffer", "setInterval"):
        assert v[absent] == "undefined", absent
    for present in (
        "fetch",
        "URL",
        "URLSearchParams",
        "Hl7Message",
        "MedplumClient",
        "require",
        "TextEncoder",
        "TextDecoder",
        "Headers",
        "Request",
        "Response",
        "ReadableStream",
        "TransformStream",
        "console",
        "crypto",
    ):
        assert v[present] == "function", present
    assert v["ContentType"] == "object" and v["globalEvent"] == "object" and v["medplum"] is True
    assert v["eventKeys"] == sorted(["bot", "requester", "input", "contentType", "secrets", "traceId", "headers"])


def test_module_exports_fails_like_medplum(rt):
    r = run(rt, "module.exports = { handler: async () => 'x' };")
    assert not r.ok and not r.crashed
    assert r.error == "exports.handler is not a function"
    assert "Unhandled error: exports.handler is not a function" in r.logs
    assert r.logs.endswith("Error exports.handler is not a function")
    assert r.value["resourceType"] == "OperationOutcome"  # Medplum: normalizeOperationOutcome(err)


def test_hl7_input_parsed_and_result_stringified(rt):
    msg = "MSH|^~\\&|SEND|FAC|RECV|FAC|20240101||ADT^A01|123|P|2.5\rPID|1||MRN1"
    code = """exports.handler = async (medplum, event) => {
      if (!(event.input instanceof Hl7Message)) throw new Error('not parsed');
      console.log(event.input.getSegment('PID').getField(3).toString());
      return event.input.buildAck();
    };"""
    r = run(rt, code, event=ev(msg, HL7))
    assert r.ok, r
    assert isinstance(r.value, str) and r.value.startswith("MSH|") and "MSA|AA|123" in r.value
    assert r.logs == "MRN1"


def test_return_values_distinguish_undefined(rt):
    cases = {
        "undefined": (False, None),
        "null": (True, None),
        "0": (True, 0),
        "false": (True, False),
        "'text'": (True, "text"),
        "[1, {a: 2}]": (True, [1, {"a": 2}]),
    }
    for js, (returned, value) in cases.items():
        r = run(rt, f"exports.handler = async () => {js};")
        assert r.ok and (r.returned, r.value) == (returned, value), (js, r)


def test_throw_returns_error_and_logs(rt):
    code = "exports.handler = async () => { console.log('step 1'); throw new Error('boom'); };"
    r = run(rt, code)
    assert not r.ok and not r.crashed and not r.timed_out
    assert r.error == "boom"
    assert r.logs.startswith("step 1\nUnhandled error: boom\nError: boom\n    at exports.handler")
    assert r.logs.endswith("\nError boom")


def test_console_format_is_medplums_mockconsole(rt):
    r = run(rt, "exports.handler = async () => { console.info('a', 1, {b: 2}); console.error('e'); console.count(); };")
    assert r.logs == "a 1 [object Object]\ne\ndefault: 1"  # MockConsole joins params with ' '


def test_busy_loop_stopped_by_vm_timeout_then_pool_still_works(rt):
    r = run(rt, "exports.handler = async () => { console.log('spin'); while (true) {} };", timeout_s=0.3)
    assert not r.ok and r.timed_out and not r.crashed
    assert r.error == "Script execution timed out after 300ms"
    assert r.logs == "spin\nError Script execution timed out after 300ms"
    r2 = run(rt, "exports.handler = async () => 'alive';")
    assert r2.ok and r2.value == "alive"


def test_vmcontext_async_wait_past_timeout_completes(rt, http):
    _, base = http
    code = f"""exports.handler = async () => {{
      const res = await fetch('{base}slow/1.0');
      return (await res.json()).id;
    }};"""
    t0 = time.monotonic()
    r = run(rt, code, timeout_s=0.3)
    assert r.ok and r.value == "p1", r
    assert time.monotonic() - t0 >= 0.9


def test_vmcontext_hard_cap_kills_async_busy_loop(rt):
    # A loop after an await is outside the vm timeout (as on Medplum): only the hard cap stops it.
    code = "exports.handler = async () => { await null; console.log('looping'); while (true) {} };"
    t0 = time.monotonic()
    r = run(rt, code, timeout_s=0.2)
    assert r.timed_out and not r.ok and "hard cap" in r.error
    assert r.logs.startswith("looping")
    assert time.monotonic() - t0 > 2.5  # only the cap stopped it (no upper bound: a loaded machine is slow)
    assert run(rt, "exports.handler = async () => 1;").value == 1


def test_logs_truncated_to_last_10_kib(rt):
    r = run(rt, "exports.handler = async () => { for (let i = 0; i < 3000; i++) console.log('line ' + i); };")
    assert r.ok
    assert len(r.logs.encode()) <= LOG_LIMIT_BYTES
    assert r.logs.endswith("line 2999") and "line 0\n" not in r.logs


# ---------------------------------------------------------------- MedplumClient


@pytest.mark.parametrize("runtime", ["vmcontext", "awslambda"])
def test_medplum_client_uses_base_url_token_and_trace_headers(rt, http, runtime):
    srv, base = http
    code = """exports.handler = async (medplum) => {
      const p = await medplum.readResource('Patient', 'p1');
      return p.id;
    };"""
    r = run(rt, code, runtime=runtime, base_url=base, token=f"secret-{runtime}", bot_id=f"client-{runtime}")
    assert r.ok and r.value == "p1", r
    hit = [
        s
        for s in srv.seen
        if s["path"] == "/fhir/R4/Patient/p1" and s["headers"].get("authorization") == f"Bearer secret-{runtime}"
    ]
    assert hit, srv.seen
    assert hit[-1]["headers"]["x-trace-id"] == "trace-1" and hit[-1]["headers"]["traceparent"] == "trace-1"


# ---------------------------------------------------------------- awslambda


def test_awslambda_cjs_with_node_globals_and_stdout(rt):
    code = """const core = require('@medplum/core');
    exports.handler = async (medplum, event) => {
      process.stdout.write('raw write\\n');
      console.log('obj', { a: 1 });
      await new Promise((r) => setTimeout(r, 10));
      return { t: typeof setTimeout, b: Buffer.from('hi').toString('base64'), core: typeof core.MedplumClient,
               input: event.input };
    };"""
    r = run(rt, code, runtime="awslambda", event=ev({"x": 1}))
    assert r.ok, r
    assert r.value == {"t": "function", "b": "aGk=", "core": "function", "input": {"x": 1}}
    lines = r.logs.split("\n")
    assert lines[0] == "raw write"
    assert lines[1].split("\t")[2:] == ["INFO", "obj { a: 1 }"]  # Lambda console line, util.format


def test_awslambda_esm(rt):
    code = """import { createReference } from '@medplum/core';
    export const handler = async (medplum, event) => {
      console.log('esm');
      return createReference({ resourceType: 'Patient', id: event.input.id });
    };"""
    r = run(rt, code, runtime="awslambda", event=ev({"id": "x9"}))
    assert r.ok, r
    assert r.value == {"reference": "Patient/x9"}
    assert r.logs.endswith("\tINFO\tesm")


def test_awslambda_module_exports_works(rt):
    r = run(rt, "module.exports = { handler: async () => 'cjs' };", runtime="awslambda")
    assert r.ok and r.value == "cjs"


def test_awslambda_throw(rt):
    r = run(rt, "exports.handler = async () => { throw new TypeError('bad'); };", runtime="awslambda")
    assert not r.ok and not r.crashed and r.error == "bad"
    assert r.value["errorType"] == "TypeError" and r.value["errorMessage"] == "bad"
    assert "Unhandled error: bad" in r.logs and "Invoke Error" in r.logs


def test_awslambda_unhandled_rejection_fails_invocation_and_recycles(rt):
    code = (
        "exports.handler = async () => { Promise.reject(new Error('stray'));"
        " await new Promise((r) => setTimeout(r, 20)); return 1; };"
    )
    r = run(rt, code, runtime="awslambda")
    assert not r.ok and r.value["errorType"] == "Runtime.UnhandledPromiseRejection" and r.error == "stray"
    assert wait_until(lambda: r.worker_pid not in rt.stats()["pids"], 30)


def test_awslambda_wall_clock_timeout_kills_worker(rt, http):
    _, base = http
    code = f"""exports.handler = async () => {{
      console.log('waiting');
      await fetch('{base}slow/3');
      return 'late';
    }};"""
    r = run(rt, code, runtime="awslambda", timeout_s=0.5)
    assert r.timed_out and not r.ok
    assert r.error == "Task timed out after 0.50 seconds"
    assert "waiting" in r.logs and r.value != "late"  # cut off by its timeout, not answered by the slow server
    dead_pid = r.worker_pid
    assert wait_until(lambda: dead_pid not in rt.stats()["pids"], 30)
    r2 = run(rt, "exports.handler = async () => 'next';", runtime="awslambda")
    assert r2.ok and r2.value == "next"


def test_awslambda_process_exit_crashes_only_that_execution(rt):
    r = run(rt, "exports.handler = async () => { console.log('bye'); process.exit(3); };", runtime="awslambda")
    assert r.crashed and not r.ok and "exit status 3" in r.error
    assert "bye" in r.logs
    r2 = run(rt, "exports.handler = async () => { process.kill(process.pid, 'SIGKILL'); };", runtime="awslambda")
    assert r2.crashed and "signal 9" in r2.error
    assert run(rt, "exports.handler = async () => 'ok';").value == "ok"


def test_out_of_memory_crashes_and_pool_recovers():
    with BotRuntime(size=1, max_size=2, memory_mb=64) as small:
        code = (
            "exports.handler = async () => { console.log('before'); const a = [];"
            " while (true) { a.push(new Array(100000).fill(Math.random())); } };"
        )
        r = small.execute(ExecRequest("oom", code, "vmcontext", 30, ev({}), "http://127.0.0.1:9/", "t"))
        assert r.crashed and not r.ok and "heap out of memory" in r.error
        # the death is noticed as a crash, not by the timeout (30 s) or the hard cap
        assert not r.timed_out and "timed out" not in r.error and "hard cap" not in r.error
        assert r.logs == "before"
        r2 = small.execute(
            ExecRequest("ok", "exports.handler = async () => 2;", "vmcontext", 5, ev({}), "http://127.0.0.1:9/", "t")
        )
        assert r2.ok and r2.value == 2 and r2.worker_pid != r.worker_pid


# ---------------------------------------------------------------- pool


def test_worker_reuse_and_script_cache(rt):
    code = "let n = 0; exports.handler = async () => { n++; return n; };"
    results = [run(rt, code, bot_id="reuse") for _ in range(5)]
    assert len({r.worker_pid for r in results}) == 1
    assert [r.value for r in results] == [1] * 5  # fresh context per execution: module state does not leak


def test_concurrent_executions_correct_and_logs_isolated(rt, http):
    _, base = http
    code = f"""exports.handler = async (medplum, event) => {{
      console.log('start ' + event.input.n);
      await fetch('{base}slow/0.2');
      console.log('end ' + event.input.n);
      return event.input.n * 2;
    }};"""

    def one(n):
        return n, run(rt, code, event=ev({"n": n}), bot_id="concurrent")

    with ThreadPoolExecutor(20) as ex:
        results = list(ex.map(one, range(20)))
    for n, r in results:
        assert r.ok and r.value == n * 2, r
        assert r.logs == f"start {n}\nend {n}"
    assert rt.stats()["workers"] <= 8


def test_nested_execution_does_not_deadlock(rt):
    # A bot running while another execution is requested from a second thread (like a bot calling $execute).
    small = BotRuntime(size=1, max_size=2)
    try:
        inner = []

        def outer_thread():
            return small.execute(
                ExecRequest(
                    "outer",
                    "exports.handler = async () => { const t = Date.now();"
                    " while (Date.now() - t < 300) {} return 'outer'; };",
                    "vmcontext",
                    5,
                    ev({}),
                    "http://127.0.0.1:9/",
                    "t",
                )
            )

        th = threading.Thread(target=lambda: inner.append(outer_thread()))
        th.start()
        assert wait_until(lambda: any(x["bot_id"] == "outer" for x in small.running()), 30)  # the outer one runs
        r = small.execute(
            ExecRequest(
                "inner", "exports.handler = async () => 'inner';", "vmcontext", 5, ev({}), "http://127.0.0.1:9/", "t"
            )
        )
        th.join(60)
        assert r.ok and r.value == "inner" and inner[0].value == "outer"
    finally:
        small.close()


def test_eval_fhirpath_current_previous(rt):
    cur = {"resourceType": "Patient", "id": "1", "name": [{"family": "Smith", "given": ["Jane"]}], "active": True}
    prev = {"resourceType": "Patient", "id": "1", "name": [{"family": "Smith", "given": ["Janet"]}]}
    changed = "%current.name.given.first() != %previous.name.given.first()"
    assert rt.eval_fhirpath(changed, cur, {"%current": cur, "%previous": prev}) == [True]
    assert rt.eval_fhirpath(changed, cur, {"current": cur, "previous": cur}) == [False]
    assert rt.eval_fhirpath("name.family", cur, {}) == ["Smith"]
    # Medplum passes toTypedValue(previous ?? {}) on create
    assert rt.eval_fhirpath(
        "%previous.exists().not() or %previous.id.empty()", cur, {"%current": cur, "%previous": None}
    ) == [True]
    with pytest.raises(ValueError):
        rt.eval_fhirpath("name.(", cur, {})


def test_close_stops_workers():
    r = BotRuntime(size=2)
    res = r.execute(ExecRequest("x", "exports.handler = async () => 1;", "vmcontext", 5, ev({}), "http://x/", "t"))
    pids = r.stats()["pids"]
    assert res.ok and len(pids) == 2
    r.close()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_until(lambda: all(gone(pid) for pid in pids), 30), "workers still running after close()"


def test_workers_exit_when_parent_dies(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from medport.emulator.medplum.runtime import BotRuntime, ExecRequest\n"
        "rt = BotRuntime(size=2)\n"
        "r = rt.execute(ExecRequest('x', 'exports.handler = async () => 1;', 'vmcontext', 5, {}, 'http://x/', 't'))\n"
        "print(' '.join(map(str, rt.stats()['pids'])), flush=True)\n"
        "time.sleep(60)\n"
    )
    repo = str(ROOT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=repo, env=dict(os.environ, PYTHONPATH=repo)
    )
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30  # a bound for a hang, not a speed target
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split()[2] != "Z":
                        alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
    assert not alive


# ---------------------------------------------------------------- Medplum's limits per runtime (issue 12)

HEAP = "exports.handler = async () => require('v8').getHeapStatistics().heap_size_limit / 1048576;"


def test_each_runtime_gets_medplums_limits():
    """awslambda: a Lambda of 1024 MB (Medplum's LAMBDA_MEMORY), V8 sized as Lambda's Node bootstrap does
    (old space = memory - memory/10); vmcontext: no cap of its own, Node's default heap, like the Medplum server
    process it runs in."""
    import subprocess

    from medport.emulator.node import node_binary

    with BotRuntime(size=1, max_size=3) as rt:
        lam = run(rt, HEAP, runtime="awslambda")
        assert lam.ok, lam.error
        assert 922 <= lam.value <= 1024 + 128, lam.value  # old space + the young generation
        vm = run(rt, HEAP)
        assert vm.ok, vm.error
        plain = float(
            subprocess.run(
                [str(node_binary()), "-e", "console.log(require('v8').getHeapStatistics().heap_size_limit / 1048576)"],
                capture_output=True,
                text=True,
            ).stdout
        )
        assert abs(vm.value - plain) < 1, (vm.value, plain)
        assert rt.stats()["by_runtime"] == {"vmcontext": 1, "awslambda": 1}
    with BotRuntime(size=1, max_size=2, memory_mb=96, lambda_memory_mb=256) as small:
        assert run(small, HEAP).value < 200
        assert 230 <= run(small, HEAP, runtime="awslambda").value < 300


def test_awslambda_past_its_memory_size_is_killed_like_lambda():
    """Memory outside the V8 heap (buffers) counts too: past MemorySize the sandbox is killed, the execution fails
    at once with Lambda's Runtime.OutOfMemory payload, and the next execution gets a fresh worker."""
    with BotRuntime(size=0, max_size=2, lambda_memory_mb=160) as rt:
        code = (
            "exports.handler = async () => { console.log('allocating'); const keep = [];"
            " for (let i = 0; i < 100; i++) { keep.push(new Uint8Array(16 * 1024 * 1024).fill(1));"
            " await new Promise((r) => setTimeout(r, 5)); } return keep.length; };"
        )
        r = run(rt, code, runtime="awslambda", timeout_s=60)
        assert not r.timed_out  # killed for its memory, not stopped by the 60 s timeout
        assert r.crashed and not r.ok and r.returned
        assert r.value["errorType"] == "Runtime.OutOfMemory", r.value
        assert r.value["errorMessage"].startswith("RequestId: ")
        assert r.value["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
        assert "allocating" in r.logs and "Runtime.OutOfMemory" in r.logs
        r2 = run(rt, "exports.handler = async () => 'after';", runtime="awslambda")
        assert r2.ok and r2.value == "after" and r2.worker_pid != r.worker_pid


def test_awslambda_heap_out_of_memory_is_an_exit_error():
    with BotRuntime(size=0, max_size=2, lambda_memory_mb=128) as rt:
        code = (
            "exports.handler = async () => { const a = [];"
            " while (true) { a.push(new Array(100000).fill(Math.random())); } };"
        )
        r = run(rt, code, runtime="awslambda", timeout_s=60)
        assert r.crashed and not r.ok and r.returned
        assert r.value["errorType"] in ("Runtime.ExitError", "Runtime.OutOfMemory"), r.value
        assert "Runtime exited with error: signal: " in r.value["errorMessage"]


def test_awslambda_timeout_is_at_most_lambdas_maximum():
    from medport.emulator.medplum.runtime import pool

    assert pool.MAX_LAMBDA_TIMEOUT_S == 900
    assert BotRuntime.__init__.__defaults__[2] >= 900  # vmcontext: a generous cap (Medplum has none)
