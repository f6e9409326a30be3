"""The sync console's measured defects, reproduced on one real stack and read back as numbers — run it against
this checkout's console and against another (`--console-src DIR`, e.g. the base commit's) to compare.

Scenario (the real flow, faults through the fake Metriport): Jane imported, then saved with a new phone number
(a second query: her record imported twice); Andreas's patient bot failed (503), then linked by `medport enroll`;
Zoe's patient bot failed (503) and left so. Read back:
- what the patients list says of Andreas, and the "imported" figure it shows for Jane against Medplum's count;
- whether /health lists Zoe's failure, and what its processing-failure card says;
- security: where `login?next=/%09/evil.example` redirects, whether a session cookie works after logout, how 30
  wrong secrets in a row are answered, the security headers, a foreign Host header;
- at 390 px in Chromium (when installed): how far /patients scrolls sideways, whether sign-out is on screen.

Usage: .venv/bin/python bench/console_defects.py [--console-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_console import ROOT, load_console


def scenario(stack) -> dict:
    from medport import testing
    from medport.generator.remote.enroll import run_enroll
    from medport.generator.remote.metriport_client import MetriportApi

    retries = stack.config.retry.max_attempts
    jane = stack.create_patient("Jane")
    assert stack.wait_for_flow(timeout=120).ok
    stack.fake.set_faults(bulk_document_queries=False)
    out = {"jane": jane["id"]}
    for name in ("Andreas", "Zoe"):
        stack.fake.set_faults(fail_next=retries, fail_status=503)
        p = stack.create_patient(name)
        testing.wait_until(
            lambda p=p: any(
                ae.get("outcome") != "0" for ae in stack.fhir.search("AuditEvent", {"entity": f"Patient/{p['id']}"})
            ),
            timeout=60,
        )
        stack.fake.set_faults(fail_next=0)
        out[name.lower()] = p["id"]
    assert stack.wait_idle(60)
    run_enroll(
        stack.config,
        stack.internal.admin,
        MetriportApi(stack.fake.base_url, stack.fake.api_key),
        criteria=f"_id={out['andreas']}",
        timeout_s=120,
    )
    assert testing.wait_until(lambda: stack.metriport_id(out["andreas"]), timeout=60)

    # Jane's phone changes: the patient bot updates Metriport and queries again; the same record comes twice
    def answers() -> int:
        return sum(
            1
            for t in stack.fhir.search("Task", {"_count": "1000"})
            if t["status"] == "completed"
            and ("consolidated-data" in t.get("description", "") or "network-query.hie" in t.get("description", ""))
        )

    before = answers()
    cur = stack.fhir.read("Patient", jane["id"])
    stack.fhir.update(dict(cur, telecom=[{"system": "phone", "value": "512-555-0142"}]))
    assert testing.wait_until(lambda: answers() > before, timeout=120)
    assert stack.wait_idle(60)
    return out


def read_back(stack, served, ids: dict) -> dict:
    emu = stack.internal.emulator
    auth = (emu.admin_client_id, emu.admin_client_secret)
    base = served.url
    page = requests.get(base + "patients", auth=auth, timeout=60, headers={"Accept": "text/html"}).text
    row = lambda pid: page[page.index(f'data-patient="{pid}"') :][:3000]
    andreas = re.search(r'data-state="([^"]+)"', row(ids["andreas"])).group(1)
    cells = re.findall(r'<td[^>]*class="num[^"]*"[^>]*>\s*(\d+)', row(ids["jane"]))
    health = requests.get(base + "health", auth=auth, timeout=60, headers={"Accept": "text/html"}).text
    card = re.search(r'id="card-processing-failures"[^>]*>.*?card-value">([^<]*)<.*?card-sub">([^<]*)<', health, re.S)
    out = {
        "andreas (enrolled after a failed run)": andreas,
        "jane: numbers in her list row": cells,
        "jane: distinct resources in Medplum": sum(stack.imported(ids["jane"]).values()),
        "health lists Zoe's failure": f"/patients/{ids['zoe']}" in health,
        "health: processing-failures card": " — ".join(x.strip() for x in card.groups()) if card else None,
    }
    # security
    s = requests.Session()
    r = s.post(
        base + "login?next=/%09/evil.example",
        data={"client_id": auth[0], "client_secret": auth[1]},
        allow_redirects=False,
        timeout=30,
    )
    out["login?next=/%09/evil.example redirects to"] = r.headers.get("Location")
    cookie = s.cookies.get("medport_console")
    token = re.search(r'name="csrf" value="([^"]+)"', s.get(base + "health", timeout=30).text).group(1)
    s.post(base + "logout", data={"csrf": token}, timeout=30)
    r = requests.get(
        base + "patients",
        cookies={"medport_console": cookie},
        allow_redirects=False,
        timeout=30,
        headers={"Accept": "text/html"},
    )
    out["the cookie after logout"] = f"{r.status_code} {r.headers.get('Location', '')}".strip()
    t0 = time.monotonic()
    codes = [
        requests.post(
            base + "login", data={"client_id": auth[0], "client_secret": f"wrong{i}"}, timeout=30, allow_redirects=False
        ).status_code
        for i in range(30)
    ]
    out["30 wrong secrets"] = (
        f"{dict((c, codes.count(c)) for c in sorted(set(codes)))} in {time.monotonic() - t0:.1f} s"
    )
    r = requests.get(base + "login", timeout=30)
    out["headers"] = {h: r.headers.get(h) for h in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control")}
    port = base.rstrip("/").rsplit(":", 1)[1]
    out["Host: evil.example"] = requests.get(
        base + "login", headers={"Host": f"evil.example:{port}"}, timeout=30
    ).status_code
    out |= narrow(base, auth, ids)
    return out


def narrow(base: str, auth, ids) -> dict:
    """/patients at 390 px in headless Chromium: sideways scroll and whether sign-out is on screen."""
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        return {}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(f)
    d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
    try:
        d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 900, "deviceScaleFactor": 1, "mobile": True}
        )
        d.get(base + "login")
        d.find_element(By.ID, "client_id").send_keys(auth[0])
        d.find_element(By.ID, "client_secret").send_keys(auth[1])
        d.find_element(By.ID, "sign-in").click()
        time.sleep(1)
        d.get(base + "patients")
        over = d.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        so = d.execute_script("""const b = [...document.querySelectorAll('button')].find((x) => /sign out/i.test(x.textContent));
            if (!b) return null; const r = b.getBoundingClientRect(); return [r.left, r.right];""")
        height = d.execute_script("return document.documentElement.scrollHeight")
        return {
            "390 px: /patients scrolls sideways by (px)": over,
            "390 px: sign-out button x range": so,
            "390 px: /patients height (px)": height,
        }
    finally:
        d.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--console-src")
    args = ap.parse_args()
    command = load_console(args.console_src)
    from medport import testing

    with testing.start_stack(ROOT / "medport.toml", metriport_delay_s=0.1) as stack:  # today's default flow
        ids = scenario(stack)
        served = command.serve_console(command.settings_for_stack(stack.internal, stack.config), port=0)
        try:
            out = read_back(stack, served, ids)
        finally:
            served.stop()
    for k, v in out.items():
        print(f"{k}: {v}")
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
