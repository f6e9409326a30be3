"""OAuth and session routes: `POST /oauth2/token` (client_credentials, client id/secret in the form or
Basic) and `GET /auth/me` — the answers Medplum's server gives (packages/server/src/oauth/token.ts, auth/me.ts)."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, request

from ..auth import parse_lifetime, safe_id
from ..httpio import current_backend, json_response, require_principal

bp = Blueprint("medport_auth", __name__)


def _token_error(description: str, status: int = 400) -> Response:
    return json_response({"error": "invalid_request", "error_description": description}, status, "application/json")


@bp.post("/oauth2/token")
def token() -> Response:
    if request.mimetype != "application/x-www-form-urlencoded":
        return Response("Unsupported content type", status=400, content_type="text/plain; charset=utf-8")
    form = request.form
    grant_type = form.get("grant_type")
    if not grant_type:
        return _token_error("Missing grant_type")
    if grant_type != "client_credentials":
        return _token_error("Unsupported grant_type")
    header = request.headers.get("Authorization")
    if header:
        if not header.startswith("Basic "):
            return _token_error("Invalid authorization header")
        try:
            decoded = base64.b64decode(header.split(" ", 1)[1]).decode("utf-8", "replace")
        except Exception:
            return _token_error("Invalid authorization header")
        client_id, _, secret = decoded.partition(":")
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id:
        return _token_error("Missing client_id")
    if not secret:
        return _token_error("Missing client_secret")
    st = current_backend()
    client = st.try_read("ClientApplication", client_id) if safe_id(client_id) else None
    if client is None or (client.get("status") and client["status"] != "active") or not client.get("secret"):
        return _token_error("Invalid client")
    if st.auth.check_client(client_id, secret) is None:
        return _token_error("Invalid secret")
    membership = st.membership_for_profile(f"ClientApplication/{client_id}")
    if membership is None:
        return _token_error("Invalid client")
    scope = form.get("scope") or "openid"
    lifetime = client.get("accessTokenLifetime")
    lifetime_s = parse_lifetime(lifetime) if lifetime else None
    access_token = st.auth.issue_token(membership, client_id=client_id, scope=scope, lifetime_s=lifetime_s)
    claims = st.auth.verify(access_token)
    body = {
        "token_type": "Bearer",
        "expires_in": claims["exp"] - claims["iat"],
        "scope": scope,
        "access_token": access_token,
        "project": membership.get("project"),
        "profile": membership.get("profile"),
        "smart_style_url": st.base_url + "fhir/R4/.well-known/smart-styles.json",
        "need_patient_banner": False,
    }
    return json_response(body, 200, "application/json")


@bp.get("/auth/me")
def me() -> Response:
    principal = require_principal()
    st = current_backend()
    membership = principal.membership or {}
    project = dict(st.project())
    project.pop("secret", None)
    project.pop("systemSecret", None)
    profile_ref = membership.get("profile", {}).get("reference", "")
    rtype, _, rid = profile_ref.partition("/")
    profile = st.try_read(rtype, rid) if rtype and rid else None
    if profile:
        profile = {k: v for k, v in profile.items() if k not in ("secret", "retiringSecret")}
    config = {"resourceType": "UserConfiguration", "id": "medport-default-config", "menu": []}
    body = {
        "user": profile,
        "project": project,
        "membership": membership,
        "profile": profile or {"resourceType": rtype or "ClientApplication", "id": rid},
        "config": config,
        "accessPolicy": _merged_policy(principal),
        "security": {"mfaEnrolled": False, "sessions": []},
    }
    return json_response(body, 200, "application/json")


def _merged_policy(principal) -> dict | None:
    st = current_backend()
    policies = st.projects.policies_for(principal.membership or {}) if principal.membership else None
    if not policies:
        return None
    merged: dict[str, Any] = {"resourceType": "AccessPolicy", "resource": []}
    for p in policies:
        merged["resource"].extend(p.get("resource") or [])
    return merged
