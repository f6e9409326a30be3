"""Typed errors of the Medplum emulator and the OperationOutcomes Medplum answers with.

Shapes and ids are those of @medplum/core 5.x (`allOk`, `notFound`, `badRequest`, ...);
`status_of` mirrors its `getStatus`: the status is derived from the outcome id, so an
outcome built here always renders with the status the real server would use.
"""

from __future__ import annotations

from typing import Any

_STATUS_BY_ID = {
    "ok": 200,
    "created": 201,
    "accepted": 202,
    "found": 302,
    "not-modified": 304,
    "unauthorized": 401,
    "forbidden": 403,
    "not-found": 404,
    "conflict": 409,
    "gone": 410,
    "precondition-failed": 412,
    "multiple-matches": 412,
    "payload-too-large": 413,
    "unsupported-media-type": 415,
    "unprocessable-entity": 422,
    "too-many-requests": 429,
    "gateway-timeout": 504,
}


def outcome(
    severity: str,
    code: str,
    text: str,
    *,
    id: str | None = None,
    expression: str | None = None,
    diagnostics: str | None = None,
    extra_issues: list[dict] | None = None,
) -> dict:
    issue: dict[str, Any] = {"severity": severity, "code": code, "details": {"text": text}}
    if expression:
        issue["expression"] = [expression]
    if diagnostics:
        issue["diagnostics"] = diagnostics
    oo: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if id:
        oo["id"] = id
    oo["issue"] = [issue, *(extra_issues or [])]
    return oo


def status_of(oo: dict) -> int:
    """Medplum's getStatus: by id, else 500 for `exception`, else 400."""
    status = _STATUS_BY_ID.get(oo.get("id") or "")
    if status:
        return status
    issues = oo.get("issue") or [{}]
    return 500 if issues[0].get("code") == "exception" else 400


def all_ok() -> dict:
    return outcome("information", "informational", "All OK", id="ok")


def created_outcome() -> dict:
    return outcome("information", "informational", "Created", id="created")


def accepted_outcome(location: str) -> dict:
    return outcome("information", "informational", "Accepted", id="accepted", diagnostics=location)


def not_modified() -> dict:
    return outcome("information", "informational", "Not Modified", id="not-modified")


class FhirError(Exception):
    """An error that renders as an OperationOutcome; `status` follows from the outcome."""

    def __init__(self, oo: dict):
        self.outcome = oo
        super().__init__(oo["issue"][0]["details"]["text"])

    @property
    def status(self) -> int:
        return status_of(self.outcome)


class BadRequest(FhirError):
    def __init__(self, text: str, expression: str | None = None):
        super().__init__(outcome("error", "invalid", text, expression=expression))


class ValidationFailed(FhirError):
    """Schema or business-rule validation failure; one issue per problem (code `structure` like Medplum's validator).
    `problems` are (text, expression) pairs or ready OperationOutcome issues (dicts, e.g. from the strict validator,
    which also carries warnings and `invariant` issues exactly as @medplum/core validateResource reports them)."""

    def __init__(self, problems: list):
        issues = [
            p
            if isinstance(p, dict)
            else {
                "severity": "error",
                "code": "structure",
                "details": {"text": p[0]},
                **({"expression": [p[1]]} if p[1] else {}),
            }
            for p in problems
        ] or [{"severity": "error", "code": "structure", "details": {"text": "Invalid resource"}}]
        super().__init__({"resourceType": "OperationOutcome", "issue": issues})


class StructureError(FhirError):
    """@medplum/core `validationError(text)`: issue code `structure`, no id -> 400 (e.g. "Unknown resource type")."""

    def __init__(self, text: str, expression: str | None = None):
        super().__init__(outcome("error", "structure", text, expression=expression))


class Unauthorized(FhirError):
    def __init__(self, reason: str | None = None, expired: bool = False):
        extra = []
        if expired:
            extra.append({"severity": "error", "code": "expired", "details": {"text": "Token expired"}})
        elif reason:
            extra.append({"severity": "error", "code": "invalid", "details": {"text": reason}})
        super().__init__(outcome("error", "login", "Unauthorized", id="unauthorized", extra_issues=extra))


class Forbidden(FhirError):
    def __init__(self, text: str = "Forbidden"):
        super().__init__(outcome("error", "forbidden", text, id="forbidden"))


class NotFound(FhirError):
    def __init__(self, text: str = "Not found"):
        super().__init__(outcome("error", "not-found", text, id="not-found"))


class Gone(FhirError):
    def __init__(self):
        super().__init__(outcome("error", "deleted", "Gone", id="gone"))


class Conflict(FhirError):
    def __init__(self, text: str):
        super().__init__(outcome("error", "conflict", text, id="conflict"))


class PreconditionFailed(FhirError):
    def __init__(self, text: str = "Precondition Failed"):
        super().__init__(outcome("error", "processing", text, id="precondition-failed"))


class MultipleMatches(FhirError):
    def __init__(self):
        super().__init__(
            outcome("error", "multiple-matches", "Multiple resources found matching condition", id="multiple-matches")
        )


class PayloadTooLarge(FhirError):
    def __init__(self, text: str = "Payload too large"):
        super().__init__(outcome("error", "too-long", text, id="payload-too-large"))


class UnsupportedMediaType(FhirError):
    def __init__(self):
        super().__init__(outcome("error", "not-supported", "Unsupported media type", id="unsupported-media-type"))


class TooManyRequests(FhirError):
    def __init__(self):
        super().__init__(outcome("error", "throttled", "Too Many Requests", id="too-many-requests"))


class MisdirectedRequest(FhirError):
    """A request whose `Host` names another server (DNS rebinding): 421, before any route runs. Medplum has no
    such check (its load balancer routes by name); the emulator, reachable on loopback, needs it."""

    def __init__(self, host: str):
        super().__init__(
            outcome(
                "error",
                "security",
                f"Misdirected request: this server does not answer for host "
                f"{host[:100]!r} (allowed: 127.0.0.1, localhost, [::1], the --host given, "
                "MEDPORT_ALLOWED_HOSTS)",
            )
        )

    @property
    def status(self) -> int:
        return 421


class ServerError(FhirError):
    """Medplum's `serverError`: the body says only "Internal server error". `diagnostics` (what went wrong,
    e.g. a Python exception) is for the caller to log: it is never sent, so no body carries exception text."""

    def __init__(self, diagnostics: str = ""):
        super().__init__(outcome("error", "exception", "Internal server error"))
        self.diagnostics = diagnostics
