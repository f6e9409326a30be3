"""Typed errors of the fake Metriport sandbox.

Metriport's API error handler answers `{status, title, detail, name}`; `title` and
`name` are the HTTP reason phrase (e.g. "Bad Request"), `detail` the human message.
"""
from __future__ import annotations

from http import HTTPStatus


class MetriportError(Exception):
    status = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def body(self) -> dict:
        return {"status": self.status, "title": self.title, "detail": self.detail, "name": self.title}


class BadRequest(MetriportError):
    status = 400


class ValidationError(BadRequest):
    """A request body/query failing validation: `problems` names each one (`path: message`)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "Invalid request")


class Unauthorized(MetriportError):
    status = 401


class Forbidden(MetriportError):
    status = 403


class NotFound(MetriportError):
    status = 404


class MethodNotAllowed(MetriportError):
    status = 405


class Conflict(MetriportError):
    status = 409


class TooManyRequests(MetriportError):
    status = 429


class ServerError(MetriportError):
    status = 500


class ServiceUnavailable(MetriportError):
    status = 503
