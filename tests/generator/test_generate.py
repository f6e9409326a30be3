"""`medport generate`: deterministic output, --check, committed bots/ in sync, packaging of templates."""

import json
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from medport.emulator.node import node_binary
from medport.generator.cli.main import main
from medport.generator.generation.config import load_config, validate_data
from medport.generator.generation.manifest import deploy_bundle
from medport.generator.generation.outputs import render_all
from tests.paths import ROOT


def run(*args, cwd=None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_rendering_is_byte_for_byte_deterministic():
    cfg = validate_data({})
    assert render_all(cfg) == render_all(validate_data({}))
    # a separate interpreter (other hash seed) renders the same bytes
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json;from medport.generator.generation.config import validate_data;"
            "from medport.generator.generation.outputs import render_all;print(json.dumps(render_all(validate_data({}))))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"},
        cwd=ROOT,
    )
    assert json.loads(out.stdout) == render_all(cfg)


def test_committed_bots_match_the_example_config():
    cfg = load_config(ROOT / "medport.toml")
    for name, text in render_all(cfg).items():
        assert (ROOT / "bots" / name).read_text("utf-8") == text, f"bots/{name} is stale: run `medport generate`"


def test_generate_then_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("init").exit_code == 0
    r = run("generate", "--check")
    assert r.exit_code == 1 and "missing: bots/medplum.config.json" in r.output
    r = run("generate")
    assert r.exit_code == 0 and "created  bots/deploy-bundle.json" in r.output
    assert run("generate", "--check").exit_code == 0
    assert "unchanged" in run("generate").output
    # a config change makes exactly the affected files stale, and --check names each
    text = (tmp_path / "medport.toml").read_text().replace('flow = "network-query"', 'flow = "consolidated"')
    (tmp_path / "medport.toml").write_text(text)
    (tmp_path / "bots" / "metriport-webhook-bot.js").write_text("// edited by hand\n")
    r = run("generate", "--check")
    assert r.exit_code == 1
    assert "stale: bots/metriport-patient-bot.js" in r.output
    assert "stale: bots/metriport-webhook-bot.js" in r.output
    assert "deploy-bundle.json" not in r.output


def test_invalid_config_fails_generate_naming_the_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medport.toml").write_text('[webhook_bot]\nresources = ["Observaton"]\n')
    r = run("generate")
    assert r.exit_code == 1 and "did you mean 'Observation'?" in r.output
    assert not (tmp_path / "bots").exists()


def test_no_config_points_to_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("generate")
    assert r.exit_code == 1 and "medport init" in r.output


def test_rendered_bots_pass_node_check(tmp_path):
    for name, text in render_all(validate_data({"medplum": {"runtime": "awslambda"}})).items():
        if name.endswith(".js"):
            (tmp_path / name).write_text(text)
            subprocess.run([node_binary(), "--check", str(tmp_path / name)], check=True)
            assert "exports.handler" in text and "module.exports =" not in text


def test_deploy_bundle_is_idempotent_batch():
    b = deploy_bundle(validate_data({}))
    # a transaction with conditional entries may have at most 8 entries (fhir-router batch.ts); this has 14
    assert b["type"] == "batch"
    methods = {e["request"]["method"] for e in b["entry"]}
    assert methods == {"PUT"}
    assert all("?" in e["request"]["url"] for e in b["entry"]), "every entry is a conditional PUT"
    kinds = [e["resource"]["resourceType"] for e in b["entry"]]
    assert kinds.count("AccessPolicy") == 4 and kinds.count("Bot") == 3 and "ClientApplication" in kinds
    client_policy = next(
        e["resource"]
        for e in b["entry"]
        if e["resource"]["resourceType"] == "AccessPolicy"
        and e["resource"]["meta"]["tag"][0]["code"] == "webhook-client-policy"
    )
    assert client_policy["resource"] == [
        {
            "resourceType": "Bot",
            "interaction": ["read"],
            "criteria": "Bot?identifier=https://medport.dev/fhir/identifiers|metriport-webhook-bot",
        }
    ]
    webhook_bot = next(e["resource"] for e in b["entry"] if e["resource"].get("name") == "metriport-webhook-bot")
    assert webhook_bot["rawBody"] is True
    sync = deploy_bundle(validate_data({"webhook_bot": {"async_processing": False}}))
    assert not any("Task?" in e["resource"].get("criteria", "") for e in sync["entry"])


