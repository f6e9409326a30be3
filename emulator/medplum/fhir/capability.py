"""`GET /fhir/R4/metadata`: the CapabilityStatement Medplum's server builds (server src/fhir/metadata.ts
getCapabilityStatement) — public, built once: the R4 resource types with the interactions, conditional support and
search parameters Medplum declares, batch and transaction, OAuth security with the token and authorize URLs."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime

from .searchparams import facts, registry

_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "create", "search-type"]
_RESULT_PARAMS = [
    {"name": "_sort", "definition": "https://www.hl7.org/fhir/search.html#_sort", "type": "string"},
    {"name": "_total", "definition": "https://www.hl7.org/fhir/search.html#_total", "type": "string"},
    {"name": "_count", "definition": "https://www.hl7.org/fhir/search.html#_count", "type": "number"},
    {"name": "_summary", "definition": "https://www.hl7.org/fhir/search.html#_summary", "type": "token"},
    {"name": "_elements", "definition": "https://www.hl7.org/fhir/search.html#_elements", "type": "string"},
]
_OPERATIONS = {
    "Group": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]
}

_lock = threading.Lock()
_built: dict[tuple[str, str], dict] = {}


def capability_statement(base_url: str, version: str) -> dict:
    """The statement for a server at `base_url` (".../" root) running Medplum `version` (a copy: callers may
    change it)."""
    key = (base_url, version)
    with _lock:
        if key not in _built:
            _built[key] = _build(base_url, version)
        return copy.deepcopy(_built[key])


def _build(base_url: str, version: str) -> dict:
    root = base_url if base_url.endswith("/") else base_url + "/"
    fhir_base = root + "fhir/R4/"
    return {
        "resourceType": "CapabilityStatement",
        "id": "medplum-server",
        "version": version,
        "name": "MedplumCapabilityStatement",
        "title": "Medplum Capability Statement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z",
        "publisher": "Medplum",
        "contact": [{"telecom": [{"system": "url", "value": "https://www.medplum.com"}]}],
        "description": "Medplum FHIR Capability Statement",
        "jurisdiction": [
            {"coding": [{"system": "urn:iso:std:iso:3166", "code": "US", "display": "United States of America"}]}
        ],
        "kind": "instance",
        "instantiates": [
            "http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server",
            "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
        ],
        "implementationGuide": ["http://hl7.org/fhir/uv/fhircast/ImplementationGuide/hl7.fhir.uv.fhircast|3.0.0"],
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "patchFormat": ["application/json-patch+json"],
        "url": fhir_base + "metadata",
        "software": {"name": "medplum", "version": version},
        "implementation": {"description": "medplum", "url": fhir_base},
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": True,
                    "service": [
                        {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": s}
                            ]
                        }
                        for s in ("OAuth", "Basic", "SMART-on-FHIR")
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "authorize", "valueUri": root + "oauth2/authorize"},
                                {"url": "token", "valueUri": root + "oauth2/token"},
                            ],
                        }
                    ],
                },
                "resource": [_resource(t) for t in facts()["capability"]],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "searchParam": copy.deepcopy(_RESULT_PARAMS),
                "extension": [
                    {
                        "extension": [{"url": "hub.url", "valueUrl": root + "fhircast/STU3"}],
                        "url": "http://hl7.org/fhir/uv/fhircast/StructureDefinition/fhircast-configuration-extension",
                    }
                ],
            }
        ],
    }


def _resource(rtype: str) -> dict:
    out: dict = {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": c} for c in _INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalRead": "not-supported",
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "logical", "local"],
    }
    params = [
        {"name": code, **({"definition": sp.url} if sp.url else {}), "type": sp.type}
        for code, sp in registry().for_type(rtype).items()
    ]
    if params:
        out["searchParam"] = params
    if rtype in _OPERATIONS:
        out["operation"] = copy.deepcopy(_OPERATIONS[rtype])
    return out
