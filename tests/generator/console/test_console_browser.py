"""The sync console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium).

After the demo flow the patient page shows the demo Patient's timeline with the counts the FHIR API gives; a
message made to fail through the fake Metriport's faults shows as failed, and its replay — clicked in the
browser — turns it green; the health page's figures equal what this test computes from the FHIR API; a
console that may use no developer API (what it does against a real Medplum) shows the same. Screenshots of
both pages go to bench/out/console/ (and to docs/screenshots/ with MEDPORT_UPDATE_SCREENSHOTS=1).
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests

from medport import testing
from medport.generator.console.command import serve_console, settings_for_stack
from tests.flows import legacy_flow_config
from tests.paths import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None)
DRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and os.path.exists(p)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1000"]
SHOTS = ROOT / "bench" / "out" / "console"
DOC_SHOTS = ROOT / "docs" / "screenshots"
WEBHOOK_TYPES = ("medical.document-download", "medical.document-conversion", "medical.consolidated-data")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not CHROMIUM or not DRIVER:
        pytest.skip("no Chromium here: the browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them when it runs as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


@pytest.fixture(scope="module")
def stack():
    # 1 s between the fake's messages: time to inject the fault between document download and conversion
    with testing.start_stack(legacy_flow_config(), metriport_delay_s=1.0) as s:  # the flow the pages show
        yield s


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def console(stack):
    served = serve_console(settings_for_stack(stack.internal, stack.config), port=0)
    try:
        yield served
    finally:
        served.stop()


# ------------------------------------------------------------------------------------------- FHIR-side truth
def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def message_tasks(stack, patient_id: str) -> list[dict]:
    out = []
    for t in stack.fhir.search("Task", {"code": "https://medport.dev/fhir/CodeSystem/medport|metriport-webhook-message",
                                        "_count": "1000"}):
        msg = json.loads(t["input"][0]["valueString"])
        if (msg.get("meta", {}).get("data") or {}).get("medplumPatientId") == patient_id:
            out.append(t)
    return out


def summary(task: dict) -> dict:
    return json.loads(task["output"][0]["valueString"]) if task.get("output") else {}


def webhook_bot_events(stack) -> list[dict]:
    return stack.fhir.search("AuditEvent", {"entity": f"Bot/{stack.bot_ids['webhook_bot']}", "_count": "1000"})


def deliveries_from_fhir(stack) -> tuple[int, int, int]:
    """(all, acknowledged, acknowledged within 4 s) webhook bot executions called by Metriport."""
    runs = []
    for ae in webhook_bot_events(stack):
        refs = [e["what"]["reference"] for e in ae.get("entity", [])]
        if any(r.startswith(("Task/", "Subscription/")) for r in refs) or sum(r.startswith("Bot/") for r in refs) > 1:
            continue
        ms = (_t(ae["period"]["end"]) - _t(ae["period"]["start"])).total_seconds() * 1000
        runs.append((ae["outcome"] == "0", ms))
    return len(runs), sum(ok for ok, _ in runs), sum(ok and ms <= 4000 for ok, ms in runs)


def aggregation_seconds(stack, patient_id: str) -> float:
    """Query start → data in Medplum from the records the console reads, read here without its code: the `at` the
    patient bot logged with "Metriport … started" (its AuditEvent's outcomeDesc) → `executionPeriod.end` of the
    first completed consolidated-data Task. The same inputs, not other clocks (an AuditEvent's period or a
    version's lastUpdated differ from them by however long the machine took)."""
    starts = []
    for ae in stack.fhir.search("AuditEvent", {"entity": f"Patient/{patient_id}"}):
        for line in (ae.get("outcomeDesc") or "").splitlines():
            if "Metriport " in line and "started" in line and (m := re.search(r'"at":"([^"]+)"', line)):
                starts.append(_t(m.group(1)))
    done = [_t(t["executionPeriod"]["end"]) for t in message_tasks(stack, patient_id)
            if "consolidated-data" in t.get("description", "") and t["status"] == "completed"]
    assert len(starts) == 1 and done, (starts, done)
    return (min(done) - starts[0]).total_seconds()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------- browser helpers
def sign_in(browser, url: str, stack) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    assert "/login" in browser.current_url, "the console must ask for the admin credentials"
    emu = stack.internal.emulator
    browser.find_element(By.ID, "client_id").send_keys(emu.admin_client_id)
    browser.find_element(By.ID, "client_secret").send_keys(emu.admin_client_secret)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, lambda: "/login" not in browser.current_url and browser.find_elements(By.ID, "nav-health"),
             15, "the signed-in page")


def counts(browser) -> dict:
    from selenium.webdriver.common.by import By

    el = browser.find_element(By.ID, "counts")
    return {k: int(el.get_attribute(f"data-{k}")) for k in ("webhooks", "completed", "failed", "pending", "imported",
                                                            "in-medplum", "patient-runs", "metriport-calls")}


def rows(browser, selector: str) -> list[dict]:
    from selenium.webdriver.common.by import By

    return [{k: el.get_attribute(f"data-{k}") for k in ("task", "type", "status", "count")}
            for el in browser.find_elements(By.CSS_SELECTOR, selector)]


def wait_for(browser, predicate, timeout: float = 60.0, what: str = ""):
    # the page refreshes itself: an element read while its document is replaced fails in several ways (stale
    # reference, "Node ... does not belong to the document"): all are read again
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WebDriverException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def screenshot(browser, name: str) -> Path:
    """The whole page (beyond the viewport), through the DevTools protocol."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}})
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("MEDPORT_UPDATE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SHOTS / name)
    return path


# ------------------------------------------------------------------------------------------- the test
def test_console_in_chromium(stack, console, browser):
    from selenium.webdriver.common.by import By

    # 1. the demo flow, then its timeline
    jane = stack.create_patient("Jane")
    result = stack.wait_for_flow(timeout=60)
    assert result.ok, result.problems
    sign_in(browser, f"{console.url}patients/{jane['id']}", stack)
    tasks = message_tasks(stack, jane["id"])
    c = counts(browser)
    assert c["webhooks"] == len(tasks) == 3
    assert c["completed"] == 3 and c["failed"] == 0 and c["pending"] == 0
    assert c["patient-runs"] >= 1 and c["metriport-calls"] >= 3
    assert c["imported"] == sum(sum(summary(t).get("imported", {}).values()) for t in tasks)
    assert {r["type"]: int(r["count"]) for r in rows(browser, "#in-medplum tbody tr[data-type]")} == stack.imported(jane)
    assert sorted(r["type"] for r in rows(browser, "tr.msg")) == sorted(WEBHOOK_TYPES)
    assert all(r["status"] == "completed" for r in rows(browser, "tr.msg"))
    assert browser.find_element(By.ID, "link-state").get_attribute("data-state") == "linked"
    stages = [el.get_attribute("data-stage") for el in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]
    for stage in ("saved", "patient-bot", "metriport", "webhook", "processing", "imported", "aggregation"):
        assert stage in stages, stage
    assert stages.index("patient-bot") < stages.index("webhook") < stages.index("imported")
    screenshot(browser, "console-patient.png")

    # 2. a message made to fail through the fake's faults: the consolidated query that document conversion
    #    starts is refused by Metriport on every attempt → the document-conversion message fails
    before = sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download" and d["status"] == "success")
    chris = stack.create_patient("Chris")
    testing.wait_until(lambda: sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download"
                                   and d["status"] == "success") > before, timeout=30)
    stack.fake.set_faults(fail_next=stack.config.retry.max_attempts, fail_status=500)
    failed = testing.wait_until(lambda: [t for t in message_tasks(stack, chris["id"]) if t["status"] == "failed"],
                                timeout=60)
    stack.fake.set_faults(fail_next=0)
    assert failed and "conversion" in failed[0]["description"], [
        (t["description"], t["status"]) for t in message_tasks(stack, chris["id"])]
    task_id = failed[0]["id"]
    browser.get(f"{console.url}patients/{chris['id']}")
    row = browser.find_element(By.CSS_SELECTOR, f'tr.msg[data-task="{task_id}"]')
    assert row.get_attribute("data-status") == "failed" and "row-fail" in row.get_attribute("class")
    ev = browser.find_element(By.CSS_SELECTOR, f'#timeline li[data-stage="processing"][data-task="{task_id}"]')
    assert ev.get_attribute("data-tone") == "fail" and "500" in ev.text
    assert counts(browser)["failed"] == 1
    screenshot(browser, "console-patient-failed.png")
    browser.find_element(By.CSS_SELECTOR, f'button.replay-btn[data-task="{task_id}"]').click()

    def green():
        r = {x["type"]: x["status"] for x in rows(browser, "tr.msg")}
        return r.get("medical.document-conversion") == "completed" and r.get("medical.consolidated-data") == "completed"
    wait_for(browser, green, 60, "the replayed message and the data it brings to turn green")
    earlier, ev = browser.find_elements(By.CSS_SELECTOR, f'#timeline li[data-stage="processing"][data-task="{task_id}"]')
    assert ev.get_attribute("data-tone") == "ok" and "earlier run(s) failed" in ev.text
    assert earlier.get_attribute("data-tone") == "warn" and "this run failed" in earlier.text
    assert counts(browser)["failed"] == 0
    calls = [el.get_attribute("data-tone") for el in browser.find_elements(By.CSS_SELECTOR, '#timeline li[data-stage="metriport"]')]
    assert "warn" in calls       # the consolidated query's attempts Metriport answered 500
    screenshot(browser, "console-patient-replayed.png")
    assert stack.wait_for_flow(timeout=30).done and stack.wait_idle(10)

    # 3. the health page equals what the FHIR API says
    browser.get(f"{console.url}health")
    total, acked, in_time = deliveries_from_fhir(stack)
    d = browser.find_element(By.ID, "deliveries")
    assert (int(d.get_attribute("data-total")), int(d.get_attribute("data-in-time"))) == (total, in_time)
    assert float(d.get_attribute("data-rate")) == pytest.approx(in_time / total)
    assert acked == total
    failed_now = [t for t in stack.fhir.search("Task", {"status": "failed"})]
    assert browser.find_element(By.ID, "card-processing-failures").get_attribute("data-value") == str(len(failed_now))
    assert browser.find_element(By.ID, "card-stuck").get_attribute("data-value") == "0"
    secs = [aggregation_seconds(stack, p["id"]) for p in (jane, chris)]
    agg = browser.find_element(By.ID, "aggregation")
    assert int(agg.get_attribute("data-count")) == 2
    assert float(agg.get_attribute("data-p50")) == pytest.approx(percentile(secs, 50), abs=0.0011)  # 3 decimals
    assert float(agg.get_attribute("data-p95")) == pytest.approx(percentile(secs, 95), abs=0.0011)
    assert secs[1] > secs[0]              # Chris's data came after a failure and a replay
    assert browser.find_element(By.ID, "metriport-webhook").get_attribute("data-enabled") == "True"
    types = {el.get_attribute("data-type") for el in browser.find_elements(By.CSS_SELECTOR, "#by-type tbody tr")}
    assert set(WEBHOOK_TYPES) <= types
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-aggregation rect")
    screenshot(browser, "console-health.png")
    ollie = stack.create_patient("Ollie", address={"line": ["1 Main St"], "city": "Austin", "state": "ZZ",
                                                   "postalCode": "78701"})   # not a US state: skipped
    assert stack.wait_idle(20)
    browser.get(f"{console.url}patients")
    states = {el.get_attribute("data-patient"): el.get_attribute("data-state")
              for el in browser.find_elements(By.CSS_SELECTOR, "#patients tbody tr[data-patient]")}
    assert states == {jane["id"]: "linked", chris["id"]: "linked", ollie["id"]: "skipped"}
    why = browser.find_element(By.CSS_SELECTOR, f'#patients tr[data-patient="{ollie["id"]}"] td.reason').text
    assert "address.state" in why
    screenshot(browser, "console-patients.png")

    # 4. the same console without any developer API (as against a real Medplum): same figures, same timeline
    auth = (stack.internal.emulator.admin_client_id, stack.internal.emulator.admin_client_secret)
    fhir_only = serve_console(settings_for_stack(stack.internal, stack.config, fhir_only=True), port=0)
    try:
        with_dev = requests.get(f"{console.url}api/health", auth=auth, timeout=30).json()
        without = requests.get(f"{fhir_only.url}api/health", auth=auth, timeout=30).json()
        assert fhir_only.source.refused_dev_api_calls == []
        assert without["source"]["developer_api"] is False and with_dev["source"]["developer_api"] is True
        assert without["metriport_deliveries"] is None and with_dev["metriport_deliveries"]["failed"] == 0
        for key in ("patients", "deliveries", "messages", "processing", "stuck", "aggregation", "metriport_webhook"):
            assert without[key] == with_dev[key], key
        sign_in(browser, f"{fhir_only.url}patients/{jane['id']}", stack)
        assert counts(browser)["webhooks"] == 3 and counts(browser)["completed"] == 3
        assert {r["type"]: int(r["count"]) for r in rows(browser, "#in-medplum tbody tr[data-type]")} == stack.imported(jane)
        assert "FHIR records only" in browser.find_element(By.CSS_SELECTOR, "header .server").text
    finally:
        fhir_only.stop()


def test_a_stuck_message_is_replayed_through_the_console(stack):
    """A message left in progress by a run that was cut off (no lease on these bots: stuck after stuck_after_s) is
    offered for replay; the console's replay (a session, its CSRF token) puts it back and the bot processes it."""
    import dataclasses
    import re

    code = "https://medport.dev/fhir/CodeSystem/medport|metriport-webhook-message"
    done = [t for t in stack.fhir.search("Task", {"code": code}) if "document-download" in t["description"]]
    if not done:
        stack.create_patient("Kyla")
        assert stack.wait_for_flow(timeout=60).ok
        done = [t for t in stack.fhir.search("Task", {"code": code}) if "document-download" in t["description"]]
    src = done[0]
    stuck = stack.fhir.create({"resourceType": "Task", "status": "in-progress", "intent": "order", "code": src["code"],
                               "description": src["description"], "input": src["input"],
                               "identifier": [{"system": src["identifier"][0]["system"], "value": "stuck-message-1"}]})
    settings = dataclasses.replace(settings_for_stack(stack.internal, stack.config, fhir_only=True), stuck_after_s=0.0)
    served = serve_console(settings, port=0)
    try:
        emu = stack.internal.emulator
        s = requests.Session()
        r = s.post(f"{served.url}login", data={"client_id": emu.admin_client_id, "client_secret": emu.admin_client_secret})
        assert r.status_code == 200 and "Integration health" in r.text
        assert f"Task/{stuck['id']}" in r.text          # listed under "Needs attention"
        token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        assert s.post(f"{served.url}messages/{stuck['id']}/replay", data={}).status_code == 403
        r = s.post(f"{served.url}messages/{stuck['id']}/replay", data={"csrf": token})
        assert r.status_code == 200 and "put back in the queue" in r.text
        assert testing.wait_until(lambda: stack.fhir.read("Task", stuck["id"])["status"] == "completed", timeout=30)
        assert served.source.refused_dev_api_calls == []
    finally:
        served.stop()
