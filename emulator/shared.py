"""Where the project's shared data lives: `MEDPORT_SHARED`, else the `shared/` folder beside the checkout
(CI clones the repo with `shared/` next to it). Everything that uses it must also work without it."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    env = os.environ.get("MEDPORT_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def converted_ccda_dir() -> Path | None:
    """The folder of FHIR bundles converted from C-CDA, or None when absent."""
    d = shared_dir() / "fixtures" / "converted-ccda"
    return d if d.is_dir() else None
