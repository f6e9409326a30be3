"""Bot `$execute`, `$deploy`, async jobs, execution AuditEvents and the run log.

Facts from Medplum (packages/server/src/fhir/operations/execute.ts, bots/execute.ts,
bots/utils.ts, util/auditevent.ts, fhir/operations/deploy.ts, fhir/operations/utils/asyncjobexecutor.ts,
fhir/job.ts):
- The Bot is read first *as the caller* (404/403 from the caller's access), by id or by
  `searchOne(Bot, identifier=<system|value>)`; nothing found → 400 "Must specify bot ID or identifier.".
- runAs: `Bot.runAsUser` → caller's membership, else the Bot's own ProjectMembership, else the caller's.
- input: POST → the parsed body, GET → the query string object; contentType = the request header.
- "Bots not enabled" unless Project.features has "bots"; runtimeVersion other than vmcontext/awslambda →
  "Unsupported bot runtime"; no executableCode url → "No executable code"; url not `Binary/` →
  "Executable code is not a Binary".
- secrets = Project.secret by name; the bot gets a fresh access token of the runAs membership.
- Response: result undefined → allOk (success) or badRequest(logResult); numbers → strings; status
  200/400; content type = the request's Content-Type when exactly text/plain or
  x-application/hl7-v2+er7, else application/json.
- `Prefer: respond-async` → AsyncJob {status: accepted, request, requestTime}, 202 accepted outcome
  with Content-Location `<base>fhir/R4/job/<id>/status`; the job ends `completed` with output
  Parameters (responseBody / outcome) or `error`. GET on the status URL: 202 + AsyncJob while running,
  200 + AsyncJob once completed/error/cancelled.
- AuditEvent (unless auditEventTrigger never / on-error+success / on-output+empty):
  type {system: https://medplum.com/CodeSystem/audit-event, code: execute}, outcome "0"/"4",
  outcomeDesc = the last 10 KiB of the log, period, recorded, agent [requester (requestor true),
  runAs profile (requestor false)], source.observer = Bot, entity = bot, input resource, subscription
  (roles: Patient 1, Subscription 9, else 4 Domain).
- $deploy: body {code, filename='index.js'}; missing code → 400 "Missing code"; Bot read as the caller;
  Binary {contentType: text/javascript}; Bot.executableCode {contentType, url: Binary/<id>, title:
  filename}; answers allOk.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..jsbehaviour import js_number_to_string
from . import jsonsafe
from .errors import BadRequest, FhirError, all_ok
from .fhir.principal import Principal
from .fhir.schema import ID_RE
from .fhir.system import SystemFhir
from .ids import now_iso, ref, ref_id
from .projects import Projects
from .releases import Release
from .runs import RunStore
from .runtime.lazy import LazyRuntime
from .runtime.pool import ExecRequest

log = logging.getLogger("medport.emulator.medplum.bots")

AUDIT_TYPE = {"system": "https://medplum.com/CodeSystem/audit-event", "code": "execute"}
TRACING_EXTENSION = "https://medplum.com/fhir/StructureDefinition/tracing"
LOG_TAIL = 10 * 1024


@dataclass
class BotRun:
    success: bool
    returned: bool = False
    value: Any = None
    logs: str = ""
    error: str | None = None
    duration_ms: float = 0.0
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    audit_event_id: str | None = None


def _entity_role(resource: dict) -> dict:
    rt = resource.get("resourceType")
    if rt == "Patient":
        return {"code": "1", "display": "Patient"}
    if rt == "Subscription":
        return {"code": "9", "display": "Subscriber"}
    return {"code": "4", "display": "Domain"}


def _agent(who: Any, requestor: bool) -> dict:
    return {"who": who, "requestor": requestor} if isinstance(who, dict) and who else {"requestor": requestor}


def _tracing_extension(trace_id: str | None) -> dict | None:
    """server context.ts buildTracingExtension: the request's id and trace id as `valueId`s (ids only: a trace
    id that is not a FHIR id is left out rather than stored invalid)."""
    parts = [{"url": "requestId", "valueId": str(uuid.uuid4())}]
    if trace_id and ID_RE.match(trace_id):
        parts.append({"url": "traceId", "valueId": trace_id})
    return {"url": TRACING_EXTENSION, "extension": parts}


def _is_resource_with_id(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("resourceType"), str) and isinstance(v.get("id"), str)


class BotService:
    """Finds, deploys and runs bots the way Medplum's operations do; used by $execute, $deploy, async jobs,
    subscriptions and cron."""

    def __init__(
        self,
        fhir: SystemFhir,
        projects: Projects,
        *,
        runtime: LazyRuntime,
        runs: RunStore,
        release: Release,
        issue_token: Callable[[dict], str],
        internal_base_url: str,
    ):
        self._fhir = fhir
        self._projects = projects
        self._runtime = runtime
        self._runs = runs
        self._release = release
        self._issue_token = issue_token
        self._internal_base_url = internal_base_url
        self._tokens: dict[tuple, tuple[float, str]] = {}
        self._bots_seen: dict[tuple, tuple[int, Principal, dict]] = {}
        self._generation = 0
        self._code_cache: OrderedDict[str, str] = OrderedDict()
        self._code_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._jobs_running = 0

    # -- lookup (execute.ts getBotForRequest, deploy.ts) -------------------------------------
    def invalidate(self) -> None:
        """A write to a Bot or to who may do what: the Bots read for callers are read again."""
        self._generation += 1
        self._bots_seen.clear()

    def bot_for(self, principal: Principal, bot_id: str | None, identifier: str | None = None) -> dict:
        """The Bot an operation names, read as the caller (their 404/403) and then as the system. By id, the Bot as
        last read for this caller until a write invalidates it (Medplum reads it through its cache too); the same
        dict is handed out, callers only read it."""
        if not bot_id:
            return self._read_bot(principal, None, identifier)
        gen = self._generation
        hit = self._bots_seen.get((id(principal), bot_id))
        if hit is not None and hit[0] == gen and hit[1] is principal:
            return hit[2]
        bot = self._read_bot(principal, bot_id, None)
        if len(self._bots_seen) > 1024:
            self._bots_seen.clear()
        self._bots_seen[(id(principal), bot_id)] = (gen, principal, bot)
        return bot

    def _read_bot(self, principal: Principal, bot_id: str | None, identifier: str | None) -> dict:
        bot = None
        if bot_id:
            bot = self._fhir_ok(self._fhir.call("GET", f"Bot/{bot_id}", principal=principal))
        elif identifier:
            found = self._fhir_ok(
                self._fhir.call("GET", "Bot", [("identifier", identifier), ("_count", "1")], principal=principal)
            )
            entries = [
                e.get("resource")
                for e in (found or {}).get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "Bot"
            ]
            bot = entries[0] if entries else None
        if bot is None:
            raise BadRequest("Must specify bot ID or identifier.")
        # then as the system, for everything (Medplum reads it again with the system repo)
        return self._fhir.read("Bot", bot["id"])

    @staticmethod
    def _fhir_ok(resp: Any) -> Any:
        """The body of a call made as the caller; its refusal (404, 403, ...) as it is."""
        if resp.status >= 300:
            raise FhirError(resp.body)
        return resp.body

    def job_for(self, principal: Principal, job_id: str) -> dict:
        """An AsyncJob, read as the caller (job.ts)."""
        return self._fhir_ok(self._fhir.call("GET", f"AsyncJob/{job_id}", principal=principal))

    # -- $deploy -----------------------------------------------------------------------------
    def deploy(self, principal: Principal, bot_id: str, body: Any) -> None:
        """deploy.ts: `{code, filename}` (missing code: 400), the Bot read as the caller, its Project must have
        the `bots` feature; the code is stored as the caller."""
        code = body.get("code") if isinstance(body, dict) else None
        if not code or not isinstance(code, str):
            raise BadRequest("Missing code")
        self._fhir_ok(self._fhir.call("GET", f"Bot/{bot_id}", principal=principal))
        bot = self._fhir.read("Bot", bot_id)
        project_id = (bot.get("meta") or {}).get("project") or ""
        project = self._fhir.try_read("Project", project_id) or self._projects.project()
        if "bots" not in (project.get("features") or []):
            raise BadRequest("Bots not enabled")
        filename = body.get("filename") or "index.js"
        self.deploy_code(bot, code, filename if isinstance(filename, str) else "index.js", principal)

    def deploy_code(self, bot: dict, code: str, filename: str = "index.js", principal: Principal | None = None) -> dict:
        """Store the code as a Binary and point Bot.executableCode at it (as `principal`, default system)."""
        content_type = "text/javascript"
        binary = {
            "resourceType": "Binary",
            "contentType": content_type,
            "data": base64.b64encode(code.encode("utf-8")).decode("ascii"),
        }
        with self._fhir.transaction():  # a refused Bot update leaves no orphan Binary behind
            created = self._fhir_ok(self._fhir.call("POST", "Binary", body=binary, principal=principal))
            updated = dict(bot)
            updated["executableCode"] = {
                "contentType": content_type,
                "url": f"Binary/{created['id']}",
                "title": filename,
            }
            return self._fhir_ok(self._fhir.call("PUT", f"Bot/{bot['id']}", body=updated, principal=principal))

    # -- helpers ----------------------------------------------------------------------------
    def _load_code(self, url: str) -> str:
        bid = url.split("/", 1)[1].split("/")[0]
        with self._code_lock:
            if bid in self._code_cache:
                self._code_cache.move_to_end(bid)
                return self._code_cache[bid]
        # the Binary's `data`, or what a raw upload (`medport deploy`) stored beside it
        _, content = self._fhir.service.binary_content(self._fhir.principal, bid)
        code = content.decode("utf-8", "replace")
        with self._code_lock:
            self._code_cache[bid] = code
            while len(self._code_cache) > 256:
                self._code_cache.popitem(last=False)
        return code

    def _token(self, run_as: dict) -> str:
        """An access token for the bot's membership (Medplum issues one per execution; the emulator reuses one for a
        minute: the same claims, and signing costs as much as the rest of a trivial execution)."""
        key = (run_as.get("id"), (run_as.get("profile") or {}).get("reference"))
        cache = self._tokens
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        token = self._issue_token(run_as)
        if len(cache) > 256:
            cache.clear()
        cache[key] = (now + 60.0, token)
        return token

    def run_as_for(self, bot: dict, caller_membership: dict | None) -> dict | None:
        if bot.get("runAsUser") and caller_membership:
            return caller_membership
        return self._projects.membership_for_profile(f"Bot/{bot['id']}") or caller_membership

    def secrets(self, run_as: dict | None) -> dict:
        project = self._projects.project_of(ref_id((run_as or {}).get("project")))
        return {s["name"]: s for s in project.get("secret") or [] if isinstance(s, dict) and s.get("name")}

    # -- execution --------------------------------------------------------------------------
    def caller_run(
        self,
        bot: dict,
        principal: Principal,
        *,
        input: Any,
        content_type: str | None,
        headers: dict,
        trace_id: str | None,
    ) -> dict:
        """What `execute` needs for a run a caller asks for ($execute): run as whom (runAsUser: the caller), asked
        by whom."""
        return dict(
            run_as=self.run_as_for(bot, principal.membership),
            input=input,
            content_type=content_type,
            headers=headers,
            requester={"reference": principal.profile} if principal.profile else None,
            trace_id=trace_id,
        )

    def execute(
        self,
        bot: dict,
        *,
        run_as: dict | None,
        input: Any,
        content_type: str | None,
        headers: dict | None = None,
        requester: dict | None = None,
        trigger: str = "execute",
        subscription: dict | None = None,
        trace_id: str | None = None,
        loop_message: str | None = None,
    ) -> BotRun:
        start_iso = now_iso()
        t0 = time.perf_counter()
        trace_id = trace_id or str(uuid.uuid4())
        run = self._execute_inner(bot, run_as, input, content_type, headers, requester, trace_id, loop_message)
        run.duration_ms = run.duration_ms or (time.perf_counter() - t0) * 1000
        try:
            run.audit_event_id = self._audit(bot, run_as, requester, input, subscription, start_iso, run, trace_id)
        except Exception:
            log.exception("could not write the execution AuditEvent")
        self._record(bot, run, trigger, start_iso, subscription, input)
        return run

    def _execute_inner(self, bot, run_as, input, content_type, headers, requester, trace_id, loop_message) -> BotRun:
        if loop_message:
            return BotRun(success=False, logs=loop_message, error=loop_message)
        project_id = ref_id((run_as or {}).get("project")) or (bot.get("meta") or {}).get("project")
        if not self._projects.has_feature(project_id, "bots"):
            return BotRun(success=False, logs="Bots not enabled", error="Bots not enabled")
        if run_as is None:
            msg = "Could not find project membership for bot"
            return BotRun(success=False, logs=msg, error=msg)
        runtime = bot.get("runtimeVersion")
        if runtime not in ("vmcontext", "awslambda"):
            return BotRun(success=False, logs="Unsupported bot runtime", error="Unsupported bot runtime")
        code_url = (bot.get("executableCode") or {}).get("url")
        if not code_url:
            return BotRun(success=False, logs="No executable code", error="No executable code")
        if not str(code_url).startswith("Binary/"):
            msg = "Executable code is not a Binary"
            return BotRun(success=False, logs=msg, error=msg)
        try:
            code = self._load_code(code_url)
        except FhirError as e:
            return BotRun(success=False, logs=str(e), error=str(e))
        token = self._token(run_as)
        event = {
            "bot": ref(bot),
            "contentType": content_type,
            "input": input,
            "secrets": self.secrets(run_as),
            "traceId": trace_id,
            "requester": requester,
            "headers": headers or {},
        }
        timeout = bot.get("timeout")
        req = ExecRequest(
            bot_id=bot["id"],
            code=code,
            runtime=runtime,
            timeout_s=float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None,
            event=event,
            base_url=self._internal_base_url,
            access_token=token,
            filename=(bot.get("executableCode") or {}).get("title"),
            sandbox=self._release.sandbox,
        )
        res = self._runtime.get().execute(req)
        # console text is text: an unpaired surrogate a bot printed becomes U+FFFD, as when Node writes it out
        logs = jsonsafe.scrub_text(res.logs or "")
        error = jsonsafe.scrub_text(res.error) if res.error else res.error
        if not res.ok and error and error not in logs:
            logs = logs + ("\n" if logs and not logs.endswith("\n") else "") + error
        return BotRun(
            success=bool(res.ok),
            returned=bool(res.returned),
            value=res.value,
            logs=logs,
            error=None if res.ok else (error or "Bot execution failed"),
            duration_ms=res.duration_ms,
        )

    def _audit(
        self, bot, run_as, requester, input, subscription, start_iso, run: BotRun, trace_id: str | None = None
    ) -> str | None:
        """Medplum's createBotAuditEvent (server util/auditevent.ts; bots/utils.ts before 5.0.15): two agents
        (the requester, requestor; the runAs profile), `source.observer` and each entity's `what` made by
        createReference (so with the display: the Bot's name, a Patient's name, a Subscription's criteria), the
        bot's meta.account(s), and the tracing extension of the request (its request id and trace id)."""
        trigger = bot.get("auditEventTrigger") or "always"
        outcome_code = "0" if run.success else "4"
        if trigger == "never" or (trigger == "on-error" and run.success) or (trigger == "on-output" and not run.logs):
            return None
        if "resource" not in (bot.get("auditEventDestination") or ["resource"]):
            return None
        bot_meta = bot.get("meta") or {}
        meta = {k: bot_meta[k] for k in ("account", "accounts") if bot_meta.get(k)}
        shown = self._redaction(run_as)
        event = {
            "resourceType": "AuditEvent",
            "period": {"start": start_iso, "end": now_iso()},
            "recorded": now_iso(),
            "type": dict(AUDIT_TYPE),
            "agent": [_agent(shown(requester), True), _agent(shown((run_as or {}).get("profile")), False)],
            "source": {"observer": shown(ref(bot))},
            "entity": [
                {"what": shown(ref(r)), "role": _entity_role(r)}
                for r in (bot, input, subscription)
                if _is_resource_with_id(r)
            ],
            "outcome": outcome_code,
        }
        if meta:
            event["meta"] = meta
        desc = (run.logs or "")[-LOG_TAIL:]
        if desc.strip():
            event["outcomeDesc"] = desc  # FHIR strings may not be empty
        tracing = _tracing_extension(trace_id)
        if tracing:
            event["extension"] = [tracing]
        created = self._fhir.create_own(event)
        return created.get("id")

    def _redaction(self, run_as: dict | None):
        """server util/auditevent.ts applyOptionalRedaction: the Project setting `redactAuditEvents` drops every
        reference's display (from 5.0.4)."""
        project = self._projects.project_of(ref_id((run_as or {}).get("project")))
        redact = self._release.audit_redaction and any(
            isinstance(s, dict) and s.get("name") == "redactAuditEvents" and s.get("valueBoolean") is True
            for s in project.get("setting") or []
        )
        if not redact:
            return lambda r: r
        return lambda r: {k: v for k, v in r.items() if k != "display"} if isinstance(r, dict) else r

    def _record(self, bot, run: BotRun, trigger, start_iso, subscription, input) -> None:
        try:
            self._runs.add(
                {
                    "id": run.run_id,
                    "bot_id": bot.get("id"),
                    "bot_name": bot.get("name"),
                    "trigger": trigger,
                    "outcome": "success" if run.success else "failure",
                    "duration_ms": round(run.duration_ms, 3),
                    "logs": (run.logs or "")[-LOG_TAIL:],
                    "started": start_iso,
                    "error": run.error,
                    "subscription_id": (subscription or {}).get("id"),
                    "resource": f"{input['resourceType']}/{input['id']}" if _is_resource_with_id(input) else None,
                    "audit_event": run.audit_event_id,
                }
            )
        except Exception:
            log.exception("could not record the run")

    # -- async jobs -------------------------------------------------------------------------
    def jobs_running(self) -> int:
        with self._jobs_lock:
            return self._jobs_running

    def start_async(self, bot: dict, kwargs: dict, request_url: str) -> dict:
        job = self._fhir.create(
            {"resourceType": "AsyncJob", "status": "accepted", "request": request_url, "requestTime": now_iso()}
        )
        with self._jobs_lock:
            self._jobs_running += 1

        def work() -> None:
            try:
                run = self.execute(bot, trigger="async", **kwargs)
                body = response_body(run)
                updated = dict(job)
                updated.update(status="completed", transactionTime=now_iso(), output=out_parameters(body))
                self._fhir.update(updated)
            except Exception as e:  # the job records the failure
                log.exception("async bot execution failed")
                updated = dict(job)
                updated.update(status="error", transactionTime=now_iso())
                try:
                    self._fhir.update(updated)
                except Exception:
                    log.exception("could not update the AsyncJob")
                del e
            finally:
                with self._jobs_lock:
                    self._jobs_running -= 1

        threading.Thread(target=work, name=f"medport-asyncjob-{job['id'][:8]}", daemon=True).start()
        return job


def response_body(run: BotRun) -> Any:
    """Medplum's getResponseBodyFromResult."""
    if not run.success:
        return BadRequest(run.logs or run.error or "Bot execution failed").outcome
    if not run.returned:
        return all_ok()
    value = run.value
    if value is None:
        return ""  # express res.send(null) sends an empty body
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return js_number_to_string(value)
    return value


def out_parameters(body: Any) -> dict:
    """Medplum's getOutParametersFromResult."""
    if isinstance(body, str):
        return {
            "resourceType": "Parameters",
            "parameter": [{"name": "responseBody", "valueString": jsonsafe.scrub_text(body)}],
        }
    if isinstance(body, bool):
        return {"resourceType": "Parameters", "parameter": [{"name": "responseBody", "valueBoolean": body}]}
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return {"resourceType": "Parameters", "parameter": [{"name": "outcome", "resource": body}]}
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "responseBody", "valueString": json.dumps(body, separators=(",", ":"))}],
    }
