"""`medport init` and `init --ci`: the workflow is added to an existing project without touching its
medport.toml, --force overwrites only the file the command writes, and the workflow is what a careful
reviewer wants (pinned actions, read-only token, the setup cache restored, no unused steps). The
workflow's steps are run for real in tests/e2e/test_user_repo.py."""

import json
import re

import yaml
from click.testing import CliRunner

from medport import __version__
from medport.generator.cli.main import main
from medport.generator.generation import starter


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_init_writes_the_config_and_refuses_to_overwrite_it(tmp_path):
    r = run("init", str(tmp_path))
    assert r.exit_code == 0 and f"wrote {tmp_path / 'medport.toml'}" in r.output
    r = run("init", str(tmp_path))
    assert r.exit_code == 1 and "--force" in r.output and "medport init --ci" in r.output
    (tmp_path / "medport.toml").write_text("# mine\n")
    r = run("init", str(tmp_path), "--force")
    assert r.exit_code == 0 and f"overwrote {tmp_path / 'medport.toml'}" in r.output
    assert not (tmp_path / ".github").exists()


def test_init_ci_adds_the_workflow_to_an_existing_project_without_touching_its_config(tmp_path):
    mine = '[patient_bot]\nflow = "consolidated"\n'
    (tmp_path / "medport.toml").write_text(mine)
    wf = tmp_path / ".github" / "workflows" / "medport.yml"
    r = run("init", str(tmp_path), "--ci", "--pip-spec", "medport==9.9.9")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "medport.toml").read_text() == mine and "kept" in r.output
    assert wf.exists() and "medport==9.9.9" in wf.read_text()
    # again: refuses, naming the workflow; --force overwrites the workflow only, and says so
    r = run("init", str(tmp_path), "--ci")
    assert r.exit_code == 1 and "medport.yml already exists" in r.output and "--force" in r.output
    wf.write_text("# edited\n")
    r = run("init", str(tmp_path), "--ci", "--force", "--pip-spec", "medport==9.9.9")
    assert r.exit_code == 0 and f"overwrote {wf}" in r.output and "medport==9.9.9" in wf.read_text()
    assert (tmp_path / "medport.toml").read_text() == mine


def test_init_ci_in_an_empty_folder_writes_both(tmp_path):
    r = run("init", str(tmp_path), "--ci", "--pip-spec", "medport==1.2.3")
    assert r.exit_code == 0
    assert (tmp_path / "medport.toml").exists() and (tmp_path / starter.WORKFLOW_PATH).exists()


