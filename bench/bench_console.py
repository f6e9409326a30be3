"""The sync console's page timings at 1,000 Patients (default), over real HTTP.

Records: the emulator and the fake Metriport in this process (Metriport's document-query flow); the real flow for
a few template Patients (imported, a failed message, a skipped Patient, a failed patient-bot run), then their
records — Patient, message Tasks, the bots' AuditEvents and the imported resources — cloned with fresh ids up to N
Patients (written straight into the emulator's store, subscriptions off, so no bot runs on them).

Timings: the console served on a free port (`serve_console`, its default settings); each page requested
sequentially with HTTP Basic: the first request (no snapshot yet), then `--requests` more of each page (patient
pages spread over different Patients), p50 / p95 / max, the FHIR requests the console made per view and the page
size. `--console-src DIR` loads another `generator/console` package (e.g. the base commit's, for a before/after)
in place of this one: pages it does not have are skipped.

Usage: .venv/bin/python bench/bench_console.py [--patients 1000] [--requests 20] [--no-resources] [--console-src DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def legacy_flow_config():
    """medport.toml with Metriport's document-query flow: its conversion message is where a fault is injected."""
    from medport.generator.generation.config import load_config, validate_data

    data = load_config(ROOT / "medport.toml").data
    return validate_data({**data, "patient_bot": {**data["patient_bot"], "flow": "document-query"}}, "medport.toml")


