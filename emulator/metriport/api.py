"""The fake's Medical API: thin views that read the request the way Metriport's Express app does,
check it in the order Metriport's route does (`rules.py`), call the backend and render.

- API key (`x-api-key`) on every route outside `/_fake` — checked first, as AWS API Gateway does in
  front of Metriport: missing or wrong → 403 `{"message": "Forbidden"}`.
- Bodies: `express.json({limit: "20mb"})` and `express.urlencoded({extended: false})`
  (packages/api/src/app.ts): JSON only for `Content-Type: application/json`, form fields for
  urlencoded, anything else reads as `{}`; an empty JSON body is `{}`; JSON must start with `{` or
  `[`; malformed → 400, over 20 MB → 413 (body-parser errors: `title: "MetriportError"`). Strings
  holding lone surrogates are refused as malformed too (nothing downstream could store or render them).
- Query parameters: Express 4's `qs` makes `a=1&a=2` and `a[x]=1` arrays/objects, which
  `getFrom("query")` refuses ("Invalid <name> query param - must be string").
- Settings live at `/settings` (not under /medical/v1: routes/index.ts mounts them at the root).
- `files_bp` serves the presigned URLs (S3's stand-in): no key (the token is the credential), S3's XML errors;
  `uploads_bp` takes the PUT of a bulk patient create's CSV the same way.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from . import rules
from .backend import UploadRefused
from .contribution import REQUEST_ID_HEADER
from .errors import BadRequest, api_gateway_forbidden
from .httpio import API_KEY_HEADER, created, current_backend, q, q_or_fail, query_object, read_body, valid_api_key
from .storage import NoSuchKey, RequestExpired

MEDICAL_PREFIX = "/medical/v1"
DEV_PREFIX = "/_fake"
FILES_PREFIX = f"{DEV_PREFIX}/files"
UPLOADS_PREFIX = f"{DEV_PREFIX}/uploads"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # S3 takes far more; 100,000 rows of demographics are ~20 MB

bp = Blueprint("metriport_api", __name__, url_prefix=MEDICAL_PREFIX)
settings_bp = Blueprint("metriport_settings", __name__)
files_bp = Blueprint("metriport_files", __name__, url_prefix=FILES_PREFIX)
uploads_bp = Blueprint("metriport_uploads", __name__, url_prefix=UPLOADS_PREFIX)


def _is_dev_path(path: str) -> bool:
    return path == DEV_PREFIX or path.startswith(DEV_PREFIX + "/")


def _is_files_path(path: str) -> bool:
    return path.startswith(FILES_PREFIX + "/")


# ---------------------------------------------------------------- app-wide hooks (registered by app.py)
def require_api_key() -> None:
    """API Gateway in front of Metriport: no or a wrong key → 403 {"message": "Forbidden"}.
    The developer API checks the same key itself (devapi.py); presigned file URLs need none."""
    if _is_dev_path(request.path):
        return
    if not valid_api_key(request.headers.get(API_KEY_HEADER)):
        raise api_gateway_forbidden()


def parse_body() -> None:
    """express.json/urlencoded run before every route (errors answered before any route logic)."""
    if _is_dev_path(request.path):
        return
    read_body()


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


# ---------------------------------------------------------------- facility (routes/medical/facility-root.ts, facility.ts)
@bp.get("/facility")
def list_facilities():
    return jsonify({"facilities": current_backend().list_facilities()})


@bp.post("/facility")
def create_facility():
    return created(current_backend().add_facility(rules.facility_create(read_body())))


@bp.get("/facility/<fid>")
def get_facility(fid: str):
    return jsonify(current_backend().get_facility(fid))


# ---------------------------------------------------------------- patient (routes/medical/patient-root.ts, patient.ts)
@bp.post("/patient")
def create_patient():
    backend = current_backend()
    backend.check_rate("patient")  # checkRateLimit("patientCreateOrUpdate") runs first
    facility_id = q_or_fail("facilityId")
    for name in ("rerunPdOnNewDemographics", "commonwell", "carequality"):
        q(name)
    demo, external_id = rules.patient_create(read_body(), now_ms=backend.now_ms())
    patient, _ = backend.create_patient(demo, external_id, facility_id)
    return created(patient)  # 201 also when the same demographics returned the existing patient


@bp.get("/patient")
def list_patients():
    facility_id = q("facilityId")
    q("filters")
    return jsonify({"patients": current_backend().list_patients(facility_id)})


@bp.post("/patient/match")
def match_patient():
    backend = current_backend()
    return jsonify(backend.match_patient(rules.demographics(read_body(), now_ms=backend.now_ms())))


@bp.post("/patient/bulk")
def bulk_patient_create():
    """patient-root.ts POST /bulk: `facilityId` optional (getFromQuery), `dryRun` (getFromQueryAsBoolean: only
    "true" in any case is true); no body read, no rate limit, no sandbox cap; 200 with PatientImportDto."""
    facility_id = q("facilityId")
    dry_run = rules.string_to_boolean(q("dryRun")) or False
    return jsonify(current_backend().start_bulk_import(facility_id, dry_run))


@bp.get("/patient/external-id")
def patient_by_external_id():
    external_id = q_or_fail("externalId")
    source = q("source")
    if source:
        raise BadRequest("Invalid source", additional_info={"source": source})
    return jsonify(current_backend().get_patient_by_external_id(external_id))


@bp.get("/patient/<pid>")
def get_patient(pid: str):
    return jsonify(current_backend().get_patient(pid))


@bp.put("/patient/<pid>")
def update_patient(pid: str):
    backend = current_backend()
    backend.get_patient(pid)  # patientAuthorization("params")
    backend.check_rate("patient")
    facility_id = q("facilityId")
    for name in ("rerunPdOnNewDemographics", "commonwell", "carequality"):
        q(name)
    demo, external_id = rules.patient_create(
        read_body(), now_ms=backend.now_ms()
    )  # the update route parses the create schema
    return jsonify(backend.update_patient(pid, demo, external_id, facility_id))


@bp.delete("/patient/<pid>")
def delete_patient(pid: str):
    backend = current_backend()
    backend.get_patient(pid)
    q("facilityId")
    backend.delete_patient(pid)
    return Response(status=204)


@bp.post("/patient/<pid>/consolidated/query")
def start_consolidated(pid: str):
    backend = current_backend()
    backend.get_patient(pid)
    backend.check_rate("consolidated")
    resources = rules.resources_param(q("resources"))
    date_from = rules.iso_date_param(q("dateFrom"))
    date_to = rules.iso_date_param(q("dateTo"))
    conversion_type = rules.conversion_type(q_or_fail("conversionType"))
    q("fromDashboard")
    metadata = rules.request_metadata(read_body())
    return jsonify(
        backend.start_consolidated_query(
            pid,
            resources=resources,
            date_from=date_from,
            date_to=date_to,
            conversion_type=conversion_type,
            metadata=metadata,
        )
    )


@bp.route("/patient/<pid>/consolidated", methods=["PUT", "POST"])
def contribute(pid: str):
    """PUT (and the deprecated POST) /patient/:id/consolidated: data contribution."""
    backend = current_backend()
    backend.get_patient(pid)
    result, request_id = backend.contribute(pid, read_body())
    resp = jsonify(result)
    resp.headers[REQUEST_ID_HEADER] = request_id
    return resp


@bp.get("/patient/<pid>/consolidated/query")
def consolidated_status(pid: str):
    return jsonify(current_backend().consolidated_queries(pid))


@bp.get("/patient/<pid>/consolidated/query/<rid>")
def consolidated_single(pid: str, rid: str):
    return jsonify(current_backend().consolidated_query(pid, rid))


@bp.post("/document/upload")
def document_upload():
    """A contributed document: its DocumentReference and the URL to PUT the file to."""
    backend = current_backend()
    patient_id = q_or_fail("patientId")
    backend.get_patient(patient_id)
    return jsonify(backend.start_document_upload(patient_id, read_body()))


@bp.post("/document/upload-url")
def document_upload_url():
    """Deprecated form of POST /document/upload: the URL alone."""
    backend = current_backend()
    patient_id = q_or_fail("patientId")
    backend.get_patient(patient_id)
    return jsonify(backend.start_document_upload(patient_id, read_body())["uploadUrl"])


# ---------------------------------------------------------------- network query (routes/medical/network-query.ts)
@bp.post("/network/query")
def start_network_query():
    backend = current_backend()
    backend.check_rate("document_query")  # checkRateLimit("documentQuery"), then patientAuthorization("query")
    patient_id = q_or_fail("patientId")
    backend.get_patient(patient_id)
    facility_id = q("facilityId")
    body = rules.network_query_body(read_body())
    return jsonify(backend.start_network_query(patient_id, facility_id, body))


@bp.get("/network/query/<rid>")
def network_query_status(rid: str):
    return jsonify(current_backend().network_query_status(rules.uuid_param("requestId", rid)))


# ---------------------------------------------------------------- documents (routes/medical/document.ts)
@bp.post("/document/query")
def start_document_query():
    backend = current_backend()
    backend.check_rate("document_query")  # checkRateLimit("documentQuery") before patientAuthorization
    patient_id = q_or_fail("patientId")
    backend.get_patient(patient_id)
    facility_id = q("facilityId")
    q("override")
    metadata = rules.request_metadata(read_body())
    q("commonwell")
    q("carequality")
    return jsonify(backend.start_document_query(patient_id, facility_id, metadata))


@bp.get("/document/query")
def document_query_status():
    patient_id = q_or_fail("patientId")
    return jsonify(current_backend().get_document_query(patient_id))


@bp.get("/document")
def list_documents():
    patient_id = q_or_fail("patientId")
    backend = current_backend()
    backend.get_patient(patient_id)
    date_from, date_to, _content, output = rules.document_list_query(query_object())
    return jsonify({"documents": backend.list_documents(patient_id, date_from, date_to, output=output)})


@bp.get("/document/download-url")
@bp.get("/document/downloadUrl")
def document_url():
    file_name = q_or_fail("fileName")
    conversion_type = rules.document_conversion_type(q("conversionType"))
    return jsonify(current_backend().document_url(file_name, conversion_type))


@bp.post("/document/download-url/bulk")
def bulk_urls():
    patient_id = q_or_fail("patientId")
    backend = current_backend()
    backend.get_patient(patient_id)
    return jsonify(backend.start_bulk_urls(patient_id, rules.request_metadata(read_body())))


# ---------------------------------------------------------------- settings (routes/settings.ts, mounted at /settings)
@settings_bp.get("/settings")
def get_settings():
    return jsonify(current_backend().get_settings())


@settings_bp.post("/settings")
def update_settings():
    url, mr_filters = rules.settings_update(read_body())
    return jsonify(current_backend().update_settings(url, mr_filters))


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


@uploads_bp.put("/<token>/<path:name>")
def put_upload(token: str, name: str):
    """The presigned PUT of a bulk patient create's CSV: 200 with an empty body and an ETag, as S3 answers;
    S3's XML errors otherwise (expired after 10 minutes; the fake also refuses a second use)."""
    request.max_content_length = MAX_UPLOAD_BYTES
    content = request.get_data(cache=False)
    try:
        backend = current_backend()
        if not backend.upload_document(token, name, content, request.headers.get("Content-Type")):
            backend.upload_bulk_file(token, name, content, request.headers.get("Content-Type"))
    except RequestExpired:
        return _s3_error("AccessDenied", "Request has expired", 403)
    except NoSuchKey:
        return _s3_error("NoSuchKey", "The specified key does not exist.", 404)
    except UploadRefused as e:
        return _s3_error(e.code, str(e) or None, 403)
    import hashlib

    return Response(b"", status=200, headers={"ETag": f'"{hashlib.md5(content).hexdigest()}"'})


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
    return Response(f.body(), status=200, content_type=f.content_type)
