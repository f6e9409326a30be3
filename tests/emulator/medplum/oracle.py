"""Run Medplum's own @medplum/core (Node 22) on a list of jobs: the oracle of the differential tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from medport.emulator.node import node_binary, node_modules_dir

SCRIPT = Path(__file__).with_name("medplum_oracle.js")


def medplum(jobs: list[dict]) -> list[dict]:
    env = {**os.environ, "NODE_PATH": str(node_modules_dir())}
    out = subprocess.run(
        [str(node_binary()), str(SCRIPT)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)
