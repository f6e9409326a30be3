"""`/admin/projects/{projectId}/...`: the Medplum admin API pieces the CLI and medport use.

Facts from Medplum (packages/server/src/admin/bot.ts, admin/client.ts, admin/project.ts,
admin/routes.ts; @medplum/cli utils.ts `createBot`):
- only a project admin (ProjectMembership.admin) may call these; otherwise 403 forbidden;
- `POST .../bot` {name (required), description, runtimeVersion, accessPolicy?}: creates the Bot
  (meta.project) and a ProjectMembership {project, user: Bot, profile: Bot, accessPolicy}; answers
  201 with the Bot. The emulator also accepts `code` and deploys it like `$deploy`.
- `POST .../client` {name, description, redirectUri?, accessPolicy?}: ClientApplication with a
  generated secret + its ProjectMembership; 201 with the ClientApplication.
- `GET /admin/projects/{id}`: `{project: {id, name, secret, ...}, members: [{id, user, profile,
  accessPolicy, admin, role}]}`.
- `POST .../secrets`: the body (array of ProjectSetting) replaces Project.secret; answers the Project.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..errors import BadRequest, Forbidden, ValidationFailed
from ..httpio import (
    JSON_TYPES,
    current_backend,
    json_response,
    parse_json_bytes,
    read_body,
    require_admin,
)
from ..ids import generate_secret, ref_id

bp = Blueprint("medport_admin", __name__, url_prefix="/admin")


def _project_for(project_id: str) -> dict:
    principal = require_admin()
    st = current_backend()
    if ref_id((principal.membership or {}).get("project")) != project_id and not principal.superuser:
        raise Forbidden()
    project = st.try_read("Project", project_id)
    if project is None:
        raise Forbidden()
    return project


def _json_body() -> Any:
    if request.mimetype not in JSON_TYPES:
        raise BadRequest("Unsupported content type")
    return parse_json_bytes(read_body(request, current_backend().settings.max_json_bytes))


def _policy_ref(value: Any) -> dict | None:
    if value in (None, ""):
        return None
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        pid = ref_id(value)
        if value["reference"].startswith("AccessPolicy/") and pid and current_backend().try_read("AccessPolicy", pid):
            return {"reference": value["reference"]}
    raise BadRequest("Invalid access policy", "accessPolicy")


def _membership(project: dict, profile: dict, access_policy: dict | None, admin: bool = False) -> dict:
    m: dict[str, Any] = {
        "resourceType": "ProjectMembership",
        "project": {"reference": f"Project/{project['id']}"},
        "user": {"reference": f"{profile['resourceType']}/{profile['id']}"},
        "profile": {"reference": f"{profile['resourceType']}/{profile['id']}"},
    }
    if access_policy:
        m["accessPolicy"] = access_policy
    if admin:
        m["admin"] = True
    return current_backend().create(m)


def _named_request(project_id: str, what: str) -> tuple[dict, dict, str, dict | None]:
    """The admin create endpoints' common input: the project, the body, its required name, the policy ref."""
    project = _project_for(project_id)
    body = _json_body()
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationFailed([(f"{what} name is required", "name")])
    return project, body, name, _policy_ref(body.get("accessPolicy"))


@bp.post("/projects/<project_id>/bot")
def create_bot(project_id: str) -> Response:
    project, body, name, policy = _named_request(project_id, "Bot")
    runtime = body.get("runtimeVersion") or "vmcontext"
    if runtime not in ("vmcontext", "awslambda"):
        raise BadRequest("Invalid runtime version", "runtimeVersion")
    bot: dict[str, Any] = {"resourceType": "Bot", "name": name, "runtimeVersion": runtime}
    if isinstance(body.get("description"), str) and body["description"]:
        bot["description"] = body["description"]
    for key in ("identifier", "timeout", "auditEventTrigger", "runAsUser"):
        if key in body:
            bot[key] = body[key]
    st = current_backend()
    with st.repo.transaction():  # all or nothing: a refused request writes nothing
        created = st.create(bot)
        _membership(project, created, policy)
        code = body.get("code")
        if isinstance(code, str) and code:
            filename = body.get("filename")
            filename = filename if isinstance(filename, str) and filename else "index.js"
            created = st.bots.deploy_code(created, code, filename)
    return json_response(created, 201)


@bp.post("/projects/<project_id>/client")
def create_client(project_id: str) -> Response:
    project, body, name, policy = _named_request(project_id, "Client")
    client: dict[str, Any] = {"resourceType": "ClientApplication", "name": name, "secret": generate_secret()}
    for key in ("description", "redirectUri", "identifier"):
        if body.get(key):
            client[key] = body[key]
    st = current_backend()
    with st.repo.transaction():  # all or nothing: a refused request writes nothing
        created = st.create(client)
        _membership(project, created, policy)
    return json_response(created, 201)


@bp.get("/projects/<project_id>")
def get_project(project_id: str) -> Response:
    project = _project_for(project_id)
    members = []
    for m in current_backend().projects.memberships():
        if ref_id(m.get("project")) != project_id:
            continue
        profile_type = ((m.get("profile") or {}).get("reference") or "").split("/")[0]
        role = "admin" if m.get("admin") else {"ClientApplication": "client", "Bot": "bot"}.get(profile_type, "member")
        members.append(
            {
                "id": m.get("id"),
                "user": m.get("user"),
                "profile": m.get("profile"),
                "accessPolicy": m.get("accessPolicy"),
                "access": m.get("access"),
                "admin": bool(m.get("admin")),
                "role": role,
            }
        )
    body = {
        "project": {
            "id": project["id"],
            "name": project.get("name"),
            "secret": project.get("secret") or [],
            "features": project.get("features") or [],
            "strictMode": project.get("strictMode"),
        },
        "members": [{k: v for k, v in m.items() if v is not None} for m in members],
    }
    return json_response(body, 200, "application/json")


@bp.post("/projects/<project_id>/secrets")
def set_secrets(project_id: str) -> Response:
    project = _project_for(project_id)
    body = _json_body()
    if not isinstance(body, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"] for s in body
    ):
        raise BadRequest("Secrets must be an array of ProjectSetting with a name")
    updated = dict(project)
    if body:
        updated["secret"] = body
    else:
        updated.pop("secret", None)  # an empty array is invalid FHIR
    return json_response(current_backend().update(updated), 200)


@bp.post("/projects/<project_id>/members/<membership_id>")
def update_member(project_id: str, membership_id: str) -> Response:
    """Update a membership (e.g. its accessPolicy), like Medplum's admin member endpoint."""
    _project_for(project_id)
    body = _json_body()
    st = current_backend()
    current = st.read("ProjectMembership", membership_id)
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body")
    updated = dict(current)
    for key in ("accessPolicy", "access", "admin"):
        if key in body:
            updated[key] = body[key]
    return json_response(st.update(updated), 200)
