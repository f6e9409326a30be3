"""Thin Flask layer of the fake Metriport sandbox: parse, call `MetriportState`, render.

Routes under `/medical/v1` need the `x-api-key` header (missing → 401, wrong → 403).
Settings routes answer both at `/settings...` (where @metriport/api-sdk calls them: its
settings calls use the bare base address) and at `/medical/v1/settings...`.
Developer API (no key): `/_fake/faults` (GET/POST), `/_fake/webhooks`, `/_fake/reset`,
`/_fake/state`, and the presigned files at `/_fake/files/<token>/<name>`.
"""
from __future__ import annotations

import time

from flask import Flask, Response, jsonify, request

from .errors import BadRequest, Forbidden, MetriportError, Unauthorized, ValidationError
from .state import MetriportState

API_KEY_HEADER = "x-api-key"


def _json_body(required: bool = False):
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ValidationError(["body: Required"])
        return None
    try:
        import json

        return json.loads(raw)
    except ValueError:
        raise BadRequest("Malformed JSON body") from None


def create_app(state: MetriportState, *, api_key: str, public_base_url: str | None = None) -> Flask:
    app = Flask("fake_metriport")
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["metriport_state"] = state
    if public_base_url:
        state.public_base_url = public_base_url.rstrip("/")

    @app.errorhandler(MetriportError)
    def _metriport_error(err: MetriportError):
        resp = jsonify(err.body())
        resp.status_code = err.status
        for k, v in err.headers.items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(404)
    def _not_found(_e):
        return jsonify({"status": 404, "title": "Not Found", "detail": f"Cannot {request.method} {request.path}", "name": "Not Found"}), 404

    @app.errorhandler(405)
    def _not_allowed(_e):
        return jsonify({"status": 405, "title": "Method Not Allowed", "detail": f"Cannot {request.method} {request.path}", "name": "Method Not Allowed"}), 405

    @app.before_request
    def _auth_and_faults():
        path = request.path
        if path.startswith("/_fake/") or path == "/_fake":
            return None
        key = request.headers.get(API_KEY_HEADER)
        if not key:
            raise Unauthorized("Unauthorized")
        if key != api_key:
            raise Forbidden("Forbidden")
        slow = state.faults.get("slow_ms") or 0
        if slow:
            time.sleep(slow / 1000.0)
        if path.startswith("/medical/v1"):
            state.maybe_fail()
        return None

    @app.after_request
    def _log_call(resp):
        if request.path.startswith("/medical/v1"):
            state.record_call(request.method, request.path, resp.status_code)
        return resp

    def created(body):
        return jsonify(body), 201

    # ---------------------------------------------------------------- facility
    @app.get("/medical/v1/facility")
    def list_facilities():
        return jsonify({"facilities": state.list_facilities()})

    @app.post("/medical/v1/facility")
    def create_facility():
        return created(state.create_facility(_json_body(required=True)))

    @app.get("/medical/v1/facility/<fid>")
    def get_facility(fid):
        return jsonify(state.get_facility(fid))

    # ---------------------------------------------------------------- patient
    @app.post("/medical/v1/patient")
    def create_patient():
        patient, _created = state.create_patient(_json_body(required=True), request.args.get("facilityId"))
        return created(patient)

    @app.get("/medical/v1/patient")
    def list_patients():
        patients = state.list_patients(request.args.get("facilityId"))
        return jsonify({"meta": {"itemsOnPage": len(patients)}, "patients": patients})

    @app.post("/medical/v1/patient/match")
    def match_patient():
        return jsonify(state.match_patient(_json_body(required=True)))

    @app.get("/medical/v1/patient/external-id")
    def patient_by_external_id():
        ext = request.args.get("externalId")
        if not ext:
            raise ValidationError(["externalId: Required"])
        return jsonify(state.get_patient_by_external_id(ext))

    @app.get("/medical/v1/patient/<pid>")
    def get_patient(pid):
        return jsonify(state.get_patient(pid))

    @app.put("/medical/v1/patient/<pid>")
    def update_patient(pid):
        return jsonify(state.update_patient(pid, _json_body(required=True), request.args.get("facilityId")))

    @app.delete("/medical/v1/patient/<pid>")
    def delete_patient(pid):
        state.delete_patient(pid)
        return Response(status=204)

    @app.post("/medical/v1/patient/<pid>/consolidated/query")
    def start_consolidated(pid):
        a = request.args
        q = state.start_consolidated_query(pid, resources=a.get("resources"), date_from=a.get("dateFrom"),
                                           date_to=a.get("dateTo"), conversion_type=a.get("conversionType"),
                                           body=_json_body())
        return jsonify(q)

    @app.get("/medical/v1/patient/<pid>/consolidated/query")
    def consolidated_status(pid):
        return jsonify(state.consolidated_queries(pid))

    @app.get("/medical/v1/patient/<pid>/consolidated/query/<rid>")
    def consolidated_single(pid, rid):
        return jsonify(state.consolidated_query(pid, rid))

    # ---------------------------------------------------------------- documents
    def _patient_id_arg() -> str:
        pid = request.args.get("patientId")
        if not pid:
            raise ValidationError(["patientId: Required"])
        return pid

    @app.post("/medical/v1/document/query")
    def start_document_query():
        return jsonify(state.start_document_query(_patient_id_arg(), request.args.get("facilityId"), _json_body()))

    @app.get("/medical/v1/document/query")
    def document_query_status():
        return jsonify(state.get_document_query(_patient_id_arg()))

    @app.get("/medical/v1/document")
    def list_documents():
        return jsonify({"documents": state.list_documents(_patient_id_arg(), request.args.get("dateFrom"), request.args.get("dateTo"))})

    @app.get("/medical/v1/document/download-url")
    def document_url():
        return jsonify(state.document_url(request.args.get("fileName"), request.args.get("conversionType")))

    @app.post("/medical/v1/document/download-url/bulk")
    def bulk_urls():
        return jsonify(state.start_bulk_urls(_patient_id_arg(), _json_body()))

    # ---------------------------------------------------------------- settings
    for prefix in ("", "/medical/v1"):
        app.add_url_rule(f"{prefix}/settings", f"get_settings{prefix}", lambda: jsonify(state.get_settings()), methods=["GET"])
        app.add_url_rule(f"{prefix}/settings", f"post_settings{prefix}",
                         lambda: jsonify(state.update_settings(_json_body(required=True))), methods=["POST"])
        app.add_url_rule(f"{prefix}/settings/webhook", f"webhook_status{prefix}",
                         lambda: jsonify(state.webhook_status()), methods=["GET"])

        def _retry():
            state.retry_webhooks()
            return Response("OK", status=200, mimetype="text/plain")

        app.add_url_rule(f"{prefix}/settings/webhook/retry", f"webhook_retry{prefix}", _retry, methods=["POST"])

    # ---------------------------------------------------------------- developer API
    @app.get("/_fake/faults")
    def get_faults():
        return jsonify(state.faults)

    @app.post("/_fake/faults")
    def set_faults():
        body = _json_body(required=True)
        if not isinstance(body, dict):
            raise ValidationError(["body: Expected object"])
        return jsonify(state.set_faults(**body))

    @app.get("/_fake/webhooks")
    def webhooks_log():
        return jsonify({"deliveries": state.deliveries_log(include_body=request.args.get("body", "true") != "false")})

    @app.post("/_fake/reset")
    def reset():
        state.reset()
        return jsonify({"ok": True, "facilityId": state.seeded_facility_id})

    @app.get("/_fake/state")
    def fake_state():
        return jsonify({"facilityId": state.seeded_facility_id, "patients": state.list_patients(),
                        "knownFirstNames": sorted(d.first_name for d in state.datasets.values()),
                        "settings": state.get_settings() | state.webhook_status(), "faults": state.faults})

    @app.post("/_fake/settings/webhook")
    def fake_set_webhook():
        body = _json_body(required=True) or {}
        return jsonify(state.set_webhook(body.get("webhookUrl"), body.get("webhookKey"), ping=bool(body.get("ping"))))

    @app.get("/_fake/files/<token>/<path:name>")
    def files(token, name):
        try:
            f = state.get_file(token)
        except PermissionError:
            return Response('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                            "<Message>Request has expired</Message></Error>", status=403, mimetype="application/xml")
        except MetriportError:
            return Response('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                            "<Message>The specified key does not exist.</Message></Error>", status=404, mimetype="application/xml")
        if name != f.name:
            return Response('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code></Error>',
                            status=403, mimetype="application/xml")
        return Response(f.content, status=200, content_type=f.content_type)

    return app
