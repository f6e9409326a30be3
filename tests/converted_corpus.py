"""Converted C-CDA data for the webhook bot's repair tests (issue 14 item 11): the shared fixtures (262 resources, 12 of
which Medplum's validator refuses as they are), or — when ../shared is absent — synthetic Metriport data
(medport.emulator.metriport.synth) with the shapes Medplum refuses in real converted documents injected.

`corpus()` -> {"source": "fixtures" | "synthetic", "bundles": [Bundle, ...], "expected_fixes": {summary.fixes key: n}}
(`python -m tests.converted_corpus` prints it as JSON: the node tests read it that way)."""

from __future__ import annotations

import json

from medport.emulator.shared import converted_ccda_dir

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def fixtures() -> list[dict] | None:
    d = converted_ccda_dir()
    if d is None:
        return None
    files = sorted(d.glob("*.json"))
    files += [
        p
        for p in (d.parent / "metriport-consolidated-template.json", d.parent / "metriport-dedup-conditions.json")
        if p.is_file()
    ]
    return [json.loads(f.read_text("utf-8")) for f in files]


def synthetic() -> tuple[list[dict], dict[str, int]]:
    """300 synthetic resources with the refused shapes of real converted documents injected, and the repairs each
    injection must be counted as."""
    from medport.emulator.metriport.synth import generate

    bundle = generate(300, seed=14)
    res = [e["resource"] for e in bundle["entry"]]

    def first(t: str) -> dict:
        return next(r for r in res if r["resourceType"] == t)

    expected: dict[str, int] = {}

    def count(k: str, n: int = 1) -> None:
        expected[k] = expected.get(k, 0) + n

    cond = first("Condition")  # clinicalStatus as a list ("Expected single value for property")
    cond["clinicalStatus"] = [
        cond.get("clinicalStatus") or {"coding": [{"system": CLINICAL, "code": "active"}]},
        {"coding": [{"system": CLINICAL, "code": "active"}]},
    ]
    count("repeated-single-value-reduced")
    imm = first("Immunization")  # no occurrence[x] ("Missing required property")
    for k in [k for k in imm if k.startswith("occurrence")]:
        del imm[k]
    count("required-element-marked-absent")
    first("AllergyIntolerance")["reaction"] = [{"severity": "mild"}]  # reaction.manifestation missing
    count("required-element-marked-absent")
    first("Encounter").pop("class", None)
    count("required-element-marked-absent")
    first("Composition").pop("author", None)
    count("required-element-marked-absent")
    first("DocumentReference")["content"] = [
        {
            "attachment": {
                "contentType": "application/json",
                "title": "CCD",
                "url": "http://somedomain.com/fhir/R4/Binary/<%= binaryId %>",
            }
        }
    ]
    count("invalid-url-dropped")
    pid = first("Patient")["id"]
    bundle["entry"] += [
        {"resource": {"resourceType": "Coverage", "id": "cov-synth", "status": "active"}},  # beneficiary, payor
        {
            "resource": {
                "resourceType": "Consent",
                "id": "consent-synth",
                "status": "active",  # ppc-1
                "scope": {"text": "patient-privacy"},
                "category": [{"text": "advance directive"}],
                "patient": {"reference": f"Patient/{pid}"},
            }
        },
    ]
    count("required-element-marked-absent", 2)
    count("invariant-ppc-1-repaired")
    bundle["total"] = len(bundle["entry"])
    return [bundle], expected


def corpus() -> dict:
    bundles = fixtures()
    if bundles is not None:
        # Refused by Medplum as they are: Composition.author x3, Encounter.class x2, Coverage beneficiary + payor,
        # AllergyIntolerance.reaction.manifestation x4 (11 required elements), Consent ppc-1, a template's url.
        return {
            "source": "fixtures",
            "bundles": bundles,
            "expected_fixes": {
                "required-element-marked-absent": 11,
                "invariant-ppc-1-repaired": 1,
                "invalid-url-dropped": 1,
            },
        }
    bundles, expected = synthetic()
    return {"source": "synthetic", "bundles": bundles, "expected_fixes": expected}


if __name__ == "__main__":
    import sys

    sys.stdout.write(json.dumps(corpus()))
