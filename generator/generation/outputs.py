"""Every file `medport generate` writes, as {relative name: text}, and the freshness check."""

from __future__ import annotations

from pathlib import Path

from . import deployed as deployed_bots
from . import render
from .config import Config
from .manifest import deploy_bundle, dumps, medplum_cli_config

DEFAULT_OUT = "bots"


def render_all(cfg: Config, deployed: dict | None = None) -> dict[str, str]:
    """Every generated file; `deployed` is the record `medport deploy` keeps (`deployed.read(out_dir)`)."""
    files = dict(render.render_bots(cfg))
    files["medplum.config.json"] = dumps(medplum_cli_config(cfg, deployed_bots.bot_ids(cfg, deployed)))
    files["deploy-bundle.json"] = dumps(deploy_bundle(cfg))
    return dict(sorted(files.items()))


def stale_files(cfg: Config, out_dir: str | Path) -> list[tuple[str, str]]:
    """[(name, 'missing' | 'stale')] for every rendered file that differs from what is on disk."""
    out = []
    for name, text in render_all(cfg, deployed_bots.read(out_dir)).items():
        p = Path(out_dir) / name
        if not p.exists():
            out.append((name, "missing"))
        elif p.read_bytes() != text.encode("utf-8"):
            out.append((name, "stale"))
    return out


def write_all(cfg: Config, out_dir: str | Path) -> list[tuple[str, str]]:
    """Write the rendered files; [(name, 'created' | 'updated' | 'unchanged')]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name, text in render_all(cfg, deployed_bots.read(out_dir)).items():
        p = out_dir / name
        data = text.encode("utf-8")
        if p.exists() and p.read_bytes() == data:
            report.append((name, "unchanged"))
            continue
        report.append((name, "updated" if p.exists() else "created"))
        p.write_bytes(data)
    return report
