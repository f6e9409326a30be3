"""The sandbox's seed patients and their clinical data.

Metriport's sandbox maps any patient whose first name equals a seed patient's to that seed's
data (packages/api: `getSandboxSeedData(patient.data.firstName)`); every other patient gets
empty results. The fake does the same: `Dataset`s keyed by lowercase first name, produced
deterministically by `synth.generate`, or loaded from FHIR bundle files with `load_data`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medport.jsoncodec import loads as _loads

from . import synth

SEED_PATIENTS: list[dict] = [
    {
        "firstName": "Chris",
        "lastName": "Smith",
        "dob": "1995-03-14",
        "genderAtBirth": "M",
        "address": [
            {"addressLine1": "4307 Maple Ave", "city": "Arlington", "state": "VA", "zip": "22204", "country": "USA"}
        ],
        "contact": [{"phone": "7035550143", "email": "chris.smith@example.com"}],
    },
    {
        "firstName": "Jane",
        "lastName": "Smith",
        "dob": "1996-02-10",
        "genderAtBirth": "F",
        "address": [{"addressLine1": "2 Walnut St", "city": "Denver", "state": "CO", "zip": "80203", "country": "USA"}],
        "contact": [{"phone": "3035550199", "email": "jane.smith@example.com"}],
    },
    {
        "firstName": "Ollie",
        "lastName": "Brown",
        "dob": "1946-03-18",
        "genderAtBirth": "M",
        "address": [
            {"addressLine1": "201 Armada Dr", "city": "Brownsville", "state": "TX", "zip": "78520", "country": "USA"}
        ],
        "contact": [{"phone": "9565550127"}],
    },
    {
        "firstName": "Andreas",
        "lastName": "Sims",
        "dob": "1977-08-19",
        "genderAtBirth": "M",
        "address": [
            {"addressLine1": "4430 York St", "city": "Jefferson City", "state": "MO", "zip": "65101", "country": "USA"}
        ],
        "contact": [{"phone": "5735550112", "email": "andreas.sims@example.com"}],
    },
    {
        "firstName": "Kyla",
        "lastName": "Fields",
        "dob": "1927-05-23",
        "genderAtBirth": "F",
        "address": [
            {"addressLine1": "332 Lake Shore Blvd", "city": "Chicago", "state": "IL", "zip": "60611", "country": "USA"}
        ],
        "contact": [{"phone": "3125550163"}],
    },
]
# resources per seed patient (deterministic, realistic sizes)
SEED_SIZES = {"chris": 120, "jane": 160, "ollie": 240, "andreas": 90, "kyla": 200}


@dataclass
class Dataset:
    """Clinical data of one known patient: `build(metriport_patient_id, demographics)` → entries."""

    first_name: str
    build: Callable[[str, dict | None], list[dict]]
    source: str = "seed"
    files: list[str] = field(default_factory=list)


def _seed_dataset(demo: dict, index: int) -> Dataset:
    key = demo["firstName"].lower()
    n = SEED_SIZES.get(key, 100)

    def build(patient_id: str, patient: dict | None) -> list[dict]:
        return synth.generate(n, seed=1000 + index, patient_id=patient_id, patient=patient or demo)["entry"]

    return Dataset(demo["firstName"], build, "seed")


def seed_datasets() -> dict[str, Dataset]:
    return {d["firstName"].lower(): _seed_dataset(d, i) for i, d in enumerate(SEED_PATIENTS)}


def _first_name(patient: dict) -> str | None:
    for n in patient.get("name") or []:
        given = n.get("given") or []
        if given and isinstance(given[0], str) and given[0].strip():
            return given[0].strip()
    return None


def _bundles_in(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
    return [path]


def load_data(path: str | os.PathLike) -> dict[str, Dataset]:  # noqa: C901 — reads every shape a user's data folder may hold
    """Read a FHIR bundle file or a folder of them.

    Each bundle holding a Patient becomes data of a patient known by that Patient's first name;
    bundles of the same first name are merged (resources de-duplicated by type/id). The
    original Patient ids are rewritten to the Metriport patient id when served.
    """
    grouped: dict[str, dict] = {}
    for file in _bundles_in(Path(path)):
        try:
            bundle = _loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue
        resources: list[dict] = [
            e["resource"]
            for e in bundle.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        patients = [r for r in resources if r.get("resourceType") == "Patient"]
        if not patients:
            continue
        name = _first_name(patients[0])
        if not name:
            continue
        g = grouped.setdefault(
            name.lower(), {"name": name, "patient_ids": set(), "resources": {}, "order": [], "files": []}
        )
        g["files"].append(str(file))
        for p in patients:
            if p.get("id"):
                g["patient_ids"].add(p["id"])
        for r in resources:
            k = (r.get("resourceType"), r.get("id") or f"noid-{len(g['order'])}")
            if r.get("resourceType") == "Patient":
                k = ("Patient", "__the_patient__")
            if k not in g["resources"]:
                g["order"].append(k)
                g["resources"][k] = r
    out: dict[str, Dataset] = {}
    for key, g in grouped.items():
        text = json.dumps([g["resources"][k] for k in g["order"]], ensure_ascii=False)
        ids = sorted(g["patient_ids"])

        def build(patient_id: str, patient: dict | None, _text: str = text, _ids: list[str] = ids) -> list[dict]:
            t = _text
            for old in _ids:
                t = t.replace(old, patient_id)
            res = _loads(t)
            entries = []
            for r in res:
                if r.get("resourceType") == "Patient":
                    r["id"] = patient_id
                entries.append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r} if r.get("id") else {"resource": r})
            return entries

        out[key] = Dataset(g["name"], build, "file", g["files"])
    return out