def test_webhook_bot_policy_grants_exactly_the_allowed_types():
    b = deploy_bundle(validate_data({"webhook_bot": {"resources": ["Condition", "Observation"]}}))
    pol = next(
        e["resource"]
        for e in b["entry"]
        if e["resource"]["resourceType"] == "AccessPolicy"
        and e["resource"]["meta"]["tag"][0]["code"] == "webhook-bot-policy"
    )
    assert [r["resourceType"] for r in pol["resource"]] == [
        "Task",
        "Patient",
        "Binary",
        "Organization",
        "Condition",
        "Observation",
    ]
    assert "create" not in pol["resource"][3]["interaction"] and "update" not in pol["resource"][3]["interaction"]
    # Patients: updated only for a bulk patient create's links, never created; Binaries: created and read only
    assert "create" not in pol["resource"][1]["interaction"] and "update" in pol["resource"][1]["interaction"]
    assert pol["resource"][2]["interaction"] == ["read", "vread", "create"]
    docs = deploy_bundle(validate_data({"webhook_bot": {"resources": ["Condition"]}, "documents": {"store": True}}))
    pol = next(
        e["resource"]
        for e in docs["entry"]
        if e["resource"]["resourceType"] == "AccessPolicy"
        and e["resource"]["meta"]["tag"][0]["code"] == "webhook-bot-policy"
    )
    assert [r["resourceType"] for r in pol["resource"]][4:] == ["Condition", "DocumentReference"]


def test_wheel_installs_one_medport_namespace(tmp_path):
    """The wheel puts only `medport` into site-packages: the repository's generator/, templates/ and
    emulator/ folders are mapped under it (pyproject package-dir), so a user's own `generator.py` can
    neither shadow medport nor collide with it, and the data files travel with the code."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("medport-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"medport"}, top
    for needed in [
        "medport/templates/patient-bot.js.j2",
        "medport/templates/webhook-bot.js.j2",
        "medport/generator/generation/config.schema.json",
        "medport/generator/generation/resource_types.json",
        "medport/generator/generation/fhir_rules.json",
        "medport/emulator/medplum/runtime/worker.js",
    ]:
        assert needed in names, f"{needed} missing from the wheel"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    zipfile.ZipFile(wheel).extractall(site)  # what pip does with a pure wheel, without the network
    user = tmp_path / "user-project"
    user.mkdir()
    (user / "generator.py").write_text("raise SystemExit('the user generator.py was imported')\n")
    probe = (
        "import importlib, importlib.util, sys\n"
        "sys.path.remove('') if '' in sys.path else None\n"
        "for name in ('emulator', 'templates'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "import medport, medport.emulator, medport.templates\n"
        "from importlib import resources\n"
        "assert resources.files('medport.generator.generation').joinpath('config.schema.json').is_file()\n"
        "print(medport.__version__)\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=user, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import medport

    assert out.stdout.strip() == medport.__version__
    # from the user's directory, `import generator` is the user's file, never medport's
    clash = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import generator"], cwd=user, capture_output=True, text=True
    )
    assert "the user generator.py was imported" in clash.stderr


@pytest.mark.parametrize(
    "variant", [{}, {"medplum": {"runtime": "awslambda"}, "webhook_bot": {"async_processing": False}}]
)
def test_rendered_bots_avoid_medplum_wrapper_traps(variant):
    import re

    for name, text in render_all(validate_data(variant)).items():
        if not name.endswith(".js"):
            continue
        # Medplum's getJsFileExtension treats code mentioning `export` (without module.exports) as ESM on awslambda.
        assert not re.search(r"\bexport\b", text), f"{name}: the word 'export' makes awslambda load it as ESM"
        assert not re.search(r"^\s*import\s", text, re.M), f"{name}: ESM import"
        # vmcontext appends `(async () => ...)()` after the code: a last statement without `;` becomes a call.
        last = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("//")][-1]
        assert last.rstrip().endswith(";"), f"{name}: last statement must end with ';' (got {last!r})"
