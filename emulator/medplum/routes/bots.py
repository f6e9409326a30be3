"""The bot operations' HTTP side: `Bot/{id}/$execute` (and `Bot/$execute?identifier=`), `Bot/{id}/$deploy`,
`job/{id}/status` — request parsing and response rendering around `BotService` (bots.py holds Medplum's rules)."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from .. import jsonsafe
from ..bots import response_body
from ..errors import BadRequest, accepted_outcome, all_ok
from ..httpio import (
    FORM_TYPE,
    HL7_V2,
    JSON_TYPES,
    current_backend,
    is_extended_mode,
    json_response,
    lower_headers,
    outcome_response,
    parse_form,
    parse_json_bytes,
    read_body,
    without_extended_meta,
)

# Medplum echoes the request's content type only when it is exactly one of these (execute.ts).
MIRRORED_CONTENT_TYPES = ("text/plain", HL7_V2)


def _execute_input(raw_body: bool = False) -> tuple[Any, str | None]:
    content_type = request.headers.get("Content-Type")
    if request.method == "GET":
        return {k: (v if len(v) > 1 else v[0]) for k, v in request.args.lists()}, content_type
    limit = current_backend().settings.max_json_bytes
    mimetype = request.mimetype
    if mimetype in JSON_TYPES:
        data = read_body(request, limit)
        # malformed JSON is a 400 even for rawBody bots; unpaired surrogates reach the bot as on Medplum
        parsed = parse_json_bytes(data, allow_lone_surrogates=True)
        # Bot.rawBody: the bot gets the original UTF-8 JSON text (what a webhook signature covers).
        return (data.decode("utf-8") if raw_body else parsed), content_type
    if mimetype in ("text/plain", HL7_V2):
        data = read_body(request, limit * 100)
        return data.decode("utf-8", "replace"), content_type
    if mimetype == FORM_TYPE:
        return parse_form(read_body(request, limit)), content_type
    return {}, content_type


def _response_content_type() -> str:
    ct = request.headers.get("Content-Type")
    if ct in MIRRORED_CONTENT_TYPES:
        return ct
    return "application/json"


def execute_handler(principal, bot_id: str | None) -> Response:
    backend = current_backend()
    bot = backend.bots.bot_for(principal, bot_id, request.args.get("identifier"))
    # Bot.rawBody exists from 5.2 (a release without it refuses the element: no stored Bot has it there)
    input, content_type = _execute_input(raw_body=bot.get("rawBody") is True and backend.release.raw_body)
    kwargs = backend.bots.caller_run(
        bot,
        principal,
        input=input,
        content_type=content_type,
        headers=lower_headers(request),
        trace_id=request.headers.get("X-Trace-Id") or request.headers.get("traceparent"),
    )
    if request.headers.get("Prefer") == "respond-async":
        job = backend.bots.start_async(bot, kwargs, request.url)
        location = f"{backend.base_url}fhir/R4/job/{job['id']}/status"
        return outcome_response(accepted_outcome(location))
    run = backend.bots.execute(bot, trigger="execute", **kwargs)
    body = response_body(run)
    status = 200 if run.success else 400
    ctype = _response_content_type()
    if isinstance(body, str):  # express res.send(string): UTF-8, an unpaired surrogate becomes U+FFFD
        return Response(jsonsafe.scrub_text(body).encode("utf-8"), status=status, content_type=_with_charset(ctype))
    payload = jsonsafe.dumps_bytes(body)
    return Response(payload, status=status, content_type=_with_charset(ctype))


def _with_charset(ct: str) -> str:
    return ct if "charset" in ct else f"{ct}; charset=utf-8"


def deploy_handler(principal, bot_id: str) -> Response:
    backend = current_backend()
    if request.mimetype not in JSON_TYPES:
        raise BadRequest("Unsupported content type")
    backend.bots.deploy(principal, bot_id, parse_json_bytes(read_body(request, backend.settings.max_json_bytes)))
    return outcome_response(all_ok())


def job_status_handler(principal, job_id: str) -> Response:
    backend = current_backend()
    job = backend.bots.job_for(principal, job_id)
    if not is_extended_mode(request):
        job = without_extended_meta(job)
    if job.get("status") in ("completed", "error", "cancelled"):
        return json_response(job, 200)
    location = f"{backend.base_url}fhir/R4/job/{job_id}/status"
    return json_response(job, 202, headers={"Content-Location": location})
