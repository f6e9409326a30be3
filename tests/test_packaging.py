"""Packaging: the wheel carries every package, the npm manifest `medport setup` installs, py.typed, the
license and the plugin entry point; the sdist carries everything its tests need (npm manifest and lockfile,
Makefile, tests incl. node:test, benchmarks) and its test suite collects from the unpacked tree."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    code = "import sys; from setuptools import build_meta as b; print('BUILT', b.build_sdist(sys.argv[1]))"
    built = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
    sdist = built.stdout.strip().splitlines()[-1].split()[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return out / sdist, next(out.glob("medport-*.whl"))


def git_files(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if (ROOT / p).exists()]


def test_wheel_has_every_package_the_plugin_and_the_npm_manifest(built):
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    mapping = {
        "generator": "medport/generator",
        "templates": "medport/templates",
        "emulator": "medport/emulator",
        "medport": "medport",
    }
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in mapping:
            assert str(Path(mapping[rel.parts[0]], *rel.parts[1:])) in names, f"{rel}: package missing from the wheel"
    # every file git tracks in the installed folders (code, templates, JS run by Node, data) is in the wheel
    for rel in git_files("generator", "templates", "emulator", "medport"):
        top, _, rest = rel.partition("/")
        assert f"{mapping[top]}/{rest}" in names, f"{rel}: missing from the wheel (pyproject package-data)"
    for needed in (
        "medport/py.typed",
        "medport/testing.py",
        "medport/pytest_plugin.py",
        "medport/emulator/npm/package.json",
        "medport/emulator/npm/package-lock.json",
    ):
        assert needed in names, needed
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta
    assert f"{dist_info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "[pytest11]\nmedport = medport.pytest_plugin" in entry_points


def test_sdist_carries_what_its_tests_need_and_they_collect(built, tmp_path):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(tmp_path.iterdir())
    for path in [
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "Makefile",
        "package.json",
        "package-lock.json",
        "medport.toml",
        "MANIFEST.in",
        "docs/internals.md",
        "medport/py.typed",
        *git_files("tests", "bench", "bots", "emulator/npm"),
    ]:
        if path.startswith("bench/") and not path.endswith((".py", ".md")):
            continue
        assert (root / path).is_file(), f"{path} missing from the sdist"
    assert not (root / "node_modules").exists() and not (root / ".venv").exists()
    assert "License-Expression: Apache-2.0" in (root / "PKG-INFO").read_text()
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/generator",
            "tests/emulator/test_node.py",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert " tests collected" in collected.stdout or "tests collected" in collected.stdout
