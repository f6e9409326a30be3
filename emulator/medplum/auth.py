"""OAuth2 client credentials, JWT access tokens, request authentication and `/auth/me`.

Facts from Medplum (packages/server/src/oauth/token.ts, oauth/middleware.ts, oauth/keys.ts,
auth/me.ts) and @medplum/core (client.ts `fetchTokens`/`verifyTokens`, jwt.ts):
- `POST /oauth2/token` requires `application/x-www-form-urlencoded` (else 400 "Unsupported
  content type"); errors are `{error, error_description}` with 400 (`invalid_request`:
  "Missing grant_type", "Unsupported grant_type", "Missing client_id", "Missing client_secret",
  "Invalid client", "Invalid secret"). Client id/secret come from HTTP Basic when an
  Authorization header is present, else from the form.
- The response is `{token_type: "Bearer", expires_in, scope, access_token, project, profile, ...}`.
- MedplumClient checks `exp` and that `client_id` (or `cid`) equals its client id, and treats a
  token as a Medplum token (then calls `/auth/me`) when the payload has a string `login_id`.
- FHIR requests take `Authorization: Bearer <jwt>` or `Basic base64(clientId:secret)`; anything
  else → 401 `unauthorized` (an expired token adds the `expired` issue, `unauthorizedTokenExpired`).
- A ClientApplication whose `status` is set to anything but `active` gets no new token ("Invalid client",
  oauth/token.ts `handleClientCredentials`), but nothing else looks at the status: a Bearer token issued
  before keeps working until it expires (oauth/utils.ts `getLoginForAccessToken` checks the JWT, the Login,
  its membership and `revoked`), and Basic auth on API calls keeps working (oauth/utils.ts
  `getLoginForBasicAuth` compares the secret and finds the membership). The emulator does the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

from .errors import Unauthorized
from .fhir.principal import Principal
from .fhir.system import SystemFhir
from .ids import ref_id
from .projects import Projects


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(Exception):
    def __init__(self, expired: bool = False):
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


class AuthService:
    """Issues and checks HS256 JWTs signed with a per-install secret (`jwt_secret`, kept in the meta store)."""

    def __init__(self, fhir: SystemFhir, projects: Projects, *, jwt_secret: str, issuer: str, token_lifetime_s: int):
        self._fhir = fhir
        self._projects = projects
        self._key = jwt_secret.encode("ascii")
        self._issuer = issuer
        self._token_lifetime_s = token_lifetime_s
        self._principals: dict[str, tuple[float, Any]] = {}
        self._generation = 0  # bumped by invalidate(): a principal built across it is not cached

    # -- JWT ------------------------------------------------------------------------------
    def sign(self, claims: dict) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "medport"}, separators=(",", ":")).encode())
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(self._key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(sig)}"

    def verify(self, token: str) -> dict:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError()
        try:
            header = json.loads(_b64url_decode(parts[0]))
            sig = _b64url_decode(parts[2])
            claims = json.loads(_b64url_decode(parts[1]))
        except Exception:
            raise TokenError() from None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            raise TokenError()
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(sig, expected):
            raise TokenError()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or time.time() >= exp:
            raise TokenError(expired=True)
        return claims

    def issue_token(
        self, membership: dict, client_id: str | None = None, scope: str = "openid", lifetime_s: int | None = None
    ) -> str:
        """An access token for a membership (claims shaped like Medplum's generateAccessToken)."""
        now = int(time.time())
        profile = (membership.get("profile") or {}).get("reference", "")
        user_id = ref_id(membership.get("user")) or ref_id(profile) or ""
        claims = {
            "iss": self._issuer,
            "iat": now,
            "exp": now + int(lifetime_s or self._token_lifetime_s),
            "login_id": str(uuid.uuid4()),
            "sub": user_id,
            "username": user_id,
            "scope": scope,
            "profile": profile,
        }
        if client_id:
            claims["client_id"] = client_id
        return self.sign(claims)

    # -- principals -----------------------------------------------------------------------
    def invalidate(self) -> None:
        self._generation += 1
        self._principals.clear()

    def principal_for_profile(self, profile: str) -> Principal | None:
        cached = self._principals.get(profile)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        gen = self._generation
        membership = self._projects.membership_for_profile(profile)
        if membership is None:
            return None
        principal = self._projects.principal_for(membership)
        if gen == self._generation:  # not if a membership/policy write raced with this build
            self._principals[profile] = (time.monotonic() + 30.0, principal)
        return principal

    def check_client(self, client_id: str, secret: str, *, require_active: bool = True) -> dict | None:
        """The ClientApplication if `secret` is its secret (or retiring secret). `require_active`: refuse a
        client whose status is not active (the token endpoint does; Basic auth on API calls does not)."""
        if not client_id or not secret:
            return None
        client = self._fhir.try_read("ClientApplication", client_id) if safe_id(client_id) else None
        if not client or not client.get("secret"):
            return None
        if require_active and client.get("status") and client["status"] != "active":
            return None
        ok = hmac.compare_digest(str(client["secret"]).encode(), secret.encode())
        if client.get("retiringSecret") and hmac.compare_digest(
            str(client["retiringSecret"]).encode(), secret.encode()
        ):
            ok = True
        return client if ok else None

    def authenticate(self, authorization: str | None) -> Principal:
        """The Principal for an Authorization header; raises Unauthorized (401)."""
        if not authorization:
            raise Unauthorized()
        kind, _, token = authorization.partition(" ")
        token = token.strip()
        if not kind or not token:
            raise Unauthorized()
        if kind == "Bearer":
            try:
                claims = self.verify(token)
            except TokenError as e:
                raise Unauthorized(expired=e.expired) from None
            principal = self.principal_for_profile(str(claims.get("profile") or ""))
            if principal is None:
                raise Unauthorized()
            return principal
        if kind == "Basic":
            try:
                decoded = base64.b64decode(token, validate=False).decode("utf-8", "replace")
            except Exception:
                raise Unauthorized() from None
            client_id, _, secret = decoded.partition(":")
            client = self.check_client(client_id, secret, require_active=False)
            if client is None:
                raise Unauthorized()
            principal = self.principal_for_profile(f"ClientApplication/{client['id']}")
            if principal is None:
                raise Unauthorized()
            return principal
        raise Unauthorized()


def safe_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-." for c in value)


def parse_lifetime(value: Any) -> int | None:
    """ClientApplication.accessTokenLifetime like '1h', '30m', '3600s'."""
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except (ValueError, IndexError):
        return None
