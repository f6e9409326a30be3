"""The generated bots on every Medplum release medport supports, end to end over real HTTP.

The emulator set to a release builds the vmcontext sandbox that release's `packages/server/src/bots/vmcontext.ts`
builds: Medplum 5.1.26 gives the bot a MockConsole with only `log()` (util/console.ts), node-fetch v2 as `fetch`
(a Node Readable body, no getReader()), `process` and no stream classes; 5.0.0 has no TextDecoder either; the newest
source has the whole console, the native fetch and the WHATWG stream classes. Before the bots were made
release-proof, the 5.1.26 sandbox imported 0 resources (the webhook bot's `console.warn` threw, then the streamed
download called `res.body.getReader()`); now every release imports every resource.
Releases without `Bot.rawBody` (before 5.2) make `medport deploy` leave it out, and the webhook bot still verifies
every signature (over JSON.stringify(event.input)): the messages it stored are the ones it processed.
"""

from __future__ import annotations

import tomllib

import pytest
import requests

from medport.emulator.medplum.releases import NEWEST, OLDEST
from medport.generator.generation.config import validate_data
from medport.generator.generation.render import MESSAGE_LEASE_EXT
from medport.generator.local.flow import create_facility_org, create_patient, runs
from medport.generator.local.scenarios import CRASH_DATASET, _crash_dataset, _expected_ids, check_exactly_once
from medport.generator.local.stack import start_stack
from medport.generator.remote.replay import requeue_task
from tests.e2e.test_faults import consolidated_task, wait_for
from tests.e2e.test_large_records import metriport_id
from tests.paths import ROOT

pytestmark = pytest.mark.slow

RESOURCES = 3_000


@pytest.mark.parametrize("version", [OLDEST, "5.1.26", NEWEST])
def test_the_bots_import_every_resource_of_a_3000_resource_bundle_on_each_release(version):
    # the legacy flow: one consolidated-data message whose bundle is streamed (the default network-query flow
    # streams the record the same way; `medport check` runs it on the oldest and the newest release)
    data = tomllib.loads((ROOT / "medport.toml").read_text("utf-8"))
    data["patient_bot"]["flow"] = "document-query"
    cfg = validate_data(data, "<test>")
    with start_stack(cfg, medplum_version=version, metriport_delay_s=0.02) as stack:
        health = requests.get(stack.base_url + "healthcheck", timeout=10).json()
        assert health["version"].startswith(version + "-")
        webhook_bot = stack.admin.fhir("bot", "GET", f"Bot/{stack.deploy.bot_ids['webhook_bot']}")
        assert ("rawBody" in webhook_bot) == (version == NEWEST)
        _crash_dataset(stack, RESOURCES)
        org = create_facility_org(stack)
        p = create_patient(stack, CRASH_DATASET, org["id"])
        done = wait_for(
            lambda: (t := consolidated_task(stack, p["id"])) and t["status"] in ("completed", "failed") and t,
            180,
            "the import",
        )
        assert done["status"] == "completed", done.get("statusReason")
        failed = [(r["bot_name"], r.get("error")) for r in runs(stack, 500) if r["outcome"] != "success"]
        assert not failed, failed
        expected = _expected_ids(stack, metriport_id(stack, cfg, p["id"]))
        counts = check_exactly_once(stack, expected)
        assert sum(counts.values()) > RESOURCES * 0.9  # the bundle's resources of the imported types
        # `medport replay --failed --take-over` on a message a dead run holds under its lease: $execute
        # {medportRequeue, takeOver} reaches the bot as text with Bot.rawBody, as parsed JSON before 5.2
        _lease_held_by_a_dead_run(stack, done)
        out = requeue_task(stack.admin, done, stack.deploy.bot_ids["webhook_bot"], take_over=True)
        assert out["requeued"] is True and out["was"] == "in-progress", out
        again = wait_for(
            lambda: (
                (t := stack.admin.fhir("t", "GET", f"Task/{done['id']}"))["status"] in ("completed", "failed") and t
            ),
            180,
            "the requeued message",
        )
        assert again["status"] == "completed", again.get("statusReason")
        assert check_exactly_once(stack, expected) == counts


def _lease_held_by_a_dead_run(stack, task: dict) -> None:
    """The message back in progress under a lease with minutes left, written as the bot (a run that died)."""
    held = {
        **task,
        "status": "in-progress",
        "extension": [
            *(e for e in task.get("extension", []) if e.get("url") != MESSAGE_LEASE_EXT),
            {"url": MESSAGE_LEASE_EXT, "valueDateTime": "2999-01-01T00:00:00.000Z"},
        ],
    }
    stack.emulator.state.repo.update(
        held,
        if_match=task["meta"]["versionId"],
        project=task["meta"].get("project"),
        author=task["meta"]["author"]["reference"],
    )
