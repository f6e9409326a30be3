"""The fake's Medical API: thin views that parse the request, call the backend and render.

Every route outside `/_fake` needs the `x-api-key` header (missing → 401, wrong → 403). The
settings routes answer both at `/settings...` (where @metriport/api-sdk calls them: its settings
calls use the bare base address) and at `/medical/v1/settings...` (`settings_bp`, registered
twice). `files_bp` serves the presigned URLs (S3's stand-in): no key, S3's XML errors.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from .backend import MetriportBackend
from .errors import BadRequest, Forbidden, Unauthorized, ValidationError
from .storage import NoSuchKey, RequestExpired

EXTENSION = "metriport"               # app.extensions key of the backend
API_KEY_CONFIG = "METRIPORT_API_KEY"  # app.config key of the accepted API key
API_KEY_HEADER = "x-api-key"
MEDICAL_PREFIX = "/medical/v1"
DEV_PREFIX = "/_fake"

bp = Blueprint("metriport_api", __name__, url_prefix=MEDICAL_PREFIX)
settings_bp = Blueprint("metriport_settings", __name__)
files_bp = Blueprint("metriport_files", __name__, url_prefix=f"{DEV_PREFIX}/files")


def current_backend() -> MetriportBackend:
    return current_app.extensions[EXTENSION]


def json_body(required: bool = False) -> Any:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ValidationError(["body: Required"])
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("Malformed JSON body") from None


def _patient_id_arg() -> str:
    pid = request.args.get("patientId")
    if not pid:
        raise ValidationError(["patientId: Required"])
    return pid


def _created(body: Any) -> tuple[Response, int]:
    return jsonify(body), 201


def _is_dev_path(path: str) -> bool:
    return path == DEV_PREFIX or path.startswith(DEV_PREFIX + "/")


# ---------------------------------------------------------------- app-wide hooks (registered by app.py)
def require_api_key() -> None:
    if _is_dev_path(request.path):
        return
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        raise Unauthorized("Unauthorized")
    if not secrets.compare_digest(key.encode(), current_app.config[API_KEY_CONFIG].encode()):
        raise Forbidden("Forbidden")


def inject_faults() -> None:
    """`slow_ms` delays every keyed route; failures hit only the Medical API (settings stay reachable)."""
    if _is_dev_path(request.path):
        return
    backend = current_backend()
    slow_ms = backend.faults["slow_ms"]
    if slow_ms:
        time.sleep(slow_ms / 1000.0)
    if request.path.startswith(MEDICAL_PREFIX):
        backend.maybe_fail()


def log_call(resp: Response) -> Response:
    if request.path.startswith(MEDICAL_PREFIX):
        current_backend().record_call(request.method, request.path, resp.status_code)
    return resp


# ---------------------------------------------------------------- facility
@bp.get("/facility")
def list_facilities():
    return jsonify({"facilities": current_backend().list_facilities()})


@bp.post("/facility")
def create_facility():
    return _created(current_backend().create_facility(json_body(required=True)))


@bp.get("/facility/<fid>")
def get_facility(fid: str):
    return jsonify(current_backend().get_facility(fid))


# ---------------------------------------------------------------- patient
@bp.post("/patient")
def create_patient():
    patient, _ = current_backend().create_patient(json_body(required=True), request.args.get("facilityId"))
    return _created(patient)  # 201 also when the same demographics returned the existing patient


@bp.get("/patient")
def list_patients():
    patients = current_backend().list_patients(request.args.get("facilityId"))
    return jsonify({"meta": {"itemsOnPage": len(patients)}, "patients": patients})


@bp.post("/patient/match")
def match_patient():
    return jsonify(current_backend().match_patient(json_body(required=True)))


@bp.get("/patient/external-id")
def patient_by_external_id():
    ext = request.args.get("externalId")
    if not ext:
        raise ValidationError(["externalId: Required"])
    return jsonify(current_backend().get_patient_by_external_id(ext))


@bp.get("/patient/<pid>")
def get_patient(pid: str):
    return jsonify(current_backend().get_patient(pid))


@bp.put("/patient/<pid>")
def update_patient(pid: str):
    return jsonify(current_backend().update_patient(pid, json_body(required=True), request.args.get("facilityId")))


@bp.delete("/patient/<pid>")
def delete_patient(pid: str):
    current_backend().delete_patient(pid)
    return Response(status=204)


@bp.post("/patient/<pid>/consolidated/query")
def start_consolidated(pid: str):
    a = request.args
    return jsonify(current_backend().start_consolidated_query(
        pid, resources=a.get("resources"), date_from=a.get("dateFrom"), date_to=a.get("dateTo"),
        conversion_type=a.get("conversionType"), body=json_body()))


@bp.get("/patient/<pid>/consolidated/query")
def consolidated_status(pid: str):
    return jsonify(current_backend().consolidated_queries(pid))


@bp.get("/patient/<pid>/consolidated/query/<rid>")
def consolidated_single(pid: str, rid: str):
    return jsonify(current_backend().consolidated_query(pid, rid))


# ---------------------------------------------------------------- documents
@bp.post("/document/query")
def start_document_query():
    return jsonify(current_backend().start_document_query(_patient_id_arg(), request.args.get("facilityId"),
                                                          json_body()))


@bp.get("/document/query")
def document_query_status():
    return jsonify(current_backend().get_document_query(_patient_id_arg()))


@bp.get("/document")
def list_documents():
    a = request.args
    return jsonify({"documents": current_backend().list_documents(_patient_id_arg(), a.get("dateFrom"), a.get("dateTo"))})


@bp.get("/document/download-url")
def document_url():
    return jsonify(current_backend().document_url(request.args.get("fileName"), request.args.get("conversionType")))


@bp.post("/document/download-url/bulk")
def bulk_urls():
    return jsonify(current_backend().start_bulk_urls(_patient_id_arg(), json_body()))


# ---------------------------------------------------------------- settings (at "" and /medical/v1)
@settings_bp.get("/settings")
def get_settings():
    return jsonify(current_backend().get_settings())


@settings_bp.post("/settings")
def update_settings():
    return jsonify(current_backend().update_settings(json_body(required=True)))


@settings_bp.get("/settings/webhook")
def webhook_status():
    return jsonify(current_backend().webhook_status())


@settings_bp.post("/settings/webhook/retry")
def retry_webhooks():
    current_backend().retry_webhooks()
    return Response("OK", status=200, mimetype="text/plain")


# ---------------------------------------------------------------- presigned files (S3's stand-in)
def _s3_error(code: str, message: str | None, status: int) -> Response:
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    text += f"<Message>{message}</Message></Error>" if message else "</Error>"
    return Response(text, status=status, mimetype="application/xml")


@files_bp.get("/<token>/<path:name>")
def get_file(token: str, name: str):
    try:
        f = current_backend().get_file(token)
    except RequestExpired:
        return _s3_error("AccessDenied", "Request has expired", 403)
    except NoSuchKey:
        return _s3_error("NoSuchKey", "The specified key does not exist.", 404)
    if name != f.name:
        return _s3_error("SignatureDoesNotMatch", None, 403)
    return Response(f.content, status=200, content_type=f.content_type)
