"""Typed errors of the fake Metriport sandbox, answered with Metriport's own bodies.

Metriport's error handler (packages/api/src/routes/helpers/default-error-handler.ts):
- a MetriportError (BadRequestError, NotFoundError, ForbiddenError, ...) →
  `{status, title: <error class name>, detail: <message>, name: <http-status reason, e.g. "Not Found">}`
  plus `additionalInfo` when the error carries one;
- a ZodError → 400 `{status: 400, title: "Missing or invalid parameters", detail: "<message>, on [<path>], ...",
  name: "Bad Request"}`;
- any other error with a status (body-parser: malformed JSON, too large) → `title: "MetriportError"`;
- anything else → 500 `{title: "InternalServerError", detail: "Please try again or reach out to support@metriport.com"}`.
Some answers are not that shape and are kept as Metriport sends them: the app rate limiter's plain-text
429 (express-rate-limit, packages/shared/src/domain/rate-limiting), the sandbox cap's `{message}`, the
unknown route's `{"message": "Not Found"}` (routes/helpers/not-found-handler.ts), API Gateway's
`{"message": "Forbidden"}` for a missing or wrong API key, and the 423 JSON string of a patient update
during a document query (routes/medical/patient.ts).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .zod import Issue


class MetriportError(Exception):
    status = 500
    title = "MetriportError"

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, additional_info: dict[str, Any] | None = None
    ):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.additional_info = additional_info

    @property
    def name(self) -> str:
        return HTTPStatus(self.status).phrase

    def body(self) -> Any:
        out: dict[str, Any] = {"status": self.status, "title": self.title, "detail": self.detail, "name": self.name}
        if self.additional_info:
            out["additionalInfo"] = self.additional_info
        return out

    mimetype = "application/json"


class HttpError(MetriportError):
    """An error that only carries a status (body-parser's): `title: "MetriportError"`."""

    def __init__(self, status: int, detail: str, **kw: Any):
        self.status = status
        super().__init__(detail, **kw)


class BadRequest(MetriportError):
    status = 400
    title = "BadRequestError"


class ValidationError(BadRequest):
    """A ZodError: each issue rendered `<message>, on [<path>]`, joined by ", "."""

    title = "Missing or invalid parameters"

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        super().__init__(", ".join(i.render() for i in self.issues))

    @property
    def problems(self) -> list[str]:
        return [i.render() for i in self.issues]


class Forbidden(MetriportError):
    status = 403
    title = "ForbiddenError"


class NotFound(MetriportError):
    status = 404
    title = "NotFoundError"


class ServerError(MetriportError):
    """Metriport's fallback for an unexpected error."""

    status = 500
    title = "InternalServerError"

    def __init__(self, detail: str = "Please try again or reach out to support@metriport.com", **kw: Any):
        super().__init__(detail, **kw)


class RawError(MetriportError):
    """An answer outside the `{status, title, detail, name}` shape: `payload` is sent as is
    (a str with `mimetype` text/html, or JSON)."""

    def __init__(
        self, status: int, payload: Any, *, mimetype: str = "application/json", headers: dict[str, str] | None = None
    ):
        self.status = status
        self.payload = payload
        self.mimetype = mimetype
        super().__init__(payload if isinstance(payload, str) else str(payload), headers=headers)

    def body(self) -> Any:
        return self.payload


class TooManyRequests(RawError):
    """The app rate limiter (express-rate-limit): plain text, Retry-After and RateLimit-* headers."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(429, message, mimetype="text/html", headers=headers)


def api_gateway_forbidden() -> RawError:
    return RawError(403, {"message": "Forbidden"})


def route_not_found() -> RawError:
    return RawError(404, {"message": "Not Found"})


def sandbox_cap(limit: int) -> RawError:
    return RawError(400, {"message": f"Cannot create more than {limit} patients in Sandbox mode!"})


def document_query_in_progress() -> RawError:
    return RawError(423, "Document querying currently in progress")  # res.json(string): a JSON string


class ServiceUnavailable(RawError):
    """A 503 from the load balancer in front of the API (injected by the fault switches)."""

    def __init__(self) -> None:
        super().__init__(503, {"message": "Service Unavailable"})


class DevError(BadRequest):
    """A refused request to the fake's own developer API (/_fake): Metriport's body shape, every
    problem named (`problems`)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class DevUnauthorized(MetriportError):
    """The developer API without the fake's API key."""

    status = 401
    title = "UnauthorizedError"
