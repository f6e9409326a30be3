"""`medport deploy` against the emulator: first deploy, idempotent redeploy, config change, bad
credentials, injected server errors (transient and persistent, and an error OperationOutcome in a 200)."""

import json
import re

import pytest
from click.testing import CliRunner

from medport.emulator.medplum.server import start
from medport.emulator.medplum.settings import Settings
from medport.generator.generation.config import validate_data
from medport.generator.generation.manifest import POLICY_OF_MEMBER
from medport.generator.remote.deploy import Deployer, deploy_command
from medport.generator.remote.medplum_http import MedplumError, MedplumHttp
from tests.paths import ROOT


class Faults:
    """WSGI middleware injecting failures in front of the emulator (the requests still cross real HTTP)."""

    def __init__(self, app):
        self.app = app
        self.rules = []  # (method, path regex, status, remaining count, body)
        self.seen = []

    def add(self, method, pattern, status, count=1, body=None, after=False):
        """`after`: the request is processed first and its answer replaced (a gateway that lost the answer)."""
        self.rules.append([method, re.compile(pattern), status, count, body, after])

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        self.seen.append((method, path))
        for rule in self.rules:
            if rule[0] == method and rule[1].search(path) and rule[3] > 0:
                rule[3] -= 1
                if rule[5]:
                    for _ in self.app(environ, lambda *a, **k: None):
                        pass
                body = json.dumps(
                    rule[4]
                    or {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "exception", "details": {"text": "injected failure"}}],
                    }
                ).encode()
                start_response(
                    f"{rule[2]} Injected",
                    [("Content-Type", "application/fhir+json"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)


@pytest.fixture
def emu():
    h = start(Settings(db_path=None))
    h.faults = Faults(h.app.wsgi_app)
    h.app.wsgi_app = h.faults
    yield h
    h.close()


def deployer(h, cfg, **kw):
    http = MedplumHttp(h.base_url, h.admin_client_id, h.admin_client_secret, backoff_s=0.01)
    return Deployer(cfg, http, **kw)


def statuses(result):
    return {(c.kind, c.name): c.status for c in result.changes}


def test_first_deploy_creates_everything_then_redeploy_is_unchanged(emu):
    cfg = validate_data({})
    first = deployer(emu, cfg).run()
    st = statuses(first)
    assert set(st.values()) == {"created"}, st
    # one Subscription per interaction (create, update) for each bot: they fire alike on every Medplum version
    # (the patient bot's Patients, the webhook bot's Tasks, the contribution bot's finished Encounters)
    assert len([k for k in st if k[0] == "Bot"]) == 3 and len([k for k in st if k[0] == "Subscription"]) == 6
    assert first.client_secret and first.webhook_url.endswith(f"fhir/R4/Bot/{first.bot_ids['webhook_bot']}/$execute")
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    # the bots have their code, their own memberships and policies; the subscription points at the bot
    for key, bot_id in first.bot_ids.items():
        bot = admin.fhir("read", "GET", f"Bot/{bot_id}")
        assert bot["executableCode"]["url"].startswith("Binary/") and bot["sourceCode"]["url"].startswith("Binary/")
        m = admin.fhir("m", "GET", f"ProjectMembership?profile=Bot/{bot_id}")["entry"][0]["resource"]
        policy = admin.fhir("p", "GET", m["accessPolicy"]["reference"])
        assert policy["meta"]["tag"][0]["code"] == POLICY_OF_MEMBER[key]
    subs = admin.fhir("s", "GET", "Subscription")["entry"]
    assert {s["resource"]["channel"]["endpoint"] for s in subs} >= {
        f"Bot/{first.bot_ids['patient_bot']}",
        f"Bot/{first.bot_ids['contribution']}",
    }
    second = deployer(emu, cfg).run()
    assert set(statuses(second).values()) == {"unchanged"}, statuses(second)
    assert second.client_secret is None, "an existing client's secret is never shown again"
    writes = lambda: [
        s for s in emu.faults.seen if s[0] in ("POST", "PUT", "PATCH", "DELETE") and "/oauth2/" not in s[1]
    ]
    before = len(writes())
    deployer(emu, cfg).run()
    assert len(writes()) == before, "a redeploy of an unchanged config wrote to the server"


def test_config_change_updates_only_what_changed(emu):
    deployer(emu, validate_data({})).run()
    changed = deployer(emu, validate_data({"patient_bot": {"timeout": 20, "interactions": ["create"]}})).run()
    st = statuses(changed)
    assert st[("Bot", "metriport-patient-bot")] == "updated"
    assert st[("Subscription", "patient-subscription")] == "unchanged"  # still the create subscription
    assert st[("Subscription", "patient-subscription-update")] == "deleted"  # no longer wanted
    assert st[("Bot", "metriport-webhook-bot")] == "unchanged"
    assert st[("AccessPolicy", "webhook-bot-policy")] == "unchanged"
    narrowed = deployer(
        emu,
        validate_data(
            {"patient_bot": {"timeout": 20, "interactions": ["create"]}, "webhook_bot": {"resources": ["Condition"]}}
        ),
    ).run()
    st = statuses(narrowed)
    assert st[("AccessPolicy", "webhook-bot-policy")] == "updated"
    assert st[("Bot", "metriport-webhook-bot")] == "updated", "the bot's code embeds the allow-list"


def test_dry_run_changes_nothing(emu):
    plan = deployer(emu, validate_data({}), dry_run=True).run()
    assert set(statuses(plan).values()) == {"create"}
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    assert admin.fhir("b", "GET", "Bot?_summary=count")["total"] == 0


def test_transient_server_errors_are_retried(emu):
    emu.faults.add("POST", r"/\$deploy$", 503, count=2)
    emu.faults.add("GET", r"/fhir/R4/AccessPolicy$", 429, count=1)
    retries = []
    http = MedplumHttp(
        emu.base_url, emu.admin_client_id, emu.admin_client_secret, backoff_s=0.01, on_retry=retries.append
    )
    result = Deployer(validate_data({}), http).run()
    assert set(statuses(result).values()) == {"created"}
    assert len(retries) == 3 and "HTTP 503" in retries[-1]


def test_a_create_whose_answer_was_lost_is_not_repeated(emu):
    """A gateway answers 502 after the server created the resource: the create is not sent again blindly (base:
    one deploy made two webhook Bots); the deploy ends with one of each, and a redeploy changes nothing."""
    emu.faults.add("POST", r"/admin/projects/[^/]+/bot$", 502, count=2, after=True)  # both bots
    emu.faults.add("POST", r"/admin/projects/[^/]+/client$", 502, count=1, after=True)
    emu.faults.add("POST", r"/fhir/R4/AccessPolicy$", 504, count=1, after=True)
    emu.faults.add("POST", r"/fhir/R4/Subscription$", 500, count=1, after=True)
    result = deployer(emu, validate_data({})).run()
    assert set(statuses(result).values()) == {"created"}
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    count = lambda rt: admin.fhir("count", "GET", f"{rt}?_summary=count")["total"]
    cfg = validate_data({})
    kinds = [kind for kind, _ in statuses(result)]
    for rt in ("Bot", "Subscription", "AccessPolicy"):
        assert count(rt) == kinds.count(rt), rt
    from medport.generator.generation.manifest import client_application

    name = client_application(cfg)["name"]
    assert len(admin.fhir("c", "GET", "ClientApplication", params={"name": name}).get("entry", [])) == 1
    assert {
        m["resource"]["profile"]["reference"] for m in admin.fhir("m", "GET", "ProjectMembership?_count=100")["entry"]
    } >= {f"Bot/{i}" for i in result.bot_ids.values()} | {f"ClientApplication/{result.client_id}"}
    assert set(statuses(deployer(emu, cfg).run()).values()) == {"unchanged"}


def test_a_non_idempotent_post_is_not_repeated_after_a_5xx(emu):
    """The Binary holding a bot's source is a plain create: answered 502 after it was stored, the deploy stops
    saying it may have been applied (a repeat would store it twice) instead of sending it again."""
    emu.faults.add("POST", r"/fhir/R4/Binary$", 502, count=1, after=True)
    with pytest.raises(MedplumError) as exc:
        deployer(emu, validate_data({})).run()
    assert exc.value.maybe_applied and "may have done it" in str(exc.value) and "upload source" in str(exc.value)
    assert sum(1 for m, p in emu.faults.seen if m == "POST" and p.endswith("/Binary")) == 1


def test_persistent_server_error_fails_naming_the_step(emu):
    emu.faults.add("POST", r"/\$deploy$", 500, count=100)
    with pytest.raises(MedplumError) as exc:
        deployer(emu, validate_data({})).run()
    assert "$deploy" in str(exc.value) and "injected failure" in str(exc.value)


def test_error_outcome_inside_a_200_is_a_failure(emu):
    emu.faults.add(
        "POST",
        r"/admin/projects/[^/]+/bot$",
        200,
        count=1,
        body={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "details": {"text": "Bot name is required"}}],
        },
    )
    with pytest.raises(MedplumError) as exc:
        deployer(emu, validate_data({})).run()
    assert "create" in exc.value.step and "Bot name is required" in str(exc.value)


