"""Warm `$execute` of a trivial bot over HTTP, the emulator in its own process (as for any client).

Sequential: p50/p99 of one client (targets p50 <= 3 ms, p99 <= 10 ms). Concurrent: C clients, each a
keep-alive connection sending the next request when the last answered, for a few seconds: executions/s
and latency (target >= 800/s with 16 clients). The clients write pre-built HTTP/1.1 requests on raw sockets
so that the load generator itself costs little of the machine's 2 cores.

Usage: .venv/bin/python bench/bench_execute.py [N] [--clients C] [--seconds S] [--inprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medport.emulator.medplum.testing import Client

TRIVIAL = "exports.handler = async (medplum, event) => ({ ok: true, echo: event.input });\n"


class Conn:
    """One keep-alive HTTP/1.1 connection sending a fixed request."""

    def __init__(self, host: str, port: int, request: bytes):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(60)
        self.request = request
        self.buf = b""

    def call(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        return status

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data


def _tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process (the emulator) and of its children (Node), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"emulator": 0.0, "node": 0.0}

    def walk(p: int, kind: str) -> None:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            out[kind] += (int(parts[11]) + int(parts[12])) / tick
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            return
        for k in kids:
            walk(k, "node")

    walk(pid, "emulator")
    return out


def start_emulator() -> tuple[subprocess.Popen, str]:
    prof = os.environ.get("MEDPORT_BENCH_PYSPY")  # record a py-spy profile (raw) of the emulator's process
    wrap = (
        [
            os.path.join(os.path.dirname(sys.executable), "py-spy"),
            "record",
            "-r",
            "500",
            "-f",
            "raw",
            "-o",
            prof,
            *(["--gil"] if os.environ.get("MEDPORT_BENCH_PYSPY_GIL") else []),
            "--",
        ]
        if prof
        else []
    )
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-m", "medport.emulator.medplum", "--memory", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = proc.stdout.readline()
    while line and "listening on" not in line:  # py-spy's own lines first
        line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError("emulator did not start: " + proc.stderr.read()[-2000:])
    return proc, line.rsplit(" ", 1)[1].strip()


def percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def main(n: int = 500, clients: int = 16, seconds: float = 5.0, inprocess: bool = False) -> dict:
    handle = proc = None
    if inprocess:
        from medport.emulator.medplum.server import start

        handle = start()
        base = handle.base_url
    else:
        proc, base = start_emulator()
    try:
        c = Client(base, "medport-admin", "medport-admin-secret")
        bot = c.create_bot("bench-trivial", TRIVIAL)
        host_port = base.split("//", 1)[1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        body = json.dumps({"n": 1}).encode()
        req = (
            f"POST /fhir/R4/Bot/{bot['id']}/$execute HTTP/1.1\r\nHost: {host_port}\r\n"
            f"Authorization: Bearer {c.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        conn = Conn(host, int(port), req)
        for _ in range(50):  # warm: worker compiled, caches filled
            assert conn.call() == 200
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            status = conn.call()
            samples.append((time.perf_counter() - t) * 1000)
            assert status == 200
        p50, p99 = statistics.median(samples), percentile(samples, 0.99)

        # concurrent clients
        stop = threading.Event()
        lat: list[list[float]] = [[] for _ in range(clients)]
        errors = [0]
        conns = [Conn(host, int(port), req) for _ in range(clients)]
        for cc in conns:
            cc.call()

        def worker(i: int) -> None:
            cc, out = conns[i], lat[i]
            while not stop.is_set():
                t = time.perf_counter()
                if cc.call() != 200:
                    errors[0] += 1
                out.append((time.perf_counter() - t) * 1000)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        cpu0 = _tree_cpu(proc.pid) if proc is not None else {}
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu1 = _tree_cpu(proc.pid) if proc is not None else {}
        allc = [x for xs in lat for x in xs]
        rate = len(allc) / elapsed
        per_exec = {k: round((cpu1.get(k, 0) - cpu0.get(k, 0)) / max(1, len(allc)) * 1000, 3) for k in cpu1}
        out = {
            "n": n,
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "mean_ms": round(statistics.mean(samples), 2),
            "clients": clients,
            "executions_per_s": round(rate),
            "concurrent_p50_ms": round(statistics.median(allc), 1),
            "concurrent_p99_ms": round(percentile(allc, 0.99), 1),
            "errors": errors[0],
            "emulator": "in the benchmark's process" if inprocess else "own process",
            "cpu_ms_per_execution": per_exec,
            "load_average": round(os.getloadavg()[0], 2),
        }
        print(
            f"warm $execute (trivial bot, HTTP, emulator in {out['emulator']}): sequential n={n} p50 {p50:.2f} ms, "
            f"p99 {p99:.2f} ms (targets <= 3 / <= 10 ms); {clients} concurrent clients: {rate:.0f} executions/s "
            f"(target >= 800), p50 {out['concurrent_p50_ms']} ms, p99 {out['concurrent_p99_ms']} ms, errors {errors[0]}; "
            f"CPU ms per execution {per_exec}; load {out['load_average']}"
        )
        print("RESULT " + json.dumps(out))
        return out
    finally:
        if handle is not None:
            handle.close()
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # (py-spy writes its profile on SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--inprocess", action="store_true")
    a = ap.parse_args()
    main(a.n, a.clients, a.seconds, a.inprocess)
