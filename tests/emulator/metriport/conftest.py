"""Shared fixtures of the fake Metriport tests: a fake on a fake clock, a webhook receiver, an API client."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from medport.emulator.metriport import Settings as FakeSettings
from medport.emulator.metriport import start as start_fake
from medport.emulator.shared import converted_ccda_dir

FIXTURES = str(converted_ccda_dir() or "/nonexistent/converted-ccda")
KEY = "test-api-key"


class Receiver:
    """A webhook endpoint recording every request; answers pings with the pong."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail = False
        self.cond = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.loads(raw)
                with outer.cond:
                    outer.requests.append(
                        {
                            "raw": raw.decode("utf-8"),
                            "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                    outer.cond.notify_all()
                if outer.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                out = json.dumps({"pong": body["ping"]} if "ping" in body else {}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, t):
        return [r for r in self.requests if r["body"].get("meta", {}).get("type") == t]

    def wait_for(self, t, n=1, timeout=30.0):
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.of_type(t)) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {t} webhook; got {[r['body'].get('meta') for r in self.requests]}")
                self.cond.wait(left)
        return self.of_type(t)

    def wait_until(self, found, timeout=30.0):
        """Until `found()` (a look at the requests received) is truthy; its value."""
        end = time.monotonic() + timeout
        with self.cond:
            while not (value := found()):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not received; got {[r['body'].get('meta') for r in self.requests]}")
                self.cond.wait(left)
        return value

    def close(self):
        self.server.shutdown()


class Clock:
    def __init__(self):
        self.t = 1_760_000_000.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def fake_module():
    clock = Clock()
    data = FIXTURES if os.path.isdir(FIXTURES) else None
    f = start_fake(FakeSettings(api_key=KEY, delay_s=0.02, clock=clock, data_path=data), "127.0.0.1", 0)
    f.clock = clock
    yield f
    f.close()


@pytest.fixture
def fake(fake_module, receiver):
    fake_module.state.reset()
    fake_module.clock.t += 3600  # fresh rate-limit windows
    receiver.requests.clear()
    receiver.fail = False
    fake_module.state.set_webhook(receiver.url, "whkey")
    return fake_module


class Api:
    def __init__(self, fake, key=KEY):
        self.base = fake.base_url
        self.s = requests.Session()
        if key:
            self.s.headers["x-api-key"] = key

    def __getattr__(self, method):
        def call(path, **kw):
            return self.s.request(method.upper(), self.base + path, timeout=10, **kw)

        return call


@pytest.fixture
def api(fake):
    return Api(fake)
