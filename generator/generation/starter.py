"""The commented starter config (`medport init`) and the README's config reference,
both generated from config.schema.json so they can never drift from what is validated."""

from __future__ import annotations

import importlib.metadata
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from medport import __version__

from .config import schema


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        if sum(len(str(x)) for x in v) > 60:
            return "[\n" + "".join(f"  {_toml_value(x)},\n" for x in v) + "]"
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def _resolve(node: dict) -> dict:
    if "$ref" in node:
        return {**schema()["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _allowed(node: dict) -> str:
    if "enum" in node:
        return " | ".join(json.dumps(e) for e in node["enum"])
    t = node.get("type", "")
    rng = []
    if "minimum" in node:
        rng.append(f">= {node['minimum']}")
    if "maximum" in node:
        rng.append(f"<= {node['maximum']}")
    return f"{t} {' '.join(rng)}".strip()


def starter_toml() -> str:
    out = [
        "# medport.toml — one config for the Medplum <-> Metriport integration.",
        "# Every key is optional; the values below are the defaults. Validate with `medport generate --check`",
        '# or `medport check`. Reference: README.md, section "Configuration reference".',
        "",
    ]
    for section, snode in schema()["properties"].items():
        out.append(f"[{section}]")
        out += [f"# {line}" for line in textwrap.wrap(snode.get("description", ""), 100)]
        for key, raw in snode["properties"].items():
            node = _resolve(raw)
            out += [f"# {line}" for line in textwrap.wrap(node.get("description", ""), 100)]
            if "default" in node:
                out.append(f"{key} = {_toml_value(node['default'])}")
            else:
                example = {"date": '"2020-01-01"', "fhirId": '"<bot id on your Medplum server>"'}.get(
                    raw.get("$ref", "").rsplit("/", 1)[-1], '""'
                )
                out.append(f"# {key} = {example}")
        out.append("")
    return "\n".join(out)


def config_reference_markdown() -> str:
    rows = ["| key | allowed | default | meaning |", "| --- | --- | --- | --- |"]
    for section, snode in schema()["properties"].items():
        for key, raw in snode["properties"].items():
            node = _resolve(raw)
            default = (
                f"`{_toml_value(node['default'])}`"
                if "default" in node and not isinstance(node["default"], list)
                else ("see `medport init`" if "default" in node else "—")
            )
            if isinstance(node.get("default"), list) and len(node["default"]) <= 3:
                default = f"`{_toml_value(node['default'])}`"
            desc = node.get("description", "").replace("|", "\\|")
            rows.append(f"| `{section}.{key}` | {_allowed(node).replace('|', '/')} | {default} | {desc} |")
    return "\n".join(rows) + "\n"


# GitHub Actions used by the workflow, pinned to full commit SHAs (the tag each SHA was taken from in the comment).
# Looked up in the actions' own repositories (git tags): checkout v7.0.1, setup-python v7.0.0, cache v5.0.5
# (its restore/ and save/ sub-actions), upload-artifact v7.0.0.
ACTIONS = {
    "checkout": ("actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "setup-python": ("actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "cache-restore": ("actions/cache/restore@27d5ce7f107fe9357f9df03efb73ab90386fccae", "v5.0.5"),
    "cache-save": ("actions/cache/save@27d5ce7f107fe9357f9df03efb73ab90386fccae", "v5.0.5"),
    "upload-artifact": ("actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0"),
}
WORKFLOW_PATH = ".github/workflows/medport.yml"


@dataclass
class InstallSpec:
    """How the workflow installs medport: `spec` for pip, `vendor` a wheel outside the project that `init` copies
    into vendor/ (the spec names the copy), `warning` when CI may not resolve it."""

    spec: str
    vendor: Path | None = None
    warning: str | None = None


def _direct_url() -> dict | None:
    try:
        raw = importlib.metadata.distribution("medport").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        d = json.loads(raw) if raw else None
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def default_pip_spec(project: Path | str = ".") -> InstallSpec:
    """The pip spec that installs this medport in CI, from how it was installed here (PEP 610 direct_url.json):
    a Git URL at its commit; a wheel URL; a wheel file inside `project` by its path from the repository root
    (./vendor/...), or outside it copied into vendor/; none (an index) `medport==<version>`."""
    pypi = f"medport=={__version__}"
    d = _direct_url()
    if d is None:
        return InstallSpec(pypi)
    url = str(d.get("url", ""))
    vcs = d.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and url.startswith(("https://", "ssh://", "git://")):
        return InstallSpec(f"medport @ git+{url}@{vcs.get('commit_id') or vcs.get('requested_revision', '')}")
    if "archive_info" in d and url.startswith(("https://", "http://")):
        return InstallSpec(f"medport @ {url}")
    if "archive_info" in d and url.startswith("file://") and url.endswith(".whl"):
        wheel = Path(unquote(urlparse(url).path))
        root = Path(project).resolve()
        if wheel.resolve().is_relative_to(root):
            return InstallSpec("./" + wheel.resolve().relative_to(root).as_posix())
        if wheel.is_file():
            return InstallSpec(f"./vendor/{wheel.name}", vendor=wheel)
    return InstallSpec(
        pypi,
        warning=(
            f"this medport was installed from {url or 'a local folder'}, which CI cannot reach: the workflow installs "
            f"{pypi} from PyPI — build a wheel into the repository (`pip wheel --no-deps -w vendor <medport checkout>`) "
            "and pass --pip-spec ./vendor/<wheel>, or a Git URL"
        ),
    )


def ensure_gitignored(project: Path, entry: str = ".medport/") -> bool:
    """Add `entry` (the emulator's state, SQLite stores and logs) to the project's .gitignore; True if added."""
    path = project / ".gitignore"
    text = path.read_text("utf-8") if path.exists() else ""
    lines = {ln.strip() for ln in text.splitlines()}
    if entry in lines or entry.rstrip("/") in lines or f"/{entry}" in lines:
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    path.write_text(f"{text}{prefix}# medport: the local emulator's state and databases\n{entry}\n", "utf-8")
    return True


def ci_workflow(pip_spec: str) -> str:
    """A GitHub Actions workflow running `medport check` on every pull request and push to main."""
    a = {k: f"{ref} # {tag}" for k, (ref, tag) in ACTIONS.items()}
    spec = json.dumps(pip_spec)
    return f"""\
# Written by `medport init --ci` (medport {__version__}): validates the Medplum <-> Metriport bots on every
# pull request and push to main — config, fresh generated files, bots loading under vmcontext, end-to-end
# scenarios on medport's emulator and fake Metriport. No secret and no account needed.
#
# MEDPORT_PIP_SPEC says which medport to install. Pin it to one of:
#   medport=={__version__}                                    a release on PyPI (once published)
#   medport @ git+https://github.com/<org>/medport@<commit>   a Git URL at a commit (or tag)
#   medport @ https://<host>/medport-{__version__}-py3-none-any.whl   a wheel URL
#   ./vendor/medport-{__version__}-py3-none-any.whl            a wheel committed in this repository
# `medport setup` installs Node 22 and the pinned npm packages into medport's cache, restored by actions/cache
# (keyed on the runner's OS and architecture, medport's version and npm pins). Actions are pinned to commit
# SHAs; the tag is in the comment.
name: medport
on:
  pull_request:
  push:
    branches: [main]
permissions:
  contents: read
env:
  MEDPORT_PIP_SPEC: {spec}
jobs:
  check:
    runs-on: ubuntu-latest
    timeout-minutes: 15
    steps:
      - uses: {a["checkout"]}
        with:
          persist-credentials: false
      - uses: {a["setup-python"]}
        with:
          python-version: "3.12"
          cache: pip
          cache-dependency-path: {WORKFLOW_PATH}
      - name: Install medport
        id: medport
        run: |
          python -m pip install "$MEDPORT_PIP_SPEC"
          echo "dir=$(medport setup --print-dir)" >> "$GITHUB_OUTPUT"
          echo "key=$(medport setup --print-key)" >> "$GITHUB_OUTPUT"
      - name: Restore medport's cache (Node 22, npm packages)
        id: cache
        uses: {a["cache-restore"]}
        with:
          path: ${{{{ steps.medport.outputs.dir }}}}
          key: ${{{{ runner.os }}}}-${{{{ runner.arch }}}}-${{{{ steps.medport.outputs.key }}}}
      - name: medport setup
        run: medport setup
      - name: Save medport's cache
        if: steps.cache.outputs.cache-hit != 'true'
        uses: {a["cache-save"]}
        with:
          path: ${{{{ steps.medport.outputs.dir }}}}
          key: ${{{{ runner.os }}}}-${{{{ runner.arch }}}}-${{{{ steps.medport.outputs.key }}}}
      - name: medport check
        run: medport check --junit medport-junit.xml
      - name: Upload the JUnit report
        if: always()
        uses: {a["upload-artifact"]}
        with:
          name: medport-junit
          path: medport-junit.xml
          if-no-files-found: ignore
"""
