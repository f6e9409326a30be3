"""The sync console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium), at
390 px and at 1366 px wide.

The stack runs the real flow for Patients in every situation the console must tell apart: imported (Jane), a
message that failed (Chris: Metriport refused the consolidated query), skipped (Ollie: not a US state), a duplicate
refused (a second Kyla), a patient bot failure later linked by `medport enroll` (Andreas: awaiting data, not
failed), a patient bot failure left as it is (Zoe), a stuck message. Then, in the browser:
1. each Patient's one state in the list, and its timeline;
2. the list's state filters (clickable counts), search by Patient id, Metriport id and identifier, sorting;
3. /health's "needs attention" first — rerun the patient bot, a refused delivery and the disabled webhook with
   Metriport's failed count, retry the webhook, replay all failed and stuck — each with its Patient link;
4. a message's page: redacted payload, every attempt with Metriport's request ids, links to the resources;
5. charts with titled axes and UTC, stable colours, a time range; no text under WCAG AA contrast, no horizontal
   scrolling and one column at 390 px, nav and sign-out usable;
6. sign-in that never redirects off-site (`next=/%09/evil.example`), and sign-out.
Nothing here asserts a duration: the test polls the DOM for what it waits for, and the aggregation figure is
compared with the same figure computed here from the same records (no second clock).
Screenshots of every page at both widths go to bench/out/console/ (and those the README shows to
docs/screenshots/ with MEDPORT_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from medport import testing
from medport.generator.console.command import serve_console, settings_for_stack
from medport.generator.console.figures import STATUS_COLORS, type_color
from medport.generator.remote.enroll import run_enroll
from medport.generator.remote.metriport_client import MetriportApi
from tests.flows import legacy_flow_config
from tests.paths import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None)
DRIVER = next(
    (p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and os.path.exists(p)), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1366,1000",
]
SHOTS = ROOT / "bench" / "out" / "console"
DOC_SHOTS = ROOT / "docs" / "screenshots"
WIDTHS = (390, 1366)
# the screenshots the README shows (MEDPORT_UPDATE_SCREENSHOTS=1 refreshes them in docs/screenshots/)
DOC_SET = {
    "console-patients-390.png",
    "console-patients-1366.png",
    "console-patient-failed-1366.png",
    "console-health-attention-1366.png",
    "console-health-webhook-disabled-390.png",
    "console-message-390.png",
    "console-health-1366.png",
}
MESSAGE_CODE = "https://medport.dev/fhir/CodeSystem/medport|metriport-webhook-message"
LEASE = "https://medport.dev/fhir/StructureDefinition/message-lease-expires"
MRN = "urn:example:mrn"


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not CHROMIUM or not DRIVER:
        pytest.skip(
            "no Chromium here: the browser test needs Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver; .ci/run installs them when it runs as root)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


# ------------------------------------------------------------------------------------------- the records
def message_tasks(stack, patient_id: str) -> list[dict]:
    out = []
    for t in stack.fhir.search("Task", {"code": MESSAGE_CODE, "_count": "1000"}):
        msg = json.loads(t["input"][0]["valueString"])
        if (msg.get("meta", {}).get("data") or {}).get("medplumPatientId") == patient_id:
            out.append(t)
    return out


def patient_bot_failed(stack, pid: str) -> bool:
    return any(ae.get("outcome") != "0" for ae in stack.fhir.search("AuditEvent", {"entity": f"Patient/{pid}"}))


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def expected_aggregation(stack, pid: str) -> float | None:
    """The aggregation time from the records, computed here from the same inputs the console reads: the query's
    `at` in the patient bot's log line, the consolidated-data Task's executionPeriod.end, less the gaps between a
    processing run that left a message failed and the next run of that message (the wait for a replay)."""
    starts = []
    for ae in stack.fhir.search("AuditEvent", {"entity": f"Patient/{pid}", "_count": "1000"}):
        for ln in (ae.get("outcomeDesc") or "").splitlines():
            if "Metriport document-query started" in ln or "Metriport network-query started" in ln:
                starts.append(_t(json.loads(ln[ln.index(" {") + 1 :])["at"]))
    tasks = message_tasks(stack, pid)
    done = [
        _t(t["executionPeriod"]["end"])
        for t in tasks
        if t["status"] == "completed" and "consolidated-data" in t.get("description", "")
    ]
    if len(starts) != 1 or not done:
        return None
    start, end = starts[0], min(done)
    waited = 0.0
    for t in tasks:
        runs = sorted(
            stack.fhir.search("AuditEvent", {"entity": f"Task/{t['id']}", "_count": "100"}),
            key=lambda a: a["period"]["start"],
        )
        for a, b in itertools.pairwise(runs):
            if "message failed" in (a.get("outcomeDesc") or ""):
                lo, hi = max(_t(a["period"]["end"]), start), min(_t(b["period"]["start"]), end)
                waited += max(0.0, (hi - lo).total_seconds())
    return (end - start).total_seconds() - waited


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack():
    # Metriport's legacy flow (document query, conversion, consolidated data): a fault is injected between the
    # document download and its conversion; 1 s between the fake's messages gives the time to
    with testing.start_stack(legacy_flow_config(), metriport_delay_s=1.0) as s:
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


@pytest.fixture(scope="module")
def people(stack):
    """Every situation, through the real flow (faults injected through the fake Metriport)."""
    retries = stack.config.retry.max_attempts
    out = {}
    out["jane"] = stack.create_patient("Jane")
    assert stack.wait_for_flow(timeout=90).ok
    jane = stack.fhir.read("Patient", out["jane"]["id"])
    out["jane"] = stack.fhir.update(
        dict(jane, identifier=jane["identifier"] + [{"system": MRN, "value": "MRN-JANE-1"}])
    )
    # Chris: the consolidated query the document conversion starts is refused on every attempt -> that message fails
    seen = sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download" and d["status"] == "success")
    out["chris"] = stack.create_patient("Chris")
    assert testing.wait_until(
        lambda: (
            sum(1 for d in stack.webhooks() if d["type"] == "medical.document-download" and d["status"] == "success")
            > seen
        ),
        timeout=60,
    )
    stack.fake.set_faults(fail_next=retries, fail_status=500)
    assert testing.wait_until(
        lambda: [t for t in message_tasks(stack, out["chris"]["id"]) if t["status"] == "failed"], timeout=90
    )
    stack.fake.set_faults(fail_next=0)
    out["ollie"] = stack.create_patient(
        "Ollie", address={"line": ["1 Main St"], "city": "Austin", "state": "ZZ", "postalCode": "78701"}
    )
    out["kyla"] = stack.create_patient("Kyla")
    assert testing.wait_until(
        lambda: [
            t
            for t in message_tasks(stack, out["kyla"]["id"])
            if t["status"] == "completed" and "consolidated-data" in t["description"]
        ],
        timeout=90,
    )
    out["twin"] = stack.create_patient("Kyla")  # the same person again: refused, a review Task left
    assert testing.wait_until(
        lambda: stack.fhir.search("Task", {"subject": f"Patient/{out['twin']['id']}"}), timeout=60
    )
    assert stack.wait_idle(60)
    # Andreas and Zoe: Metriport answers 503 to every attempt of the patient bot
    for name in ("andreas", "zoe"):
        stack.fake.set_faults(fail_next=retries, fail_status=503)
        out[name] = stack.create_patient(name.capitalize())
        assert testing.wait_until(lambda name=name: patient_bot_failed(stack, out[name]["id"]), timeout=60)
        stack.fake.set_faults(fail_next=0)
    assert stack.wait_idle(60)
    # Andreas (not Zoe: she is left to be rerun) linked by a bulk create, as `medport enroll` does (no document
    # query in the sandbox for it: linked, and nothing asked yet)
    stack.fake.set_faults(bulk_document_queries=False)
    result = run_enroll(
        stack.config,
        stack.internal.admin,
        MetriportApi(stack.fake.base_url, stack.fake.api_key),
        criteria=f"_id={out['andreas']['id']}",
        timeout_s=120,
    )
    assert result.done and result.plan.selected == 1
    assert testing.wait_until(lambda: stack.metriport_id(out["andreas"]), timeout=60)
    assert stack.wait_idle(60)
    # a message left in progress by a run that was cut off: its lease expired
    src = next(t for t in message_tasks(stack, out["kyla"]["id"]) if "document-download" in t["description"])
    out["stuck"] = stack.fhir.create(
        {
            "resourceType": "Task",
            "status": "in-progress",
            "intent": "order",
            "code": src["code"],
            "description": src["description"],
            "input": src["input"],
            "for": {"reference": f"Patient/{out['kyla']['id']}"},
            "identifier": [{"system": src["identifier"][0]["system"], "value": "stuck-message-1"}],
            "extension": [{"url": LEASE, "valueDateTime": "2026-01-01T00:00:00Z"}],
        }
    )
    return out


# ------------------------------------------------------------------------------------------- browser helpers
def at_width(browser, width: int) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def wait_for(browser, predicate, timeout: float = 90.0, what: str = ""):
    # a self-refreshing page replaces its document: an element read meanwhile fails in several ways, read again
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WebDriverException as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} ({type(last).__name__ if last else 'no error'})")
        time.sleep(0.3)


def sign_in(browser, url: str, stack) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    assert "/login" in browser.current_url, "the console must ask for the admin credentials"
    emu = stack.internal.emulator
    browser.find_element(By.ID, "client_id").send_keys(emu.admin_client_id)
    browser.find_element(By.ID, "client_secret").send_keys(emu.admin_client_secret)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(
        browser,
        lambda: "/login" not in browser.current_url and browser.find_elements(By.ID, "nav-health"),
        30,
        "the signed-in page",
    )


def attr(browser, css: str, name: str) -> str | None:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, css).get_attribute(name)


def states_in_list(browser) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {
        el.get_attribute("data-patient"): el.get_attribute("data-state")
        for el in browser.find_elements(By.CSS_SELECTOR, "#patients tbody tr[data-patient]")
    }


def screenshot(browser, name: str) -> Path:
    """The whole page (beyond the viewport), through the DevTools protocol."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1},
        },
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("MEDPORT_UPDATE_SCREENSHOTS") == "1" and name in DOC_SET:
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SHOTS / name)
    return path


