"""The webhook sender alone, with a recording `post` instead of HTTP: order, signing, disable on
failure, retry, pings and the signature/duplicate faults."""

from __future__ import annotations

import json

import pytest

from medport.emulator.metriport import webhooks
from medport.emulator.metriport.faults import Faults
from medport.emulator.metriport.models import WebhookSettings
from medport.emulator.metriport.sender import DISABLED_DETAIL, WebhookSender
from tests.emulator.metriport.conftest import Clock


class Receiver:
    """Stands in for `webhooks.post`: records each message, answers pings, can fail."""

    def __init__(self):
        self.posts: list[dict] = []
        self.fail = False
        self.pong: str | None = None  # None: echo the ping

    def __call__(self, url, body, signature, timeout_s):
        msg = json.loads(body)
        self.posts.append({"url": url, "body": body, "msg": msg, "signature": signature, "timeout_s": timeout_s})
        if self.fail:
            return False, 500, "Failed to send payload: HTTP 500", None
        if "ping" in msg:
            return True, 200, "OK", {"pong": msg["ping"] if self.pong is None else self.pong}
        return True, 200, "OK", {}

    def types(self):
        return [p["msg"]["meta"]["type"] for p in self.posts]


@pytest.fixture
def receiver():
    return Receiver()


@pytest.fixture
def faults():
    return Faults()


@pytest.fixture
def sender(receiver, faults):
    s = WebhookSender(WebhookSettings(id="cx"), faults=faults, clock=Clock(), post=receiver, name="test-sender")
    s.configure("http://hook.test/h", "key-1")
    yield s
    s.close()


def test_messages_go_out_in_order_signed(sender, receiver):
    for i in range(5):
        sender.send("medical.consolidated-data", {"patients": [{"n": i}]}, {"k": "v"}, request_id=f"r{i}")
    assert sender.wait_idle(2.0)
    assert [p["msg"]["patients"][0]["n"] for p in receiver.posts] == [0, 1, 2, 3, 4]
    assert all(webhooks.verify("key-1", p["body"], p["signature"]) for p in receiver.posts)
    assert receiver.posts[0]["msg"]["meta"]["data"] == {"k": "v"}
    assert [d["status"] for d in sender.log(include_body=False)] == ["success"] * 5


def test_failure_disables_until_retry(sender, receiver):
    receiver.fail = True
    sender.send("medical.document-download", {}, None)
    assert sender.wait_idle(2.0)
    assert sender.status()["webhookEnabled"] is False
    receiver.fail = False
    held = sender.send("medical.document-conversion", {}, None)  # disabled: recorded, not sent
    assert held.status == "failure" and held.detail == DISABLED_DETAIL and len(receiver.posts) == 1
    assert sender.status()["webhookRequestsFailed"] == 2
    assert sender.retry() == 2
    assert sender.wait_idle(2.0)
    assert receiver.types()[1:] == ["medical.document-download", "medical.document-conversion"]
    assert sender.status() == {
        "webhookEnabled": True,
        "webhookStatusDetail": "OK",
        "webhookRequestsProcessing": 0,
        "webhookRequestsFailed": 0,
    }


def test_ping_enables_on_the_pong_only(sender, receiver):
    sender.configure("http://hook.test/h", testing=True)
    assert sender.status()["webhookStatusDetail"] == "Testing webhook..."
    sender.ping()
    assert sender.status()["webhookEnabled"] is True
    receiver.pong = "wrong"
    sender.ping()
    assert sender.status()["webhookEnabled"] is False
    assert sender.status()["webhookStatusDetail"] == "Invalid pong response"
    assert [d["status"] for d in sender.log(False)] == ["success", "ping-failed"]


def test_bad_signature_and_duplicate_faults(sender, receiver, faults):
    faults.set(bad_signatures=True, duplicate_deliveries=True)
    sender.send("medical.consolidated-data", {}, None)
    assert sender.wait_idle(2.0)
    assert len(receiver.posts) == 2 and receiver.posts[0]["body"] == receiver.posts[1]["body"]
    assert not webhooks.verify("key-1", receiver.posts[0]["body"], receiver.posts[0]["signature"])


def test_configure_keeps_or_clears_the_key(sender):
    assert sender.configure("http://hook.test/other")["webhookKey"] == "key-1"
    assert sender.configure(None) == {"id": "cx", "webhookUrl": None, "webhookKey": None, "mrFilters": None}
    assert sender.send("medical.consolidated-data", {}, None).detail == "Missing webhook config"


def test_timeouts_five_seconds_for_a_message_two_for_the_ping(sender, receiver):
    """packages/api/src/command/webhook/webhook.ts: DEFAULT_TIMEOUT_SEND_PAYLOAD_MS = 5_000,
    DEFAULT_TIMEOUT_SEND_TEST_MS = 2_000."""
    sender.ping()
    sender.send("medical.document-download", {"patients": []}, None, request_id="r1")
    assert sender.wait_idle(2.0)
    assert [(p["msg"]["meta"]["type"], p["timeout_s"]) for p in receiver.posts] == [
        ("ping", 2.0),
        ("medical.document-download", 5.0),
    ]


def test_meta_request_id_where_the_request_has_one(sender, receiver):
    """webhook.ts processRequest: meta = {messageId, requestId (only when set), when, type, data}."""
    sender.send("medical.consolidated-data", {"patients": []}, {"k": "v"}, request_id="req-1")
    sender.send("medical.document-conversion", {"patients": []}, None, request_id=None)
    sender.ping()
    assert sender.wait_idle(2.0)
    by_type = {p["msg"]["meta"]["type"]: p["msg"]["meta"] for p in receiver.posts}
    first, second, ping = (by_type[t] for t in ("medical.consolidated-data", "medical.document-conversion", "ping"))
    assert list(first) == ["messageId", "requestId", "when", "type", "data"] and first["requestId"] == "req-1"
    assert list(second) == ["messageId", "when", "type"]
    assert list(ping) == ["messageId", "when", "type"]  # pings carry no requestId


def test_reset_drops_the_messages_waiting_to_be_sent(receiver, faults):
    import threading

    gate = threading.Event()

    def slow_post(url, body, signature, timeout_s):
        gate.wait(5)
        return receiver(url, body, signature, timeout_s)

    s = WebhookSender(WebhookSettings(id="cx"), faults=faults, clock=Clock(), post=slow_post, name="test-sender")
    try:
        s.configure("http://hook.test/h", "key-1")
        for i in range(4):
            s.send("medical.consolidated-data", {"patients": [{"n": i}]}, None)
        s.reset(WebhookSettings(id="cx"))
        gate.set()
        assert s.wait_idle(2.0)
        assert len(receiver.posts) <= 1, "messages queued before the reset went out after it"
        assert s.log() == []
    finally:
        s.close()