def test_the_workflow_is_pinned_least_privilege_cached_and_has_no_unused_step():
    text = starter.ci_workflow("medport @ git+https://github.com/acme/medport@0123abc")
    wf = yaml.safe_load(text)
    assert wf["permissions"] == {"contents": "read"}
    assert wf["env"]["MEDPORT_PIP_SPEC"] == "medport @ git+https://github.com/acme/medport@0123abc"
    steps = wf["jobs"]["check"]["steps"]
    uses = [s["uses"] for s in steps if "uses" in s]
    for u in uses:
        assert re.fullmatch(r"actions/[a-z-]+(/[a-z]+)?@[0-9a-f]{40}", u), f"not pinned to a commit SHA: {u}"
    for line in text.splitlines():
        if "uses:" in line:
            assert re.search(r"# v\d+\.\d+\.\d+$", line), f"no tag comment: {line}"
    assert not any("setup-node" in u for u in uses), "medport setup provides Node 22"
    runs = [s["run"] for s in steps if "run" in s]
    assert 'python -m pip install "$MEDPORT_PIP_SPEC"' in runs[0]
    assert runs[1:] == ["medport setup", "medport check --junit medport-junit.xml"]
    # every step is used: the outputs of `medport` feed the cache steps, the cache's hit decides the save,
    # the JUnit file is uploaded
    ids = {s["id"] for s in steps if "id" in s}
    assert ids == {"medport", "cache"}
    assert "steps.medport.outputs.dir" in text and "steps.medport.outputs.key" in text
    assert "steps.cache.outputs.cache-hit" in text
    upload = next(s for s in steps if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["path"] == "medport-junit.xml" and upload["if"] == "always()"
    names = [s.get("uses", s.get("run", "")).split("@")[0] for s in steps]
    assert names.index("actions/cache/restore") < names.index("medport setup") < names.index("actions/cache/save")
    setup_python = next(s for s in steps if "setup-python" in s.get("uses", ""))
    assert setup_python["with"]["cache"] == "pip"
    assert setup_python["with"]["cache-dependency-path"] == starter.WORKFLOW_PATH


def test_default_pip_spec_follows_how_medport_was_installed(monkeypatch, tmp_path):
    """Before: a wheel vendored in the repository (a spec the README lists) made the workflow install
    medport==<version> from PyPI, where it is not published: CI failed on its first push."""

    class Dist:
        def __init__(self, direct):
            self.direct = direct

        def read_text(self, name):
            return json.dumps(self.direct) if self.direct is not None else None

    def installed(direct, project=tmp_path):
        monkeypatch.setattr(starter.importlib.metadata, "distribution", lambda name: Dist(direct))
        return starter.default_pip_spec(project)

    assert installed(None) == starter.InstallSpec(f"medport=={__version__}")  # an index
    got = installed({"url": "https://github.com/acme/medport.git", "vcs_info": {"vcs": "git", "commit_id": "a" * 40}})
    assert got == starter.InstallSpec(f"medport @ git+https://github.com/acme/medport.git@{'a' * 40}")
    got = installed({"url": "https://example.com/medport-0.1.0-py3-none-any.whl", "archive_info": {}})
    assert got == starter.InstallSpec("medport @ https://example.com/medport-0.1.0-py3-none-any.whl")
    wheel = tmp_path / "vendor" / "medport-0.1.0-py3-none-any.whl"  # vendored in the repository
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK")
    got = installed({"url": wheel.as_uri(), "archive_info": {"hash": "sha256=00"}})
    assert got == starter.InstallSpec("./vendor/medport-0.1.0-py3-none-any.whl")
    outside = tmp_path / "elsewhere"  # a wheel outside: copied into vendor/
    outside.mkdir()
    got = installed({"url": wheel.as_uri(), "archive_info": {}}, project=outside)
    assert got == starter.InstallSpec("./vendor/medport-0.1.0-py3-none-any.whl", vendor=wheel)
    got = installed({"url": "file:///home/me/medport", "dir_info": {"editable": True}})
    assert got.spec == f"medport=={__version__}" and "--pip-spec" in got.warning and "pip wheel" in got.warning


def test_init_ci_copies_a_wheel_from_outside_into_vendor_and_ignores_local_state(monkeypatch, tmp_path):
    wheel = tmp_path / "dist" / "medport-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK-wheel")
    monkeypatch.setattr(starter, "_direct_url", lambda: {"url": wheel.as_uri(), "archive_info": {}})
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitignore").write_text("node_modules")  # no newline at the end
    r = run("init", str(repo), "--ci")
    assert r.exit_code == 0, r.output
    assert (repo / "vendor" / wheel.name).read_bytes() == b"PK-wheel" and "commit it" in r.output
    wf = yaml.safe_load((repo / starter.WORKFLOW_PATH).read_text())
    assert wf["env"]["MEDPORT_PIP_SPEC"] == f"./vendor/{wheel.name}"
    assert (repo / ".gitignore").read_text().splitlines()[0] == "node_modules"
    assert ".medport/" in (repo / ".gitignore").read_text().splitlines()
    run("init", str(repo), "--force")
    assert (repo / ".gitignore").read_text().count(".medport/") == 1


def test_the_cache_key_names_the_runners_os_and_architecture():
    wf = yaml.safe_load(starter.ci_workflow("medport==1.0"))
    keys = [s["with"]["key"] for s in wf["jobs"]["check"]["steps"] if "cache/" in s.get("uses", "")]
    assert keys == ["${{ runner.os }}-${{ runner.arch }}-${{ steps.medport.outputs.key }}"] * 2


def test_the_pytest_extra_brings_pytest():
    import tomllib

    from tests.paths import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("pytest>=") for req in extras["pytest"])