LAYOUT_JS = """
const vw = document.documentElement.clientWidth;
const box = (e) => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
const usable = (e) => { const r = e.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return r.width > 0 && r.left >= 0 && r.right <= vw + 0.5 && !!hit && (hit === e || e.contains(hit)); };
const controls = [...document.querySelectorAll('header.top nav a, #sign-out')];
const overlaps = [];
controls.forEach((a, i) => controls.slice(i + 1).forEach((b) => { const x = box(a), y = box(b);
  if (x.left < y.right && y.left < x.right && x.top < y.bottom && y.top < x.bottom) overlaps.push([a.id, b.id]); }));
const columns = (sel) => [...document.querySelectorAll(sel)].map((g) => new Set([...g.children].filter(
  (c) => c.getBoundingClientRect().width > 0).map((c) => Math.round(c.getBoundingClientRect().left))).size);
const hidden = [...document.querySelectorAll('.pill, li.item, button, .state-link, td')].filter((e) => {
  const r = e.getBoundingClientRect();
  return !e.closest('.scroll') && r.width > 0 && (r.left < -1 || r.right > vw + 1); }).map((e) => e.outerHTML.slice(0, 80));
return {vw: window.innerWidth, overflow: document.documentElement.scrollWidth - vw, hidden: hidden,
        controls: controls.map((e) => [e.id, usable(e)]), overlaps: overlaps,
        cols2: columns('.cols2'), cards: columns('.cards'), cols: columns('.cols')};
"""