def test_cli_deploy_prints_plan_changes_and_webhook_url_once(emu, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {
        "MEDPLUM_BASE_URL": emu.base_url,
        "MEDPLUM_CLIENT_ID": emu.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
        "METRIPORT_API_KEY": "key-should-never-print",
        "METRIPORT_WEBHOOK_KEY": "whk-should-never-print",
    }
    runner = CliRunner()
    dry = runner.invoke(deploy_command, ["--dry-run"], env=env)
    assert dry.exit_code == 0 and "dry run: nothing was changed" in dry.output and "create" in dry.output
    first = runner.invoke(deploy_command, ["--set-secrets"], env=env)
    assert first.exit_code == 0, first.output
    assert "created" in first.output and "shown this once" in first.output
    assert "key-should-never-print" not in first.output and "whk-should-never-print" not in first.output
    second = runner.invoke(deploy_command, ["--set-secrets"], env=env)
    assert second.exit_code == 0 and "created" not in second.output and "updated" not in second.output
    assert "<client-secret>" in second.output
    bad = runner.invoke(deploy_command, [], env={**env, "MEDPLUM_CLIENT_SECRET": "wrong"})
    assert bad.exit_code == 1 and "deploy failed at login" in bad.output
    missing = runner.invoke(deploy_command, [], env={"MEDPLUM_BASE_URL": emu.base_url})
    assert missing.exit_code == 1 and "MEDPLUM_CLIENT_ID" in missing.output


def test_medplum_cli_deploys_the_generated_bots(emu, tmp_path, monkeypatch):
    """The documented path for teams that use the Medplum CLI: put the server's bot ids in medport.toml,
    `medport generate`, then `medplum bot deploy <name>` from bots/ with the generated medplum.config.json."""
    import subprocess

    from medport.emulator.node import node_binary, node_modules_dir
    from medport.generator.cli.main import main

    first = deployer(emu, validate_data({})).run()
    (tmp_path / "medport.toml").write_text(
        f'[patient_bot]\nid = "{first.bot_ids["patient_bot"]}"\n[webhook_bot]\nid = "{first.bot_ids["webhook_bot"]}"\n'
        f'[contribution]\nid = "{first.bot_ids["contribution"]}"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["generate"]).exit_code == 0
    cli_config = json.loads((tmp_path / "bots" / "medplum.config.json").read_text())
    assert {b["id"] for b in cli_config["bots"]} == set(first.bot_ids.values())
    cli = node_modules_dir() / "@medplum" / "cli" / "dist" / "cjs" / "index.cjs"
    res = subprocess.run(
        [node_binary(), str(cli), "bot", "deploy", "metriport-patient-bot", "--base-url", emu.base_url],
        cwd=tmp_path / "bots",
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "MEDPLUM_CLIENT_ID": emu.admin_client_id,
            "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
        },
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Deploy result: All OK" in res.stdout
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    bot = admin.fhir("read", "GET", f"Bot/{first.bot_ids['patient_bot']}")
    assert bot["executableCode"]["title"] == "metriport-patient-bot.js"
    out = admin.fhir(
        "execute",
        "POST",
        f"Bot/{bot['id']}/$execute",
        json_body={"deletedResource": {"resourceType": "Patient", "id": "x"}},
    )
    assert out == {"status": "ignored", "reason": "deleted"}


def medplum_cli(h, cwd, *args):
    """Medplum's own CLI (node_modules/@medplum/cli) with the emulator's admin client in the environment."""
    import subprocess

    from medport.emulator.node import node_binary, node_modules_dir

    cli = node_modules_dir() / "@medplum" / "cli" / "dist" / "cjs" / "index.cjs"
    return subprocess.run(
        [node_binary(), str(cli), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(cwd),
            "MEDPLUM_BASE_URL": h.base_url,
            "MEDPLUM_CLIENT_ID": h.admin_client_id,
            "MEDPLUM_CLIENT_SECRET": h.admin_client_secret,
        },
    )


def test_medport_deploy_writes_the_bot_ids_where_medplums_cli_reads_them(emu, tmp_path, monkeypatch):
    """Before: `medport deploy` created Bots with server-assigned ids it neither printed nor wrote back, while
    bots/medplum.config.json named derived ids — `medplum bot deploy` failed on medport's output ("1 bot(s) had
    failures"). Now deploy prints the ids and records them (bots/medport.deployed.json, medplum.config.json),
    `generate` keeps medplum.config.json in step, and Medplum's CLI deploys to the Bots medport created."""
    from medport.generator.cli.main import main
    from medport.generator.generation import deployed

    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {
        "MEDPLUM_BASE_URL": emu.base_url,
        "MEDPLUM_CLIENT_ID": emu.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
    }
    assert CliRunner().invoke(main, ["generate"]).exit_code == 0
    before = CliRunner().invoke(main, ["deploy", "--no-write-ids"], env=env)
    assert before.exit_code == 0, before.output
    res = medplum_cli(emu, tmp_path / "bots", "bot", "deploy", "metriport-patient-bot")
    assert res.returncode != 0 and "had failures" in res.stdout + res.stderr  # the defect, as it was

    out = CliRunner().invoke(main, ["deploy"], env=env)
    assert out.exit_code == 0, out.output
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    on_server = {b["resource"]["name"]: b["resource"]["id"] for b in admin.fhir("b", "GET", "Bot")["entry"]}
    for name, bot_id in on_server.items():
        assert re.search(rf"{name}\s+Bot/{bot_id}", out.output), out.output  # printed
    cli_config = json.loads((tmp_path / "bots" / "medplum.config.json").read_text())
    assert {b["name"]: b["id"] for b in cli_config["bots"]} == on_server
    assert deployed.read(tmp_path / "bots")["bots"] == on_server
    assert CliRunner().invoke(main, ["generate", "--check"]).exit_code == 0  # generate agrees with deploy
    again = CliRunner().invoke(main, ["deploy"], env=env)
    assert again.exit_code == 0 and "created" not in again.output and "updated" not in again.output

    for name in on_server:
        res = medplum_cli(emu, tmp_path / "bots", "bot", "deploy", name)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Deploy result: All OK" in res.stdout
    bot = admin.fhir("read", "GET", f"Bot/{on_server['metriport-patient-bot']}")
    assert bot["executableCode"]["title"] == "metriport-patient-bot.js"  # Medplum's CLI deployed it
    assert admin.fhir(
        "x", "POST", f"Bot/{bot['id']}/$execute", json_body={"deletedResource": {"resourceType": "Patient", "id": "x"}}
    ) == {"status": "ignored", "reason": "deleted"}


def test_a_pinned_bot_id_wins_and_a_mismatch_is_warned(emu, tmp_path, monkeypatch):
    from medport.generator.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text('[patient_bot]\nid = "pinned-but-wrong"\n')
    env = {
        "MEDPLUM_BASE_URL": emu.base_url,
        "MEDPLUM_CLIENT_ID": emu.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
    }
    out = CliRunner().invoke(main, ["deploy"], env=env)
    assert out.exit_code == 0 and "patient_bot.id = 'pinned-but-wrong'" in out.output, out.output
    ids = {b["name"]: b["id"] for b in json.loads((tmp_path / "bots" / "medplum.config.json").read_text())["bots"]}
    assert ids["metriport-patient-bot"] == "pinned-but-wrong" and ids["metriport-webhook-bot"] != "pinned-but-wrong"


def _bots(h) -> int:
    admin = MedplumHttp(h.base_url, h.admin_client_id, h.admin_client_secret)
    return admin.fhir("b", "GET", "Bot?_summary=count")["total"]


def test_set_secrets_checks_every_input_before_changing_anything(emu, tmp_path, monkeypatch):
    """Issue 13: `deploy --set-secrets` without METRIPORT_API_KEY used to apply everything, then fail at the
    secrets, leaving bots live without their keys."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {
        "MEDPLUM_BASE_URL": emu.base_url,
        "MEDPLUM_CLIENT_ID": emu.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
        "METRIPORT_API_KEY": None,
        "METRIPORT_WEBHOOK_KEY": "whk",
    }
    runner = CliRunner()
    r = runner.invoke(deploy_command, ["--set-secrets"], env=env)
    assert r.exit_code == 1 and "METRIPORT_API_KEY" in r.output and "nothing was changed" in r.output, r.output
    assert "Traceback" not in r.output and _bots(emu) == 0
    assert not [p for m, p in emu.faults.seen if m != "GET" and "oauth2" not in p], "a write happened before the check"
    # every missing input named at once
    both = runner.invoke(
        deploy_command, ["--set-secrets"], env={**env, "MEDPLUM_CLIENT_SECRET": None, "METRIPORT_WEBHOOK_KEY": None}
    )
    assert all(n in both.output for n in ("MEDPLUM_CLIENT_SECRET", "METRIPORT_API_KEY", "METRIPORT_WEBHOOK_KEY"))
    # the server not answering, and a base URL that is no URL: caught before any change
    down = runner.invoke(
        deploy_command, ["--set-secrets", "--base-url", "http://127.0.0.1:9/"], env={**env, "METRIPORT_API_KEY": "k"}
    )
    assert down.exit_code == 1 and "cannot reach" in down.output and "nothing was changed" in down.output
    bad_url = runner.invoke(
        deploy_command, ["--set-secrets"], env={**env, "METRIPORT_API_KEY": "k", "METRIPORT_BASE_URL": "sandbox"}
    )
    assert bad_url.exit_code == 1 and "METRIPORT_BASE_URL must be an http(s) URL" in bad_url.output
    assert _bots(emu) == 0


def test_a_client_that_is_not_project_admin_is_refused_before_any_change(emu):
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    client = admin.request(
        "create client", "POST", "admin/projects/medport-project/client", json_body={"name": "not an admin"}
    )
    http = MedplumHttp(emu.base_url, client["id"], client["secret"], backoff_s=0.01)
    with pytest.raises(MedplumError) as exc:
        Deployer(
            validate_data({}), http, set_secrets=True, secrets={"METRIPORT_API_KEY": "k", "METRIPORT_WEBHOOK_KEY": "w"}
        ).run()
    assert "cannot administer project" in str(exc.value), exc.value
    assert _bots(emu) == 0


def test_the_webhook_bot_gets_the_sweep_schedule_and_missing_project_features_are_warned(emu):
    cfg = validate_data({"webhook_bot": {"sweep_cron": "*/2 * * * *"}})
    result = deployer(emu, cfg).run()
    assert result.warnings == []  # the emulator's Project has the bots and cron features
    admin = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret)
    bot = admin.fhir("read", "GET", f"Bot/{result.bot_ids['webhook_bot']}")
    assert bot["cronString"] == "*/2 * * * *"
    assert "cronString" not in admin.fhir("read", "GET", f"Bot/{result.bot_ids['patient_bot']}")
    project = admin.fhir("read", "GET", f"Project/{result.project_id}")
    admin.fhir("update", "PUT", f"Project/{project['id']}", json_body={**project, "features": ["bots"]})
    again = deployer(emu, cfg).run()
    assert len(again.warnings) == 1 and "lacks the feature 'cron'" in again.warnings[0]
    assert "medport replay --failed" in again.warnings[0]
    # no sweep configured: nothing to warn about, and the schedule is gone
    none = deployer(emu, validate_data({"webhook_bot": {"sweep_cron": ""}})).run()
    assert none.warnings == []
    assert "cronString" not in admin.fhir("read", "GET", f"Bot/{result.bot_ids['webhook_bot']}")


# ------------------------------------------------------------------------------------------- Medplum releases
@pytest.fixture
def emu_5126():
    """The emulator answering as Medplum 5.1.26, whose Bot definition has no rawBody (definitions 5.1.x
    profiles-medplum.json): a Bot write naming it is refused like the real server refuses it."""
    h = start(Settings(db_path=None, medplum_version="5.1.26"))
    h.faults = Faults(h.app.wsgi_app)
    h.app.wsgi_app = h.faults
    yield h
    h.close()


def test_deploy_to_a_release_without_bot_rawbody_leaves_it_out_and_stays_idempotent(emu_5126, tmp_path, monkeypatch):
    """Before, `medport deploy` stopped halfway on Medplum 5.1.26: policies and bots created, then 400
    `Invalid additional property "rawBody"` on the webhook bot. It reads the release (GET /healthcheck, server
    healthcheck.ts) first and writes only what that release accepts."""
    admin = MedplumHttp(emu_5126.base_url, emu_5126.admin_client_id, emu_5126.admin_client_secret)
    with pytest.raises(MedplumError) as refused:
        admin.fhir("bot", "POST", "Bot", json_body={"resourceType": "Bot", "name": "x", "rawBody": True})
    assert refused.value.status == 400 and 'Invalid additional property "rawBody"' in str(refused.value)
    cfg = validate_data({})
    notes: list[str] = []
    first = deployer(emu_5126, cfg, echo=notes.append).run()
    assert set(statuses(first).values()) == {"created"}, statuses(first)
    assert (first.medplum_version, first.omitted) == ("5.1.26", ["rawBody"])
    assert any(
        "Medplum 5.1.26 has no Bot.rawBody: left out" in n and "JSON.stringify(event.input)" in n for n in notes
    ), notes
    bot = admin.fhir("read", "GET", f"Bot/{first.bot_ids['webhook_bot']}")
    assert "rawBody" not in bot and bot["cronString"]
    assert set(statuses(deployer(emu_5126, cfg).run()).values()) == {"unchanged"}
    # the CLI says it in one line per note, and succeeds
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {
        "MEDPLUM_BASE_URL": emu_5126.base_url,
        "MEDPLUM_CLIENT_ID": emu_5126.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu_5126.admin_client_secret,
    }
    r = CliRunner().invoke(deploy_command, [], env=env)
    assert r.exit_code == 0 and "Medplum 5.1.26 has no Bot.rawBody" in r.output, r.output


def test_a_server_that_does_not_say_its_version_gets_the_bot_again_without_what_it_refuses(emu_5126):
    """/healthcheck without a version (a proxy in front of it): the newest shape is written; the element the
    server refuses as an additional property (core typeschema/validation.ts) is dropped and the write made again."""
    emu_5126.faults.add("GET", r"^/healthcheck$", 404, count=10, body={"error": "not here"})
    notes: list[str] = []
    result = deployer(emu_5126, validate_data({}), echo=notes.append).run()
    assert set(statuses(result).values()) == {"created"}
    assert result.medplum_version == "" and result.omitted == ["rawBody"]
    assert any("did not say the server's version" in n for n in notes), notes


def test_a_server_older_than_the_oldest_supported_release_is_refused_before_any_write(emu, tmp_path, monkeypatch):
    emu.faults.add("GET", r"^/healthcheck$", 200, count=10, body={"ok": True, "version": "4.5.2-515c26d74"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {
        "MEDPLUM_BASE_URL": emu.base_url,
        "MEDPLUM_CLIENT_ID": emu.admin_client_id,
        "MEDPLUM_CLIENT_SECRET": emu.admin_client_secret,
    }
    r = CliRunner().invoke(deploy_command, [], env=env)
    assert r.exit_code == 1
    line = [ln for ln in r.output.splitlines() if "deploy failed" in ln]
    assert line == [
        "Error: deploy failed at check the server's version: Medplum 4.5.2-515c26d74 is older than "
        "5.0.0, the oldest release medport supports: upgrade the server to Medplum 5.0.0 or newer — "
        "nothing was changed"
    ], r.output
    assert not [s for s in emu.faults.seen if s[0] != "GET"], "something was written"


def test_a_logged_in_client_deploys_again(emu):
    """Before, a MedplumHttp reused for a second deploy logged in again with its bearer token in the session: the
    token endpoint refuses a non-Basic Authorization header (server oauth/token.ts getClientIdAndSecret, 400
    "Invalid authorization header"). The token now goes with each request, never with a login."""
    http = MedplumHttp(emu.base_url, emu.admin_client_id, emu.admin_client_secret, backoff_s=0.01)
    cfg = validate_data({})
    Deployer(cfg, http).run()
    assert set(statuses(Deployer(cfg, http).run()).values()) == {"unchanged"}
    token_posts = [s for s in emu.faults.seen if s == ("POST", "/oauth2/token")]
    assert len(token_posts) == 2
    # the emulator refuses a bearer token at the token endpoint the way Medplum does
    import requests

    r = requests.post(
        emu.base_url + "oauth2/token",
        headers={"Authorization": f"Bearer {http.token}"},
        data={
            "grant_type": "client_credentials",
            "client_id": emu.admin_client_id,
            "client_secret": emu.admin_client_secret,
        },
        timeout=10,
    )
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_request", "error_description": "Invalid authorization header"},
    )
