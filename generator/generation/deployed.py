"""Where the deployed Bots are, for Medplum's own CLI: `medport deploy` records the ids the server gave the Bots
(`POST /admin/projects/{id}/bot` assigns them) in `<out>/medport.deployed.json`, and `medplum.config.json` —
the file `medplum bot deploy <name>` reads in its working directory — names those ids. `medport generate`
renders medplum.config.json from the same record, so the two stay in step and `generate --check` stays green.

An id pinned in the config (`patient_bot.id`, `webhook_bot.id`) wins over the record; without either, the
stable id derived from the Bot's identifier stands in until the first deploy."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Config

DEPLOYED_FILE = "medport.deployed.json"
ABOUT = (
    "Written by `medport deploy`: the Bots on the Medplum server deployed to last. `medport generate` names "
    "these ids in medplum.config.json, where `medplum bot deploy <name>` reads them. Commit it."
)


def read(out_dir: str | Path) -> dict | None:
    try:
        data = json.loads((Path(out_dir) / DEPLOYED_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("bots"), dict) else None


def record(base_url: str, project_id: str, bot_ids: dict[str, str]) -> dict:
    return {"about": ABOUT, "base_url": base_url, "project": project_id, "bots": dict(sorted(bot_ids.items()))}


def write(out_dir: str | Path, data: dict) -> Path:
    path = Path(out_dir) / DEPLOYED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return path


def bot_ids(cfg: Config, deployed: dict | None) -> dict[str, str]:
    """Bot name -> the id medplum.config.json names: pinned in the config, else deployed, else derived."""
    recorded = (deployed or {}).get("bots") or {}
    out = {}
    for spec in cfg.bots:
        pinned = getattr(cfg, spec.key).id
        out[spec.name] = pinned or recorded.get(spec.name) or spec.id
    return out


def pin_conflicts(cfg: Config, deployed_ids: dict[str, str]) -> list[str]:
    """Bots whose id is pinned in the config but were found under another id on the server."""
    out = []
    for spec in cfg.bots:
        pinned = getattr(cfg, spec.key).id
        found = deployed_ids.get(spec.name)
        if pinned and found and pinned != found:
            out.append(
                f"{spec.key}.id = {pinned!r} in the config, but the Bot {spec.name} on the server is {found}: "
                f"medplum.config.json keeps the pinned id — remove or correct {spec.key}.id"
            )
    return out
