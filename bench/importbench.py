"""End to end import of one patient's consolidated data, each service in its own process, with memory and CPU
measured per process. Shared by bench_e2e_10k.py and bench_import_curve.py.

Processes: the fake Metriport (`python -m medport.emulator.metriport`, holding the synthetic bundle), the
emulator with the generated bots deployed (`bench/_stack_host.py`: the emulator, its bot workers and its strict
validator — what "peak RSS of the emulator + its workers" measures), and this driver, which only creates the
Patient and watches over HTTP. The flow: Patient saved → patient bot → fake Metriport → signed webhooks →
webhook bot (stored message → Task subscription) → download → import in batch Bundles.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medport.generator.generation.config import load_config  # noqa: E402
from medport.generator.generation.fhir_codes import MEDPORT_CODESYSTEM, MESSAGE_TASK_CODE  # noqa: E402
from medport.generator.local.flow import patient_resource  # noqa: E402
from medport.generator.remote.medplum_http import MedplumHttp  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "medport-bench"
FIRST, FAMILY = "Benchmark", "Load"


def bundle_file(n: int, seed: int = 7) -> Path:
    """A synthetic consolidated bundle of n entries (cached on disk: large ones take seconds to make)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"synth-{n}-{seed}.json"
    if not path.exists():
        from medport.emulator.metriport.synth import generate

        bundle = generate(
            n, seed=seed, patient={"firstName": FIRST, "lastName": FAMILY, "dob": "1970-01-01", "genderAtBirth": "F"}
        )
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(bundle, f, separators=(",", ":"))
        tmp.rename(path)
    return path


def expected_count(path: Path, cfg) -> int:
    """Entries the flow imports: types the consolidated query asks for and the webhook bot imports."""
    types = set(cfg.webhook_bot.resources) & set(cfg.consolidated.resources or cfg.webhook_bot.resources)
    text = path.read_text()
    return sum(1 for t in re.findall(r'"resource":\{"resourceType":"([A-Za-z]+)"', text) if t in types)


# ------------------------------------------------------------------------------------------- /proc sampling
def _children(pid: int) -> list[int]:
    """Children of every thread of pid (a worker started from a request thread is that thread's child only)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _stat(pid: int) -> tuple[int, float, str] | None:
    """(rss bytes, cpu seconds, kind) of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / tick
    rss = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
    kind = (
        "bot worker"
        if "worker.js" in cmd
        else "strict validator"
        if "strict.js" in cmd
        else "emulator"
        if "_stack_host" in cmd
        else "other"
    )
    return rss, cpu, kind


@dataclass
class Sampler:
    """Peak RSS of a process tree (summed, and per kind of process) and CPU seconds per process."""

    pid: int
    interval: float = 0.05
    peak_total: int = 0
    peak_kind: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # pid -> (kind, cpu seconds, peak rss)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        self._base = {p: s[1] for p in _tree(self.pid) if (s := _stat(p))}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total, kinds = 0, {}
        for p in _tree(self.pid):
            s = _stat(p)
            if s is None:
                continue
            rss, cpu, kind = s
            total += rss
            kinds[kind] = kinds.get(kind, 0) + rss
            _, _, peak = self.cpu.get(p, (kind, 0.0, 0))
            self.cpu[p] = (kind, cpu - self._base.get(p, 0.0), max(peak, rss))
        self.peak_total = max(self.peak_total, total)
        for k, v in kinds.items():
            self.peak_kind[k] = max(self.peak_kind.get(k, 0), v)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        cpu_by_kind: dict[str, float] = {}
        for kind, cpu, _ in self.cpu.values():
            cpu_by_kind[kind] = cpu_by_kind.get(kind, 0.0) + cpu
        return {
            "peak_rss_mb": round(self.peak_total / 2**20),
            "peak_rss_by_kind_mb": {k: round(v / 2**20) for k, v in sorted(self.peak_kind.items())},
            "peak_rss_one_bot_worker_mb": round(
                max((r for k, _, r in self.cpu.values() if k == "bot worker"), default=0) / 2**20
            ),
            "cpu_s_by_kind": {k: round(v, 2) for k, v in sorted(cpu_by_kind.items())},
        }


