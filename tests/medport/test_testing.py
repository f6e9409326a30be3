"""medport.testing outside pytest fixtures: the stack as a context manager, several Patients per wait,
per-Patient counts, faults restored on exit, the fake's development key."""

import pytest

from medport import testing
from tests.paths import ROOT

pytestmark = pytest.mark.slow


def test_stack_api(monkeypatch):
    with testing.start_stack(ROOT / "medport.toml") as stack:
        assert stack.emulator.health()["ready"] is True
        assert set(stack.bot_ids) == {"patient_bot", "webhook_bot", "contribution"}
        assert stack.fake.api_key == testing.DEV_FAKE_METRIPORT_API_KEY
        jane, kyla = stack.create_patient("Jane"), stack.create_patient("Kyla")
        result = stack.wait_for_flow(timeout=60)
        assert result.ok, result.problems
        per_patient = [stack.imported(jane), stack.imported(kyla)]
        assert all(sum(p.values()) > 0 for p in per_patient)
        assert {k: per_patient[0].get(k, 0) + per_patient[1].get(k, 0) for k in result.imported} == result.imported
        assert stack.metriport_id(jane) and stack.metriport_id(jane) != stack.metriport_id(kyla)
        before = stack.fake.get_faults()
        with stack.faults(expired_urls=True, slow_ms=5) as now:
            assert now["expired_urls"] is True
        assert stack.fake.get_faults() == before
        idle = stack.wait_for_flow(timeout=10)  # nothing new: returns once idle
        assert idle.done and idle.imported == stack.imported()
        runs = stack.runs(failed=False)
        # (the contribution bot ran for no one: nothing was written in Medplum, and imported Encounters start nothing)
        assert runs and {r["bot_name"] for r in runs} == {stack.config.patient_bot.name, stack.config.webhook_bot.name}
        assert (
            len([d for d in stack.webhooks() if d["type"].startswith("network-query.") and "first" not in d["type"]])
            == 6
        )
        assert stack.fhir.count("Patient") == 2


def test_fake_alone_honours_the_key_variable(monkeypatch):
    monkeypatch.setenv("MEDPORT_FAKE_METRIPORT_API_KEY", "my-own-key")
    with testing.start_fake_metriport() as fake:
        assert fake.api_key == "my-own-key" and fake.facility_id
        assert fake.webhooks() == []