# Text that does not reach WCAG AA contrast on the colour behind it (4.5:1; 3:1 for large text).
CONTRAST_JS = """
const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
const bg = (e) => { for (let n = e; n && n.nodeType === 1; n = n.parentElement) {
    if (n instanceof SVGElement && n.ownerSVGElement) continue;
    const c = rgb(getComputedStyle(n).backgroundColor); if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c; }
  return [255, 255, 255]; };
const bad = [];
for (const e of document.querySelectorAll('body *')) {
  const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own) continue;
  const s = getComputedStyle(e); const r = e.getBoundingClientRect();
  if (s.visibility === 'hidden' || s.display === 'none' || r.width === 0 || r.left < -1000) continue;
  const fg = rgb(e instanceof SVGElement ? s.fill : s.color);
  const b = e instanceof SVGElement ? [255, 255, 255] : bg(e);
  const l1 = lum(fg), l2 = lum(b); const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
  const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight) >= 700;
  const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
  if (ratio < need) bad.push([e.tagName, e.textContent.trim().slice(0, 40), ratio.toFixed(2)]);
}
return bad;
"""


def check_layout(browser, width: int, page: str) -> None:
    lay = browser.execute_script(LAYOUT_JS)
    assert lay["vw"] == width, lay
    assert lay["overflow"] <= 1, f"{page} at {width} px scrolls sideways by {lay['overflow']} px"
    assert lay["controls"] and all(ok for _, ok in lay["controls"]), (page, width, lay["controls"])
    assert lay["overlaps"] == [], (page, width, lay["overlaps"])
    assert lay["hidden"] == [], (page, width, lay["hidden"])  # nothing pushed off the page
    if width < 600:
        assert all(n == 1 for n in lay["cols2"] + lay["cards"] + lay["cols"]), (page, lay)
    else:
        assert all(n == 2 for n in lay["cols2"]), (page, lay)
    assert browser.execute_script(CONTRAST_JS) == [], (page, width)


