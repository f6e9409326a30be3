"""What a FHIR interaction answers: status, body (a resource, a Bundle or an OperationOutcome) and headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FhirResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
