"""medport where the integration lives (issue 13, "done when"): from an empty directory and a fresh venv,
`pip install <wheel>`, `medport setup`, `medport init`, `medport generate`, `medport check`, `medport demo`
and `pytest` on the README's example test all pass; then the workflow `medport init --ci` writes has its
`run:` steps executed in order, in another fresh venv and a directory holding only the committed project,
with MEDPORT_PIP_SPEC pointing at the wheel and medport's cache as actions/cache would restore it.

Nothing here comes from medport's checkout at run time: the wheel is built from it, its dependencies come
from a wheelhouse built once per session (pip's cache), and Node 22 with the npm packages comes from the
npm registry through `medport setup` (npm's cache), into a cache folder of this test.
"""

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.paths import ROOT, readme_block

pytestmark = pytest.mark.slow

# variables of this checkout's environment that would let the user's medport find medport's own files
SCRUB = (
    "MEDPORT_NODE_MODULES",
    "MEDPORT_NODE",
    "MEDPORT_CACHE_DIR",
    "PYTHONPATH",
    "MEDPLUM_BASE_URL",
    "MEDPLUM_CLIENT_ID",
    "MEDPLUM_CLIENT_SECRET",
    "METRIPORT_API_KEY",
    "METRIPORT_WEBHOOK_KEY",
    "MEDPORT_FAKE_METRIPORT_API_KEY",
    "VIRTUAL_ENV",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> tuple[Path, Path]:
    """(medport's wheel built from the checkout, a wheelhouse with it and every dependency + pytest)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(out.glob("medport-*.whl"))
    subprocess.run([*pip, "wheel", "-q", "-w", str(out), str(wheel), "pytest"], check=True, capture_output=True)
    return wheel, out


def fresh_venv(path: Path, with_pip: bool) -> Path:
    args = [sys.executable, "-m", "venv", str(path)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(args, check=True, capture_output=True)
    return path / "bin"


class User:
    """Runs commands as the user would: in `cwd`, the venv's bin first on PATH, medport's cache in `xdg`."""

    def __init__(self, bindir: Path, xdg: Path, extra_env: dict | None = None):
        env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        env.update(
            PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}",
            XDG_CACHE_HOME=str(xdg),
            PYTHONUNBUFFERED="1",
            **(extra_env or {}),
        )
        self.env = env
        self.times: dict[str, float] = {}

    def run(self, label: str, cmd, cwd: Path, *, timeout: float = 300, shell: bool = False, env: dict | None = None):
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            shell=shell,
            executable="/bin/bash" if shell else None,
        )
        self.times[label] = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{label} failed ({proc.returncode}):\n{out[-4000:]}"
        assert "Traceback" not in out, f"{label} printed a traceback:\n{out[-4000:]}"
        return out


def test_from_an_empty_directory_and_a_fresh_venv(wheelhouse, tmp_path, capsys):
    wheel, house = wheelhouse
    xdg = tmp_path / "xdg"
    bindir = fresh_venv(tmp_path / "venv", with_pip=False)
    user = User(bindir, xdg)
    project = tmp_path / "project"
    project.mkdir()

    # the wheel vendored in the repository (a spec the README lists), installed with the pytest extra (the
    # session's pip, targeting the fresh venv; dependencies from the wheelhouse)
    vendored = project / "vendor" / wheel.name
    vendored.parent.mkdir()
    vendored.write_bytes(wheel.read_bytes())
    user.run(
        "pip install",
        [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "--python",
            str(bindir / "python"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(house),
            f"medport[pytest] @ {vendored.as_uri()}",
        ],
        project,
    )
    site = subprocess.run(
        [str(bindir / "python"), "-c", "import medport, sys; print(medport.__file__)"],
        capture_output=True,
        text=True,
        env=user.env,
        cwd=project,
    ).stdout
    assert str(tmp_path / "venv") in site, f"medport imported from outside the fresh venv: {site}"

    out = user.run("medport setup (cold)", ["medport", "setup"], project)
    assert "[2/3] npm ci" in out and "ready in" in out
    out = user.run("medport setup (warm)", ["medport", "setup"], project)
    assert "nothing to do" in out
    out = user.run("medport doctor", ["medport", "doctor"], project)
    assert "npm packages from the cache" in out
    user.run("medport init", ["medport", "init"], project)
    user.run("medport generate", ["medport", "generate"], project)
    out = user.run("medport check", ["medport", "check", "--junit", "junit.xml"], project)
    assert " 0 failed" in out and "packages=cache" in out
    out = user.run("medport demo", ["medport", "demo"], project)
    assert "flow complete" in out
    (project / "tests").mkdir()
    (project / "tests" / "test_medport_flow.py").write_text(readme_block("example-test"))
    out = user.run("pytest (README example)", ["pytest", "-q", "-p", "no:cacheprovider"], project)
    assert "3 passed" in out

    # the CI workflow, written into the existing project, then run step by step
    toml_before = (project / "medport.toml").read_bytes()
    # no --pip-spec: init finds the vendored wheel through the installed distribution's direct_url.json
    out = user.run("medport init --ci", ["medport", "init", "--ci"], project)
    assert f"installs ./vendor/{wheel.name}" in out
    assert (project / "medport.toml").read_bytes() == toml_before
    assert ".medport/" in (project / ".gitignore").read_text().splitlines()
    workflow_path = project / ".github" / "workflows" / "medport.yml"
    workflow = yaml.safe_load(workflow_path.read_text())
    checkout = tmp_path / "ci-checkout"  # what actions/checkout gives: the committed project only
    checkout.mkdir()
    subprocess.run(
        [
            "cp",
            "-r",
            str(project / "medport.toml"),
            str(project / "bots"),
            str(project / ".github"),
            str(project / "vendor"),
            str(project / ".gitignore"),
            str(checkout),
        ],
        check=True,
    )
    ci_bin = fresh_venv(tmp_path / "ci-venv", with_pip=True)  # what setup-python gives
    runner = User(ci_bin, xdg, {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house)})  # the cache, as restored
    assert workflow["env"]["MEDPORT_PIP_SPEC"] == f"./vendor/{wheel.name}"
    output_file = tmp_path / "github_output"
    output_file.touch()
    step_env = {**{k: str(v) for k, v in workflow["env"].items()}, "GITHUB_OUTPUT": str(output_file), "CI": "true"}
    ran = []
    for step in workflow["jobs"]["check"]["steps"]:
        if "run" not in step:
            continue
        label = f"workflow: {step.get('name', step['run'].splitlines()[0])}"
        # GitHub runs `run:` with `bash --noprofile --norc -eo pipefail {0}`
        runner.run(
            label, ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], checkout, env=step_env
        )
        ran.append(step["run"].splitlines()[0])
    assert ran == [
        'python -m pip install "$MEDPORT_PIP_SPEC"',
        "medport setup",
        "medport check --junit medport-junit.xml",
    ]
    outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
    assert Path(outputs["dir"]) == (xdg / "medport").resolve() / outputs["key"].split("-")[1]
    assert outputs["key"].startswith("medport-")
    # the cache key as GitHub evaluates it: the runner's OS and architecture, then medport's key
    context = {
        "runner.os": "Linux",
        "runner.arch": "X64",
        "steps.medport.outputs.key": outputs["key"],
        "steps.medport.outputs.dir": outputs["dir"],
    }
    for step in workflow["jobs"]["check"]["steps"]:
        if "cache/" in step.get("uses", ""):
            key = re.sub(r"\$\{\{ ([\w.-]+) \}\}", lambda m: context[m.group(1)], step["with"]["key"])
            assert key == f"Linux-X64-{outputs['key']}"
    assert (
        "nothing to do"
        in subprocess.run(["medport", "setup"], cwd=checkout, env=runner.env, capture_output=True, text=True).stdout
    )
    suite = ET.parse(checkout / "medport-junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 8

    times = {**user.times, **runner.times}
    with capsys.disabled():
        print("\nuser-repository timings (s): " + json.dumps({k: round(v, 2) for k, v in times.items()}))
