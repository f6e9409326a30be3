"""cron.py: Medplum's cron bots (server workers/cron.ts): the schedule (cronTiming first, else a valid
5-field cronString), the `cron` Project feature, the Bot itself as input — and the developer API that
runs them now."""

import datetime as dt

import pytest

from medport.emulator.medplum.cron import CronSpec, cron_string_for_bot, is_valid_cron, timing_to_cron
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import admin_client, running_emulator


@pytest.mark.parametrize(
    "expr,when,hit",
    [
        ("* * * * *", dt.datetime(2026, 1, 5, 10, 7), True),
        ("*/5 * * * *", dt.datetime(2026, 1, 5, 10, 10), True),
        ("*/5 * * * *", dt.datetime(2026, 1, 5, 10, 11), False),
        ("0 */12 * * *", dt.datetime(2026, 1, 5, 12, 0), True),
        ("0 */12 * * *", dt.datetime(2026, 1, 5, 13, 0), False),
        ("30 9 * * 1-5", dt.datetime(2026, 1, 5, 9, 30), True),  # a Monday
        ("30 9 * * 1-5", dt.datetime(2026, 1, 4, 9, 30), False),  # a Sunday
        ("0 0 * * 0", dt.datetime(2026, 1, 4, 0, 0), True),  # 0 = Sunday (7 is refused, as by Medplum)
        ("0 0 1 * 1", dt.datetime(2026, 1, 5, 0, 0), True),  # day-of-month OR day-of-week
        ("0 0 1 1 *", dt.datetime(2026, 1, 1, 0, 0), True),
        ("5/20 * * * *", dt.datetime(2026, 1, 1, 0, 45), True),  # from 5, every 20
        ("15,45 1-3 * * *", dt.datetime(2026, 1, 1, 2, 45), True),
    ],
)
def test_cron_matching(expr, when, hit):
    assert CronSpec(expr).matches(when) is hit


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "a * * * *",
        "*/0 * * * *",
        "5-1 * * * *",
        None,
        5,
        "30 9 * * mon-fri",
        "0 0 * * 7",
        "0 0 1 jan *",
    ],
)  # names and 7: refused by Medplum's cron-validator
def test_invalid_cron_strings(expr):
    assert not is_valid_cron(expr)


def test_timing_to_cron_like_medplum():
    assert timing_to_cron({"repeat": {"period": 1}}) == "0 */24 * * *"
    assert timing_to_cron({"repeat": {"period": 2, "dayOfWeek": ["mon", "wed"]}}) == "0 */12 * * 1,3"
    assert timing_to_cron({"repeat": {"period": 30}}) == "*/48 * * * *"
    assert timing_to_cron({"code": {"text": "x"}}) is None
    assert cron_string_for_bot({"cronTiming": {"repeat": {"period": 4}}, "cronString": "* * * * *"}) == "0 */6 * * *"
    assert cron_string_for_bot({"cronString": "*/5 * * * *"}) == "*/5 * * * *"
    assert cron_string_for_bot({"cronString": "nonsense"}) is None


def test_next_after():
    assert CronSpec("*/15 * * * *").next_after(dt.datetime(2026, 1, 1, 10, 7, 30)) == dt.datetime(2026, 1, 1, 10, 15)


def cron_bot(c, name, cron):
    bot = c.create_bot(name, CODE)
    return c.update({**c.read("Bot", bot["id"]), "cronString": cron})


CODE = "exports.handler = async (medplum, event) => ({ type: event.input.resourceType, id: event.input.id, ct: event.contentType });"


def test_cron_bots_run_now_with_the_bot_as_input_only_with_the_cron_feature():
    with running_emulator(Settings(cron=False)) as emu:
        c = admin_client(emu)
        bot = cron_bot(c, "cron-bot", "*/5 * * * *")
        c.create_bot("plain-bot", CODE)
        listed = c.request("GET", "_emulator/cron").json()["bots"]
        assert [(b["name"], b["cron"], b["enabled"]) for b in listed] == [("cron-bot", "*/5 * * * *", True)]
        r = c.request("POST", "_emulator/cron/run")
        assert r.status_code == 200, r.text
        runs = r.json()["runs"]
        assert len(runs) == 1 and runs[0]["success"], runs
        assert runs[0]["returned"] == {"type": "Bot", "id": bot["id"], "ct": "application/fhir+json"}
        assert [x["trigger"] for x in c.runs(bot=bot["id"])] == ["cron"]
        events = c.search("AuditEvent", {"entity": f"Bot/{bot['id']}"})
        assert events and events[0]["outcome"] == "0"
        # without the Project's cron feature nothing runs, as on Medplum
        project = c.read("Project", "medport-project")
        c.update({**project, "features": ["bots"]})
        assert c.request("GET", "_emulator/cron").json()["bots"][0]["enabled"] is False
        assert c.request("POST", "_emulator/cron/run").status_code == 400


def test_the_schedule_fires_at_matching_minutes():
    with running_emulator(Settings(cron=False)) as emu:
        c = admin_client(emu)
        cron_bot(c, "every-ten", "*/10 * * * *")
        assert emu.state.cron.tick(dt.datetime(2026, 1, 1, 10, 3)) == 0
        assert emu.state.cron.tick(dt.datetime(2026, 1, 1, 10, 20)) == 1