def load_console(src: str | None):
    """`medport.generator.console` from this checkout, or from `src` (a console package directory)."""
    if src:
        path = Path(src).resolve()
        spec = importlib.util.spec_from_file_location(
            "medport.generator.console", path / "__init__.py", submodule_search_locations=[str(path)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["medport.generator.console"] = module
        spec.loader.exec_module(module)
    from medport.generator.console import command

    return command


# ------------------------------------------------------------------------------------------- the real flow
def template_patients(stack) -> dict[str, str]:
    """Run the real flow for a few Patients in distinct situations; returns kind -> Patient id."""
    from medport import testing

    out = {}
    retries = stack.config.retry.max_attempts
    jane = stack.create_patient("Jane")
    chris = stack.create_patient("Chris")
    assert stack.wait_for_flow(timeout=120).ok
    out["imported"], out["imported-2"] = jane["id"], chris["id"]
    # a message that failed: the consolidated query the document conversion starts is refused on every attempt
    seen = sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download")
    kyla = stack.create_patient("Kyla")
    testing.wait_until(
        lambda: sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download") > seen, timeout=60
    )
    stack.fake.set_faults(fail_next=retries, fail_status=500)
    testing.wait_until(lambda: stack.fhir.search("Task", {"status": "failed"}), timeout=60)
    stack.fake.set_faults(fail_next=0)
    out["failed-message"] = kyla["id"]
    # skipped: not a US state
    ollie = stack.create_patient(
        "Ollie", address={"line": ["1 Main St"], "city": "Austin", "state": "ZZ", "postalCode": "78701"}
    )
    out["skipped"] = ollie["id"]
    assert stack.wait_idle(60)
    # a patient-bot run that failed: Metriport answers 503 to every attempt
    stack.fake.set_faults(fail_next=retries, fail_status=503)
    andreas = stack.create_patient("Andreas")
    testing.wait_until(lambda: [r for r in stack.runs(failed=True) if andreas["id"] in json.dumps(r)], timeout=60)
    stack.fake.set_faults(fail_next=0)
    assert stack.wait_idle(60)
    out["bot-failed"] = andreas["id"]
    return out


# ------------------------------------------------------------------------------------------- cloning
def records_of(stack, pid: str) -> list[dict]:
    """Everything the console reads about one Patient, plus its imported resources."""
    fhir = stack.fhir
    patient = fhir.read("Patient", pid)
    tasks = [t for t in fhir.search("Task", {"_count": "1000"}) if pid in json.dumps(t)]
    task_refs = {f"Task/{t['id']}" for t in tasks} | {t["id"] for t in tasks}
    events = []
    for ae in fhir.search("AuditEvent", {"_count": "1000"}):
        text = json.dumps(ae)
        if f"Patient/{pid}" in text or any(r in text for r in task_refs):
            events.append(ae)
    imported = []
    system = stack.config.metriport.resource_identifier_system
    for rt in stack.config.webhook_bot.resources:
        imported += fhir.search(rt, {"identifier": f"{system}|", "_compartment": f"Patient/{pid}", "_count": "1000"})
    return [patient, *tasks, *events, *imported]


def clone(records: list[dict], keep: set[str]) -> list[dict]:
    """The same records with every id (and Metriport id, message id) replaced by a fresh one."""
    text = json.dumps(
        [
            {k: v for k, v in r.items() if k != "meta"} | {"_author": (r.get("meta") or {}).get("author")}
            for r in records
        ]
    )
    fresh: dict[str, str] = {}
    text = UUID.sub(
        lambda m: m.group(0) if m.group(0) in keep else fresh.setdefault(m.group(0), str(uuid.uuid4())), text
    )
    for r in records:  # non-uuid ids (the emulator's, the fake's seed resource ids)
        if r["id"] not in fresh and not UUID.fullmatch(r["id"]):
            fresh[r["id"]] = str(uuid.uuid4())
            text = text.replace(f'"{r["id"]}"', f'"{fresh[r["id"]]}"').replace(f'/{r["id"]}"', f'/{fresh[r["id"]]}"')
    return json.loads(text)


def write_clones(stack, templates: dict[str, str], n: int, with_resources: bool) -> int:
    """Clone the template Patients' records round robin until there are `n` Patients; returns resources written."""
    from medport.emulator.medplum.settings import PROJECT_ID

    state = stack.internal.emulator.state
    repo = state.repo
    keep = {b for b in stack.bot_ids.values()}
    sets = {kind: records_of(stack, pid) for kind, pid in templates.items()}
    if not with_resources:
        sets = {k: [r for r in rs if r["resourceType"] in ("Patient", "Task", "AuditEvent")] for k, rs in sets.items()}
    # mostly imported, as a running integration is; the rest in the other situations
    kinds = ["imported"] * 6 + ["imported-2"] * 6 + ["failed-message", "skipped", "bot-failed"]
    have = len(stack.fhir.search("Patient", {"_count": "1000"}))
    listeners = list(repo._listeners)  # no subscription fires for the clones: no bot runs on them
    for fn in listeners:
        repo.remove_listener(fn)
    written = 0
    try:
        batch: list[dict] = []
        for i in range(max(0, n - have)):
            batch += clone(sets[kinds[i % len(kinds)]], keep)
            if len(batch) >= 2000 or i == n - have - 1:
                with repo.transaction():
                    for r in batch:
                        author = r.pop("_author", None)
                        repo.create(r, id=r["id"], project=PROJECT_ID, author=(author or {}).get("reference"))
                written += len(batch)
                batch = []
    finally:
        for fn in listeners:
            repo.add_listener(fn)
    return written


# ------------------------------------------------------------------------------------------- timings
def stats(ms: list[float]) -> str:
    xs = sorted(ms)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return f"p50 {statistics.median(xs):7.1f} ms  p95 {p95:7.1f} ms  max {xs[-1]:7.1f} ms"


class Counter:
    def __init__(self, session):
        self.n = 0
        session.hooks["response"].append(self.hook)

    def hook(self, r, *a, **kw):
        self.n += 1


def measure(served, auth, pages: list[tuple[str, list[str]]], repeat: int) -> list[dict]:
    s = requests.Session()
    s.auth = auth
    counter = Counter(served.source.http.session)
    out = []
    for name, urls in pages:
        times, fhir_calls, sizes, status = [], [], [], set()
        for i in range(repeat + 1):
            url = urls[i % len(urls)]
            before = counter.n
            t0 = time.perf_counter()
            r = s.get(served.url + url.lstrip("/"), headers={"Accept": "text/html"}, timeout=600)
            times.append((time.perf_counter() - t0) * 1000)
            fhir_calls.append(counter.n - before)
            sizes.append(len(r.content))
            status.add(r.status_code)
        if status != {200}:
            print(f"  {name:34s} skipped (answered {sorted(status)})")
            continue
        row = {
            "page": name,
            "first_ms": round(times[0], 1),
            "ms": [round(t, 1) for t in times[1:]],
            "fhir_requests_first": fhir_calls[0],
            "fhir_requests_median": statistics.median(fhir_calls[1:]),
            "kb": round(statistics.median(sizes) / 1024, 1),
        }
        out.append(row)
        print(
            f"  {name:34s} first {times[0]:8.1f} ms   then {stats(times[1:])}   "
            f"FHIR requests {fhir_calls[0]} first, median {row['fhir_requests_median']:g}   {row['kb']} KB",
            flush=True,
        )
    return out


def profile_refresh(command, stack) -> None:
    """The model's cost, apart from HTTP: the first complete read, then a refresh with nothing new."""
    import cProfile
    import pstats

    from medport.generator.console.model import Memo, reconstruct
    from medport.generator.console.source import Source

    source = Source(command.settings_for_stack(stack.internal, stack.config))
    t0 = time.perf_counter()
    snap = source.snapshot()
    print(f"  first complete read: {(time.perf_counter() - t0) * 1000:.0f} ms", flush=True)
    time.sleep(20)  # past the incremental read's overlap with the cloning
    t0 = time.perf_counter()
    snap = source.snapshot(fresh=True)
    print(f"  incremental read, nothing changed: {(time.perf_counter() - t0) * 1000:.0f} ms", flush=True)
    memo = Memo()
    for what in ("model, first build", "model, rebuilt (memo warm)"):
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        reconstruct(snap, memo=memo)
        prof.disable()
        print(f"  {what}: {(time.perf_counter() - t0) * 1000:.0f} ms", flush=True)
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--no-resources", action="store_true", help="clone no imported resource")
    ap.add_argument("--console-src", help="another generator/console package to measure (e.g. the base commit's)")
    ap.add_argument("--profile", action="store_true", help="time (and profile) a refresh of the model first")
    ap.add_argument("--cold", action="store_true", help="request the first page at once (before the warm-up)")
    args = ap.parse_args()

    command = load_console(args.console_src)
    from medport import testing

    t0 = time.monotonic()
    with testing.start_stack(legacy_flow_config(), metriport_delay_s=0.05) as stack:
        templates = template_patients(stack)
        print(
            f"templates: {len(templates)} Patients through the real flow in {time.monotonic() - t0:.0f} s", flush=True
        )
        t1 = time.monotonic()
        written = write_clones(stack, templates, args.patients, not args.no_resources)
        n = stack.fhir.count("Patient")
        print(
            f"cloned: {written:,} records in {time.monotonic() - t1:.0f} s; {n:,} Patients, "
            f"{stack.fhir.count('Task'):,} Tasks, {stack.fhir.count('AuditEvent'):,} AuditEvents",
            flush=True,
        )
        pids = [p["id"] for p in stack.fhir.search("Patient", {"_count": "40", "_sort": "-_lastUpdated"})]
        tasks = [t["id"] for t in stack.fhir.search("Task", {"_count": "20", "status": "failed"})]
        if args.profile:
            profile_refresh(command, stack)
        served = command.serve_console(command.settings_for_stack(stack.internal, stack.config), port=0)
        auth = (stack.internal.emulator.admin_client_id, stack.internal.emulator.admin_client_secret)
        console = getattr(served, "console", None)
        if console is not None and not args.cold:  # the console reads everything once as it starts
            t0 = time.perf_counter()
            while console._last is None:
                time.sleep(0.05)
            print(
                f"  first complete read and model, in the background at start: "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms",
                flush=True,
            )
        try:
            rows = measure(
                served,
                auth,
                [
                    ("patient page", [f"/patients/{p}" for p in pids]),
                    ("patients list (first page)", ["/patients"]),
                    ("patients list, failed only", ["/patients?state=failed"]),
                    ("patients list, search by id", [f"/patients?q={p}" for p in pids]),
                    ("health", ["/health"]),
                    ("message page", [f"/messages/{t}" for t in tasks] or ["/messages/none"]),
                ],
                args.requests,
            )
        finally:
            served.stop()
        print("RESULT " + json.dumps({"patients": n, "records_cloned": written, "pages": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