# ------------------------------------------------------------------------------------------- the run
def _config(runtime: str, timeout: int | None) -> Path:
    text = (ROOT / "medport.toml").read_text()
    text = re.sub(r'(?m)^runtime = "[a-z]+"', f'runtime = "{runtime}"', text, count=1)
    # one consolidated-data import per patient: what the targets measure (the network-query flow imports the
    # record once per source)
    text = text.replace('flow = "network-query"', 'flow = "document-query"')
    if timeout:
        # [webhook_bot] timeout: the whole import in one execution (awslambda's timeout is wall clock)
        head, sep, tail = text.partition("[webhook_bot]")
        tail = re.sub(r"(?m)^timeout = \d+", f"timeout = {timeout}", tail, count=1)
        text = head + sep + tail
    fd, path = tempfile.mkstemp(prefix="medport-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(path)


def _line(proc: subprocess.Popen, what: str, timeout: float = 120.0) -> dict:
    box: list = []

    def read() -> None:
        line = proc.stdout.readline()
        while line and not line.startswith("{"):  # e.g. py-spy's own lines
            line = proc.stdout.readline()
        box.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        proc.kill()
        raise RuntimeError(f"{what} did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    return json.loads(box[0])


def run_import(
    n: int,
    *,
    runtime: str = "vmcontext",
    timeout_s: int | None = 900,
    runtime_opts: dict | None = None,
    wait_s: float = 900.0,
    poll_s: float = 0.1,
) -> dict:
    data = bundle_file(n)
    cfg_path = _config(runtime, timeout_s)
    cfg = load_config(str(cfg_path))
    expected = expected_count(data, cfg)
    api_key, webhook_key = "bench-" + secrets.token_hex(8), secrets.token_hex(32)
    py = sys.executable
    fake = subprocess.Popen(
        [
            py,
            "-m",
            "medport.emulator.metriport",
            "--port",
            "0",
            "--data",
            str(data),
            "--delay",
            "0.05",
            "--api-key",
            api_key,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    host = None
    try:
        f = _line(fake, "the fake Metriport")
        # MEDPORT_BENCH_PYSPY=<file>: record a py-spy profile (raw, GIL-holding samples) of the emulator's process
        prof = os.environ.get("MEDPORT_BENCH_PYSPY")
        wrap = (
            [
                str(Path(py).with_name("py-spy")),
                "record",
                "-r",
                os.environ.get("MEDPORT_BENCH_PYSPY_RATE", "200"),
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
        host = subprocess.Popen(
            [
                *wrap,
                py,
                str(ROOT / "bench" / "_stack_host.py"),
                str(cfg_path),
                f["baseUrl"],
                api_key,
                webhook_key,
                json.dumps(runtime_opts or {}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        h = _line(host, "the emulator")
        fake_base = f["baseUrl"].rstrip("/")
        hdr = {"x-api-key": api_key}
        requests.post(
            fake_base + "/_fake/settings/webhook",
            headers=hdr,
            timeout=30,
            json={"webhookUrl": h["webhook_url"], "webhookKey": webhook_key, "ping": True},
        ).raise_for_status()
        admin = MedplumHttp(h["base_url"], h["admin_client_id"], h["admin_client_secret"])
        org = admin.fhir(
            "org",
            "POST",
            "Organization",
            json_body={
                "resourceType": "Organization",
                "name": "Bench Clinic",
                "identifier": [{"system": cfg.metriport.facility_identifier_system, "value": f["facilityId"]}],
            },
        )
        sampler = Sampler(h["pid"]).start()
        t0 = time.monotonic()
        admin.fhir("patient", "POST", "Patient", json_body=patient_resource(FIRST, org["id"], family=FAMILY))
        task_query = f"Task?code={MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}&_count=100"
        done, failed = False, []
        while time.monotonic() - t0 < wait_s:
            dels = requests.get(
                fake_base + "/_fake/webhooks", params={"body": "false"}, headers=hdr, timeout=30
            ).json()["deliveries"]
            consolidated = [d for d in dels if d["type"] == "medical.consolidated-data" and d["status"] == "success"]
            if consolidated:
                tasks = [e["resource"] for e in admin.fhir("tasks", "GET", task_query).get("entry", [])]
                if tasks and not [t for t in tasks if t["status"] in ("requested", "in-progress")]:
                    failed = [t["id"] for t in tasks if t["status"] == "failed"]
                    done = True
                    break
            time.sleep(poll_s)
        total_s = time.monotonic() - t0
        mem = sampler.stop()
        system = cfg.metriport.resource_identifier_system
        in_medplum = 0
        for rt in cfg.webhook_bot.resources:
            in_medplum += admin.fhir("count", "GET", f"{rt}?identifier={system}|&_summary=count").get("total") or 0
        runs = admin.request("runs", "GET", "_emulator/runs", params={"limit": 50}, ok=(200,))["runs"]
        importers = [
            r for r in runs if r["bot_name"] == cfg.webhook_bot.name and (r.get("resource") or "").startswith("Task/")
        ]
        failures = [r for r in importers if r["outcome"] != "success"]
        by_task: dict[str, float] = {}
        for r in importers:  # the consolidated-data message's runs (a resumed import has several)
            by_task[r["resource"]] = by_task.get(r["resource"], 0.0) + r["duration_ms"]
        ack = [d for d in dels if d["type"] == "medical.consolidated-data"]
        relinked = 0  # resources written again with references to resources later in the bundle
        for r in importers:
            for m in re.finditer(r'later in the bundle written.{0,40}?"resources":(\d+)', r.get("logs") or ""):
                relinked += int(m.group(1))
        if os.environ.get("MEDPORT_BENCH_TIMELINE"):
            t_start = time.time() - (time.monotonic() - t0)
            for r in sorted(runs, key=lambda r: r["started"]):
                from datetime import datetime

                st = datetime.fromisoformat(r["started"].replace("Z", "+00:00")).timestamp() - t_start
                print(
                    f"  run {st:7.3f} s +{r['duration_ms'] / 1000:6.3f} s {r['bot_name']:24s} {r['trigger']:12s} "
                    f"{r.get('resource') or ''}",
                    file=sys.stderr,
                )
                if os.environ.get("MEDPORT_BENCH_TIMELINE") == "logs" and r["duration_ms"] < 2000:
                    print("      " + (r.get("logs") or "").replace("\n", "\n      ")[:1500], file=sys.stderr)
            for d in dels:
                print(
                    f"  delivery {d.get('type')} {d.get('status')} {d.get('durationMs')} ms at {d.get('sentAt') or d.get('at')}",
                    file=sys.stderr,
                )
        return {
            "resources_in_bundle": n,
            "resources_expected": expected,
            "resources_in_medplum": in_medplum,
            "runtime": runtime,
            "done": done,
            "failed_tasks": failed,
            "import_s": round(max(by_task.values(), default=0) / 1000, 2),
            "import_runs": len(importers),
            "failed_runs": [r.get("error") for r in failures][:3],
            "rewritten_for_later_references": relinked,
            "patient_saved_to_all_data_s": round(total_s, 2),
            "consolidated_webhook_ack_ms": ack[-1].get("durationMs") if ack else None,
            "max_webhook_ack_ms": max((d.get("durationMs") or 0 for d in dels if d["type"] != "ping"), default=None),
            **mem,
        }
    finally:
        if host is not None:
            try:
                host.stdin.close()
                host.wait(30)
            except Exception:
                host.kill()
        fake.terminate()
        try:
            fake.wait(10)
        except subprocess.TimeoutExpired:
            fake.kill()
        os.unlink(cfg_path)


def summary_line(r: dict) -> str:
    per_1k = r["patient_saved_to_all_data_s"] / max(1, r["resources_expected"]) * 1000
    return (
        f"{r['resources_in_bundle']:>7,} entries ({r['runtime']}): import {r['import_s']:.2f} s, "
        f"Patient saved → all data {r['patient_saved_to_all_data_s']:.2f} s ({per_1k:.3f} s per 1,000); "
        f"{r['resources_in_medplum']:,} of {r['resources_expected']:,} in Medplum; peak RSS emulator+workers "
        f"{r['peak_rss_mb']} MB {r['peak_rss_by_kind_mb']}; CPU s {r['cpu_s_by_kind']}"
        + ("" if r["done"] and not r["failed_tasks"] else f"; NOT DONE/FAILED {r['failed_tasks']} {r['failed_runs']}")
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=10_000)
    ap.add_argument("--runtime", default="vmcontext", choices=["vmcontext", "awslambda"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--runtime-opts", default="{}")
    ap.add_argument("--wait", type=float, default=900.0, help="give up after this many seconds")
    a = ap.parse_args()
    for _ in range(a.repeat):
        res = run_import(a.n, runtime=a.runtime, runtime_opts=json.loads(a.runtime_opts), wait_s=a.wait)
        print(summary_line(res), flush=True)
        print("RESULT " + json.dumps(res), flush=True)