def visit(browser, url: str, width: int, page: str, shot: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    at_width(browser, width)
    browser.get(url)
    wait_for(browser, lambda: browser.find_elements(By.ID, "main"), 30, page)
    check_layout(browser, width, page)
    if shot:
        screenshot(browser, f"{shot}-{width}.png")


# ------------------------------------------------------------------------------------------- the test
def test_console_in_chromium(stack, people, console, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ids = {k: v["id"] for k, v in people.items() if k != "stuck"}
    base = console.url

    # 6a. sign-in keeps the redirect on the console, however `next` is disguised
    at_width(browser, 390)
    sign_in(browser, f"{base}login?next=/%09/evil.example", stack)
    assert urlsplit(browser.current_url).netloc == urlsplit(base).netloc

    # 1. one state per Patient, from the newest evidence
    expected = {
        ids["jane"]: "imported",
        ids["chris"]: "failed",
        ids["ollie"]: "skipped",
        ids["kyla"]: "stuck",
        ids["twin"]: "duplicate",
        ids["andreas"]: "awaiting",
        ids["zoe"]: "failed",
    }
    for width in WIDTHS:
        visit(browser, f"{base}patients", width, "patients", "console-patients")
        assert wait_for(
            browser,
            lambda: states_in_list(browser) == expected,
            60,
            f"the states {expected}, got {states_in_list(browser)}",
        )
    row = f'#patients tr[data-patient="{ids["andreas"]}"]'
    assert "no query on record" in browser.find_element(By.CSS_SELECTOR, f"{row} td.reason").text
    assert (
        "address.state"
        in browser.find_element(By.CSS_SELECTOR, f'#patients tr[data-patient="{ids["ollie"]}"] td.reason').text
    )
    assert "503" in browser.find_element(By.CSS_SELECTOR, f'#patients tr[data-patient="{ids["zoe"]}"] td.reason').text

    # 2. filters with clickable counts, search, sorting
    for width in WIDTHS:
        visit(browser, f"{base}patients", width, "patients")
        link = browser.find_element(By.CSS_SELECTOR, 'a.state-link[data-state="failed"]')
        assert link.get_attribute("data-count") == "2"
        link.click()
        wait_for(browser, lambda: "state=failed" in browser.current_url, 30, "the failed filter")
        assert set(states_in_list(browser).values()) == {"failed"} and len(states_in_list(browser)) == 2
        assert attr(browser, 'a.state-link[data-state="failed"]', "aria-current") == "true"
        check_layout(browser, width, "patients, failed")
    mid = stack.metriport_id(people["jane"])
    for term, who in (
        (mid, ids["jane"]),
        ("MRN-JANE-1", ids["jane"]),
        (f"{MRN}|MRN-JANE-1", ids["jane"]),
        (ids["ollie"][:13], ids["ollie"]),
    ):
        browser.get(f"{base}patients")
        box = browser.find_element(By.ID, "q")
        box.clear()
        box.send_keys(term)
        browser.find_element(By.ID, "search-go").click()
        wait_for(browser, lambda: "q=" in browser.current_url, 30, "the search")
        assert list(states_in_list(browser)) == [who], term
    assert "Jane" not in browser.page_source and "Smith" not in browser.page_source  # no names, ever
    browser.get(f"{base}patients")
    Select(browser.find_element(By.ID, "sort")).select_by_value("id")
    browser.find_element(By.ID, "search-go").click()
    wait_for(browser, lambda: "sort=id" in browser.current_url, 30, "sorting by id")
    listed = list(states_in_list(browser))
    assert listed == sorted(listed) and attr(browser, "#showing", "data-pages") == "1"

    # the patient page: its state, its timeline, the distinct resources in Medplum
    for width in WIDTHS:
        visit(browser, f"{base}patients/{ids['jane']}", width, "patient", "console-patient")
        assert attr(browser, "#sync-state", "data-state") == "imported"
        assert int(attr(browser, "#counts", "data-in-medplum")) == sum(stack.imported(people["jane"]).values())
        stages = [el.get_attribute("data-stage") for el in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]
        for stage in ("saved", "patient-bot", "metriport", "webhook", "processing", "imported", "aggregation"):
            assert stage in stages, stage
    rows = {
        el.get_attribute("data-type"): int(el.get_attribute("data-count"))
        for el in browser.find_elements(By.CSS_SELECTOR, "#in-medplum tbody tr[data-type]")
    }
    assert rows == stack.imported(people["jane"])
    conv = next(t for t in message_tasks(stack, ids["chris"]) if "conversion" in t["description"])
    for width in WIDTHS:
        visit(browser, f"{base}patients/{ids['chris']}", width, "patient, failed", "console-patient-failed")
        assert attr(browser, "#sync-state", "data-state") == "failed"
        assert "500" in browser.find_element(By.ID, "state-reason").text
        assert browser.find_elements(By.CSS_SELECTOR, f'#patient-actions button.replay-btn[data-task="{conv["id"]}"]')
        ev = browser.find_element(By.CSS_SELECTOR, f'#timeline li[data-stage="processing"][data-task="{conv["id"]}"]')
        assert ev.get_attribute("data-tone") == "fail"

    # 3. needs attention, first, with everything actionable
    stack.fake.set_faults(bad_signatures=True)  # what Metriport sends next is refused: it disables the webhook
    for width in WIDTHS:
        visit(browser, f"{base}health", width, "health", "console-health-attention")
        html = browser.page_source
        assert html.index('id="attention"') < html.index('id="cards"')
        kinds = [el.get_attribute("data-kind") for el in browser.find_elements(By.CSS_SELECTOR, "#attention h3.group")]
        assert kinds[:3] == ["message-failed", "message-stuck", "patient-bot-failed"], kinds
        failed_item = f'li.item[data-kind="message-failed"][data-patients="{ids["chris"]}"]'
        assert browser.find_elements(By.CSS_SELECTOR, f"{failed_item} .replay-btn")
        assert browser.find_elements(By.CSS_SELECTOR, f'{failed_item} a.patient-link[href="/patients/{ids["chris"]}"]')
        stuck_item = f'li.item[data-kind="message-stuck"][data-task="{people["stuck"]["id"]}"]'
        assert browser.find_elements(By.CSS_SELECTOR, f"{stuck_item} .replay-btn")
        assert browser.find_elements(By.CSS_SELECTOR, f'{stuck_item} a.patient-link[href="/patients/{ids["kyla"]}"]')
        assert browser.find_elements(By.CSS_SELECTOR, f'button.rerun-btn[data-patient="{ids["zoe"]}"]')
        assert browser.find_elements(By.CSS_SELECTOR, 'li.item[data-kind="review"]')
        assert browser.find_elements(By.ID, "replay-all")
    # rerun the patient bot for Zoe (at 390 px): her query starts; its first message is refused (bad signature)
    at_width(browser, 390)
    browser.find_element(By.CSS_SELECTOR, f'button.rerun-btn[data-patient="{ids["zoe"]}"]').click()
    wait_for(browser, lambda: "ran again" in browser.find_element(By.ID, "flash").text, 30, "the rerun")

    def webhook_disabled():
        browser.get(f"{base}health")
        return browser.find_elements(
            By.CSS_SELECTOR, 'h3.group[data-kind="webhook-disabled"]'
        ) and browser.find_elements(By.CSS_SELECTOR, 'h3.group[data-kind="delivery-refused"]')

    wait_for(browser, webhook_disabled, 90, "the refused delivery and the disabled webhook")
    assert int(attr(browser, "#metriport-webhook", "data-failed")) >= 1
    assert attr(browser, "#metriport-webhook", "data-enabled") == "False"
    assert "request(s) failed on Metriport's side" in browser.find_element(By.ID, "attention").text
    assert not browser.find_elements(By.CSS_SELECTOR, f'button.rerun-btn[data-patient="{ids["zoe"]}"]')
    check_layout(browser, 390, "health, webhook disabled")
    screenshot(browser, "console-health-webhook-disabled-390.png")
    # the key is right again: retry the webhook (at 1366 px); Metriport re-enables it and resends
    stack.fake.set_faults(bad_signatures=False)
    at_width(browser, 1366)
    browser.find_element(By.ID, "retry-webhook-webhook-disabled").click()
    wait_for(browser, lambda: "re-enabled the webhook" in browser.find_element(By.ID, "flash").text, 30, "the retry")
    wait_for(
        browser,
        lambda: (
            (browser.get(f"{base}health") or True) and attr(browser, "#metriport-webhook", "data-enabled") == "True"
        ),
        60,
        "the webhook enabled",
    )
    # replay all failed and stuck (at 1366 px): Chris's conversion and the stuck message
    browser.find_element(By.ID, "replay-all").click()
    wait_for(browser, lambda: "put back in the queue" in browser.find_element(By.ID, "flash").text, 30, "replay all")

    def settled():
        browser.get(f"{base}patients")
        s = states_in_list(browser)
        return s.get(ids["chris"]) == "imported" and s.get(ids["zoe"]) == "imported" and s.get(ids["kyla"]) != "stuck"

    wait_for(browser, settled, 120, "Chris and Zoe imported after the replay and the retry")
    assert stack.wait_idle(60)

    # 4. Chris's conversion message: redacted payload, every attempt, request ids, links into Medplum
    for width in WIDTHS:
        visit(browser, f"{base}messages/{conv['id']}", width, "message", "console-message")
        assert attr(browser, "#message-status", "data-status") == "completed"
        tones = [
            (el.get_attribute("data-what"), el.get_attribute("data-tone"))
            for el in browser.find_elements(By.CSS_SELECTOR, "#attempts li.attempt")
        ]
        assert ("processing run", "fail") in tones and ("processing run", "ok") in tones
        assert ("Task failed", "fail") in tones and ("delivered to the webhook bot", "ok") in tones
        assert ("sent by Metriport", "ok") in tones  # the fake's own log
        failed_calls = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#attempts ul.calls li")]
        assert any("→ 500" in c for c in failed_calls) and any("→ 200" in c for c in failed_calls)
        assert browser.find_elements(By.CSS_SELECTOR, "#attempts li[data-request-id]:not([data-request-id=''])")
        assert attr(browser, "#message-patients a.patient-link", "href").endswith(f"/patients/{ids['chris']}")
        payload = browser.find_element(By.ID, "payload").text
        assert conv["id"] and json.loads(conv["input"][0]["valueString"])["meta"]["messageId"] in payload
    consolidated = next(
        t
        for t in message_tasks(stack, ids["chris"])
        if "consolidated-data" in t["description"] and t["status"] == "completed"
    )
    browser.get(f"{base}messages/{consolidated['id']}")
    payload = browser.find_element(By.ID, "payload").text
    assert "‹signature redacted›" in payload or "‹redacted›" in payload
    assert "X-Amz" not in payload and "Signature=" not in payload
    links = [el.get_attribute("href") for el in browser.find_elements(By.CSS_SELECTOR, "a.resource-link")]
    assert links and all(f"_compartment=Patient/{ids['chris']}" in u for u in links)

    # 5. charts: titled axes, UTC, stable colours; a time range; WCAG AA and one column (checked on every visit)
    for width in WIDTHS:
        visit(browser, f"{base}health", width, "health", "console-health")
        titles = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#chart-by-type text.axis-title")]
        assert "time (UTC)" in titles and any(t.startswith("messages per") for t in titles)
        assert any(
            "query start" in el.text
            for el in browser.find_elements(By.CSS_SELECTOR, "#chart-aggregation text.axis-title")
        )
        legend = {
            el.get_attribute("data-key"): el.get_attribute("data-color")
            for el in browser.find_elements(By.CSS_SELECTOR, "#by-type-title ~ ul.legend li[data-key]")
        }
        assert legend and all(c == type_color(t) for t, c in legend.items())
        assert not set(legend.values()) & set(STATUS_COLORS.values())
        table = {
            el.get_attribute("data-type"): el.get_attribute("data-color")
            for el in browser.find_elements(By.CSS_SELECTOR, "#by-type tbody tr[data-type]")
        }
        assert {t: table[t] for t in legend} == legend
    browser.find_element(By.CSS_SELECTOR, 'nav.ranges a[data-range="1h"]').click()
    wait_for(browser, lambda: "range=1h" in browser.current_url, 30, "the 1 h range")
    assert attr(browser, 'nav.ranges a[data-range="1h"]', "aria-current") == "true"
    # the aggregation figure equals what the same records give (the wait for the replay left out)
    secs = {k: expected_aggregation(stack, ids[k]) for k in ("jane", "chris", "kyla", "zoe")}
    secs = {k: v for k, v in secs.items() if v is not None}
    assert {"jane", "chris"} <= set(secs), secs
    health = requests.get(
        f"{base}api/health",
        auth=(stack.internal.emulator.admin_client_id, stack.internal.emulator.admin_client_secret),
        timeout=30,
    ).json()
    samples = {s["patient"]: s for s in health["aggregation"]["samples"]}
    for k, v in secs.items():
        assert samples[ids[k]]["seconds"] == pytest.approx(v, abs=2e-3), k
    assert samples[ids["chris"]]["waited_s"] > 0 and samples[ids["jane"]]["waited_s"] == 0
    browser.get(f"{base}health")
    agg = browser.find_element(By.ID, "aggregation")
    assert float(agg.get_attribute("data-p50")) == pytest.approx(percentile(list(secs.values()), 50), abs=2e-3)
    assert float(agg.get_attribute("data-p95")) == pytest.approx(percentile(list(secs.values()), 95), abs=2e-3)

    # 6b. sign out (at 390 px): the header's button works, and the old cookie no longer opens anything
    at_width(browser, 390)
    browser.get(f"{base}health")
    cookie = browser.get_cookie("medport_console")["value"]
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda: "/login" in browser.current_url, 30, "signed out")
    r = requests.get(
        f"{base}patients",
        cookies={"medport_console": cookie},
        allow_redirects=False,
        timeout=30,
        headers={"Accept": "text/html"},
    )
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    for width in WIDTHS:
        at_width(browser, width)
        sign_in(browser, f"{base}login?next=/%09/evil.example", stack)
        assert urlsplit(browser.current_url).netloc == urlsplit(base).netloc
        screenshot(browser, f"console-signed-in-{width}.png")
        browser.find_element(By.ID, "sign-out").click()
        wait_for(browser, lambda: "/login" in browser.current_url, 30, "signed out")


def test_the_same_figures_without_any_developer_api(stack, people, console):
    """As against a real Medplum: FHIR records only, never a developer API, the same figures."""
    auth = (stack.internal.emulator.admin_client_id, stack.internal.emulator.admin_client_secret)
    assert stack.wait_idle(60)
    fhir_only = serve_console(settings_for_stack(stack.internal, stack.config, fhir_only=True), port=0)
    try:

        def both():
            a = requests.get(f"{console.url}api/health", auth=auth, timeout=30).json()
            b = requests.get(f"{fhir_only.url}api/health", auth=auth, timeout=30).json()
            return a, b

        with_dev, without = both()
        for _ in range(10):  # the two consoles' snapshots may be a few seconds apart: read both again
            if all(without[k] == with_dev[k] for k in ("patients", "deliveries", "messages", "processing")):
                break
            time.sleep(1)
            with_dev, without = both()
        assert fhir_only.source.refused_dev_api_calls == []
        assert without["source"]["developer_api"] is False and with_dev["source"]["developer_api"] is True
        assert without["metriport_deliveries"] is None and with_dev["metriport_deliveries"]["sent"] > 0
        for key in ("patients", "deliveries", "messages", "processing", "stuck", "aggregation", "metriport_webhook"):
            assert without[key] == with_dev[key], key
        page = requests.get(f"{fhir_only.url}patients/{people['jane']['id']}", auth=auth, timeout=30).text
        assert 'data-state="imported"' in page and "FHIR records only" in page
    finally:
        fhir_only.stop()


def test_security_over_http(console, stack):
    """Host check, headers, throttling: what a browser cannot show."""
    port = urlsplit(console.url).port
    r = requests.get(console.url + "login", headers={"Host": f"evil.example:{port}"}, timeout=10)
    assert r.status_code == 421
    r = requests.get(console.url + "login", timeout=10)
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
