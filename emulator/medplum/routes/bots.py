"""The bot operations' HTTP side: `Bot/{id}/$execute` (and `Bot/$execute?identifier=`), `Bot/{id}/$deploy`,
`job/{id}/status` — request parsing and response rendering around `BotService` (bots.py holds Medplum's rules)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Response, request

from .. import jsonsafe
from ..bots import deploy_code, response_body
from ..errors import BadRequest, FhirError, accepted_outcome, all_ok
from ..httpio import (
    FORM_TYPE,
    HL7_V2,
    JSON_TYPES,
    current_state,
    is_extended_mode,
    json_response,
    lower_headers,
    outcome_response,
    parse_form,
    parse_json_bytes,
    read_body,
    without_extended_meta,
)

if TYPE_CHECKING:
    from ..state import EmulatorState

# Medplum echoes the request's content type only when it is exactly one of these (execute.ts).
MIRRORED_CONTENT_TYPES = ("text/plain", HL7_V2)

def _bot_for_request(state: "EmulatorState", principal, bot_id: str | None) -> dict:
    if bot_id:
        # The Bot as last read for this caller, until any write to a Bot or to who may do what (the auth caches'
        # generation): Medplum reads it through its cache too. The same dict is handed out: callers only read it.
        cache = state.__dict__.setdefault("_execute_bot_cache", {})
        gen = state.auth._generation
        hit = cache.get((id(principal), bot_id))
        if hit is not None and hit[0] == gen and hit[1] is principal:
            return hit[2]
        bot = _read_bot(state, principal, bot_id)
        if len(cache) > 1024:
            cache.clear()
        cache[(id(principal), bot_id)] = (gen, principal, bot)
        return bot
    return _read_bot(state, principal, None)


def _read_bot(state: "EmulatorState", principal, bot_id: str | None) -> dict:
    if bot_id:
        resp = state.call("GET", f"Bot/{bot_id}", principal=principal)
        if resp.status != 200:
            raise FhirError(resp.body)
        bot = resp.body
    else:
        identifier = request.args.get("identifier")
        bot = None
        if identifier:
            resp = state.call("GET", "Bot", [("identifier", identifier), ("_count", "1")], principal=principal)
            if resp.status != 200:
                raise FhirError(resp.body)
            entries = [e.get("resource") for e in (resp.body or {}).get("entry") or []
                       if (e.get("resource") or {}).get("resourceType") == "Bot"]
            bot = entries[0] if entries else None
        if bot is None:
            raise BadRequest("Must specify bot ID or identifier.")
    # then as the system, for everything (Medplum reads it again with the system repo)
    return state.read("Bot", bot["id"])


def _execute_input(raw_body: bool = False) -> tuple[Any, str | None]:
    content_type = request.headers.get("Content-Type")
    if request.method == "GET":
        return {k: (v if len(v) > 1 else v[0]) for k, v in request.args.lists()}, content_type
    limit = current_state().settings.max_json_bytes
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
    state = current_state()
    bot = _bot_for_request(state, principal, bot_id)
    # Bot.rawBody exists from 5.2 (a release without it refuses the element: no stored Bot has it there)
    input, content_type = _execute_input(raw_body=bot.get("rawBody") is True and state.release.raw_body)
    run_as = state.bots.run_as_for(bot, principal.membership)
    kwargs = dict(run_as=run_as, input=input, content_type=content_type, headers=lower_headers(request),
                  requester={"reference": principal.profile} if principal.profile else None,
                  trace_id=request.headers.get("X-Trace-Id") or request.headers.get("traceparent"))
    if request.headers.get("Prefer") == "respond-async":
        job = state.bots.start_async(principal, bot, kwargs, request.url)
        location = f"{state.base_url}fhir/R4/job/{job['id']}/status"
        return outcome_response(accepted_outcome(location))
    run = state.bots.execute(bot, trigger="execute", **kwargs)
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
    state = current_state()
    if request.mimetype not in JSON_TYPES:
        raise BadRequest("Unsupported content type")
    body = parse_json_bytes(read_body(request, state.settings.max_json_bytes))
    code = body.get("code") if isinstance(body, dict) else None
    if not code or not isinstance(code, str):
        raise BadRequest("Missing code")
    resp = state.call("GET", f"Bot/{bot_id}", principal=principal)
    if resp.status != 200:
        raise FhirError(resp.body)
    bot = state.read("Bot", bot_id)
    project = state.try_read("Project", (bot.get("meta") or {}).get("project") or "") or state.project()
    if "bots" not in (project.get("features") or []):
        raise BadRequest("Bots not enabled")
    filename = body.get("filename") or "index.js"
    if not isinstance(filename, str):
        filename = "index.js"
    deploy_code(state, bot, code, filename, principal)
    return outcome_response(all_ok())


def job_status_handler(principal, job_id: str) -> Response:
    state = current_state()
    resp = state.call("GET", f"AsyncJob/{job_id}", principal=principal)
    if resp.status != 200:
        raise FhirError(resp.body)
    job = resp.body
    if not is_extended_mode(request):
        job = without_extended_meta(job)
    if job.get("status") in ("completed", "error", "cancelled"):
        return json_response(job, 200)
    location = f"{state.base_url}fhir/R4/job/{job_id}/status"
    return json_response(job, 202, headers={"Content-Location": location})
