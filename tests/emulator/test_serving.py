"""The Host check both services make (emulator/serving.py `allowed_hosts`, `host_allowed`): a page on another
origin whose name resolves to 127.0.0.1 (DNS rebinding) reaches the loopback servers with its own name in
`Host:` and is refused with the service's own error body; loopback names and the address bound pass."""

from __future__ import annotations

import pytest
import requests

from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import admin_client, running_emulator
from medport.emulator.metriport import Settings as FakeSettings
from medport.emulator.metriport import start as start_fake
from medport.emulator.serving import allowed_hosts, host_allowed

FOREIGN = ("evil.example", "evil.example:8103", "127.0.0.1.nip.io", "localhost.evil.example", "[::2]:80")


def test_host_allowed_reads_names_ports_and_v6():
    hosts = allowed_hosts("127.0.0.1")
    for ok in (
        "127.0.0.1",
        "127.0.0.1:8103",
        "localhost",
        "LOCALHOST:1",
        "localhost.:8103",
        "[::1]:8103",
        "[::1]",
        None,
    ):
        assert host_allowed(ok, hosts), ok
    for bad in FOREIGN + ("", ":8103", "[::1"):
        assert not host_allowed(bad, hosts), bad


def test_allowed_hosts_adds_the_bound_address_the_public_url_and_the_environment(monkeypatch):
    monkeypatch.setenv("MEDPORT_ALLOWED_HOSTS", "tunnel.example, other.example")
    hosts = allowed_hosts("127.0.0.2", "https://Public.Example:8443/")
    assert {"127.0.0.2", "public.example", "tunnel.example", "other.example", "localhost"} <= hosts
    assert "evil.example" not in hosts


@pytest.fixture(scope="module")
def emu():
    # bound to another loopback address, so that `--host`'s value is a name only this test's server has
    with running_emulator(Settings(), host="127.0.0.2") as h:
        yield h


def test_the_emulator_refuses_a_foreign_host_with_an_operation_outcome(emu):
    c = admin_client(emu)
    created = c.create({"resourceType": "Patient", "name": [{"family": "Rebind"}]})
    url = emu.base_url + "fhir/R4/Patient"
    for host in FOREIGN:
        r = c.http.get(url, headers={"Host": host}, timeout=10)
        assert r.status_code == 421, (host, r.text)
        oo = r.json()
        assert oo["resourceType"] == "OperationOutcome" and "Misdirected" in oo["issue"][0]["details"]["text"]
        assert "Rebind" not in r.text
        # nor a write: the request is refused before any route runs
        r = c.http.post(
            url,
            json={"resourceType": "Patient", "name": [{"family": "Forged"}]},
            headers={"Host": host, "Content-Type": "application/fhir+json"},
            timeout=10,
        )
        assert r.status_code == 421
    # the token endpoint and the developer API too
    r = requests.post(
        emu.base_url + "oauth2/token",
        headers={"Host": "evil.example"},
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": emu.admin_client_id,
            "client_secret": emu.admin_client_secret,
        },
    )
    assert r.status_code == 421 and "access_token" not in r.text
    assert (
        requests.get(emu.base_url + "_emulator/health", headers={"Host": "evil.example"}, timeout=10).status_code == 421
    )
    assert not c.search("Patient", {"family": "Forged"})
    port = emu.port
    for host in ("127.0.0.2", f"127.0.0.2:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        r = c.http.get(url, params={"_id": created["id"]}, headers={"Host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)


def test_bot_callbacks_pass_the_check(emu):
    """A bot's MedplumClient calls back through the internal listener (127.0.0.1)."""
    c = admin_client(emu)
    bot = c.create_bot(
        "host-check-callback",
        "exports.handler = async (medplum) => (await medplum.searchResources('Patient', { _count: '1' })).length;",
    )
    r = c.execute(bot["id"], {})
    assert r.status_code == 200 and r.text == "1", r.text


def test_the_fake_refuses_a_foreign_host_with_metriports_error_body():
    fake = start_fake(FakeSettings(api_key="host-check-key", delay_s=0.01), "127.0.0.2", 0)
    try:
        key = {"x-api-key": fake.api_key}
        url = fake.base_url + "/medical/v1/patient"
        for host in FOREIGN:
            r = requests.get(url, headers={**key, "Host": host}, timeout=10)
            assert r.status_code == 421, (host, r.text)
            body = r.json()
            assert body["status"] == 421 and body["name"] == "Misdirected Request" and "Misdirected" in body["detail"]
            r = requests.get(fake.base_url + "/_fake/state", headers={**key, "Host": host}, timeout=10)
            assert r.status_code == 421 and "facilityId" not in r.text
        port = fake.base_url.rsplit(":", 1)[1]
        for host in (f"127.0.0.2:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert requests.get(url, headers={**key, "Host": host}, timeout=10).status_code == 200, host
    finally:
        fake.close()
