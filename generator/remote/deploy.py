"""`medport deploy`: make a Medplum project match the config, idempotently.

One path for everything (the CLI, `medport emulate`'s deployment at start, the tests):
`Deployer.run()` reads what exists, compares it with what the config renders, and
creates or updates only what differs, reporting created / updated / unchanged per
resource. With dry_run it stops after reading. Order matters: policies first (bots and
the client reference them), then bots (subscriptions point at them), then the rest.

It reads the server's release first (`GET /healthcheck`, server healthcheck.ts) and writes only what that
release accepts: a Medplum older than the oldest supported one is refused before anything is written, and the
Bot elements a release does not know (Bot.rawBody before 5.2) are left out — the webhook bot then verifies
signatures over `JSON.stringify(event.input)`, which reproduces the body Metriport signed. A server that still
refuses an element as an additional property gets the Bot again without it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeGuard

import click

from medport.emulator.medplum.releases import NEWEST, OLDEST, OPTIONAL_BOT_ELEMENTS, Release, UnsupportedRelease
from medport.emulator.medplum.releases import release as medplum_release

from ..generation import render
from ..generation.config import Config
from ..generation.manifest import (
    POLICY_OF_MEMBER,
    WEBHOOK_CLIENT_KEY,
    access_policies,
    bot_resource,
    client_application,
    stale_subscription_keys,
    subscriptions,
    webhook_execute_url,
)
from ..options import config_option, load_or_exit, medplum_options, out_option
from .medplum_http import MedplumError, MedplumHttp

SECRET_NAMES = ("METRIPORT_API_KEY", "METRIPORT_WEBHOOK_KEY", "METRIPORT_BASE_URL")
SERVER_FIELDS = {"id", "meta", "executableCode", "sourceCode", "code", "secret", "retiringSecret"}


@dataclass
class Change:
    kind: str
    name: str
    status: str  # "create" | "update" | "unchanged" (planned) -> "created" | "updated" | "unchanged"
    detail: str = ""


@dataclass
class DeployResult:
    changes: list[Change] = field(default_factory=list)
    project_id: str = ""
    bot_ids: dict[str, str] = field(default_factory=dict)
    client_id: str = ""
    client_secret: str | None = None  # only when the client was created by this run
    webhook_url: str = ""
    warnings: list[str] = field(default_factory=list)
    medplum_version: str = ""  # the server's release as /healthcheck says ("" when it did not say)
    omitted: list[str] = field(default_factory=list)  # Bot elements left out for that release ("rawBody")


def _same(existing: dict | None, desired: dict) -> TypeGuard[dict]:
    if existing is None:
        return False
    strip = lambda r: {k: v for k, v in r.items() if k not in SERVER_FIELDS}
    tags = lambda r: (r.get("meta") or {}).get("tag", [])
    return strip(existing) == strip(desired) and all(t in tags(existing) for t in tags(desired))


OMITTED_WHY = {
    "rawBody": " (the webhook bot verifies signatures over JSON.stringify(event.input), which "
    "reproduces the body Metriport signed)"
}
_ADDITIONAL_PROPERTY = re.compile(r'Invalid additional property "([A-Za-z]+)"')


def _refused_element(err: MedplumError, desired: dict) -> str | None:
    """The optional Bot element a 400 refused as an additional property (Medplum's validator,
    core typeschema/validation.ts), when the resource is a Bot that holds it."""
    if err.status != 400 or desired.get("resourceType") != "Bot":
        return None
    m = _ADDITIONAL_PROPERTY.search(str(err))
    return m.group(1) if m and m.group(1) in OPTIONAL_BOT_ELEMENTS and m.group(1) in desired else None


def _tag_query(resource: dict) -> str:
    t = resource["meta"]["tag"][0]
    return f"_tag={t['system']}|{t['code']}"


class Deployer:
    def __init__(
        self,
        cfg: Config,
        http: MedplumHttp,
        *,
        project_id: str | None = None,
        dry_run: bool = False,
        set_secrets: bool = False,
        secrets: dict[str, str] | None = None,
        echo: Callable[[str], None] = lambda s: None,
    ):
        self.cfg, self.http, self.dry_run, self.echo = cfg, http, dry_run, echo
        self.project_id = project_id
        self.set_secrets = set_secrets
        self.secrets = secrets if secrets is not None else {n: os.environ[n] for n in SECRET_NAMES if os.environ.get(n)}
        self.result = DeployResult()
        self.policy_ids: dict[str, str] = {}
        self._checked = False
        self.release: Release = medplum_release(NEWEST)
        self._refused_elements: set[str] = set()  # Bot elements the server refused as additional properties

    # -- bookkeeping ---------------------------------------------------------------------------
    def _record(self, kind: str, name: str, planned: str, detail: str = "") -> None:
        status = (
            planned
            if self.dry_run or planned == "unchanged"
            else {"create": "created", "update": "updated", "delete": "deleted"}[planned]
        )
        self.result.changes.append(Change(kind, name, status, detail))
        self.echo(f"  {status:<9} {kind} {name}" + (f" — {detail}" if detail else ""))

    def _upsert(self, step: str, existing: dict | None, desired: dict) -> dict:
        """PUT the desired resource over the existing one (keeping server-managed fields), or create it. A Bot
        element the server refuses as an additional property (a release older than medport knows it by its
        version) is left out and the write made again, once per element."""
        while True:
            try:
                return self._write(step, existing, desired)
            except MedplumError as e:
                element = _refused_element(e, desired)
                if element is None:
                    raise
                self._omit(element)
                desired = {k: v for k, v in desired.items() if k != element}

    def _write(self, step: str, existing: dict | None, desired: dict) -> dict:
        """One write: a conditional create on the resource's tag (a create repeated after a lost answer finds the
        first one), or a PUT over the existing one."""
        if existing is None:
            return self.http.fhir(
                step, "POST", desired["resourceType"], json_body=desired, headers={"If-None-Exist": _tag_query(desired)}
            )
        merged = {
            **{k: v for k, v in existing.items() if k in SERVER_FIELDS - {"meta"}},
            **desired,
            "id": existing["id"],
        }
        meta = dict(existing.get("meta") or {})
        meta["tag"] = [
            *[t for t in meta.get("tag", []) if t not in desired.get("meta", {}).get("tag", [])],
            *desired.get("meta", {}).get("tag", []),
        ]
        merged["meta"] = {"tag": meta["tag"]} if meta["tag"] else {}
        return self.http.fhir(step, "PUT", f"{desired['resourceType']}/{existing['id']}", json_body=merged)

    # -- the server's release ------------------------------------------------------------------
    def _server_release(self) -> None:
        """Which Medplum release answers (`GET /healthcheck` → `{ok, version: "5.1.26-<commit>"}`, no credentials
        needed): refuse one older than medport supports before anything is written; one that does not say is
        taken as the newest (a refused element is then dropped when the server refuses it)."""
        version = (self.http.healthcheck() or {}).get("version")
        if not isinstance(version, str) or not version.strip():
            self.echo(
                f"  note      {self.http.base_url}healthcheck did not say the server's version: writing what "
                f"Medplum {NEWEST} accepts"
            )
            return
        try:
            self.release = medplum_release(version, newer_ok=True)
        except UnsupportedRelease as e:
            raise MedplumError(
                "check the server's version", f"{e}: upgrade the server to Medplum {OLDEST} or newer"
            ) from None
        self.result.medplum_version = self.release.version

    def _omit(self, element: str) -> None:
        if element not in self.result.omitted:
            self.result.omitted.append(element)
            why = OMITTED_WHY.get(element, "")
            self.echo(
                f"  note      Medplum {self.result.medplum_version or '(version unknown)'} has no "
                f"Bot.{element}: left out{why}"
            )
        self._refused_elements.add(element)

    def _accepted_bot(self, desired: dict) -> dict:
        """The Bot as this server's release accepts it."""
        drop = set(self.release.refused_bot_elements(desired)) | (self._refused_elements & set(desired))
        for element in sorted(drop):
            self._omit(element)
        return {k: v for k, v in desired.items() if k not in drop}

    # -- steps ---------------------------------------------------------------------------------
    def _project(self) -> None:
        if not self.project_id:
            me = self.http.request("read project (auth/me)", "GET", "auth/me")
            self.project_id = ((me or {}).get("project") or {}).get("id") or ""
            if not self.project_id:
                raise MedplumError(
                    "read project", "the server did not say which project these credentials belong to — pass --project"
                )
        self.result.project_id = self.project_id

    def _features(self) -> None:
        """Project.features the bots need: `bots` to run at all, `cron` for the sweep that resumes messages
        whose processing was cut off. Only a Medplum super admin can enable them: warn, do not fail."""
        try:
            project = self.http.fhir("read project features", "GET", f"Project/{self.project_id}")
        except MedplumError:
            return  # the credentials may not read the Project: nothing to say
        have = set(project.get("features") or [])
        need = {"bots": "the bots cannot run"}
        if self.cfg.webhook_bot.sweep_cron.strip():
            need["cron"] = (
                "the webhook bot's sweep (webhook_bot.sweep_cron) never runs: a message whose processing "
                "was cut off is then resumed only when it is delivered again, when another message is "
                "processed, or by `medport replay --failed`"
            )
        for feature, why in need.items():
            if feature not in have:
                msg = f"Project {self.project_id} lacks the feature '{feature}': {why}. Ask your Medplum administrator to enable it."
                self.result.warnings.append(msg)
                self.echo(f"  warning   {msg}")

    def _policies(self) -> None:
        for desired in access_policies(self.cfg):
            key = desired["meta"]["tag"][0]["code"]
            step = f"AccessPolicy {key}"
            existing = self.http.search_one(step, "AccessPolicy", _tag_query(desired))
            if _same(existing, desired):
                self._record("AccessPolicy", key, "unchanged")
                self.policy_ids[key] = existing["id"]
                continue
            self._record("AccessPolicy", key, "update" if existing else "create")
            if not self.dry_run:
                self.policy_ids[key] = self._upsert(step, existing, desired)["id"]
            elif existing:
                self.policy_ids[key] = existing["id"]

    def _membership(self, step: str, profile: str, policy_key: str) -> None:
        policy_id = self.policy_ids.get(policy_key)
        if not policy_id:
            return  # dry run of a first deploy: the policy does not exist yet
        found = self.http.fhir(step, "GET", f"ProjectMembership?profile={profile}")
        members = [e["resource"] for e in found.get("entry", [])]
        if not members:
            raise MedplumError(
                step,
                f"no ProjectMembership for {profile}: it was not created through the admin API "
                "(POST /admin/projects/{id}/bot or /client). Delete it and deploy again.",
            )
        m = members[0]
        want = {"reference": f"AccessPolicy/{policy_id}"}
        if (m.get("accessPolicy") or {}).get("reference") == want["reference"]:
            return
        self._record("ProjectMembership", profile, "update", f"access policy {policy_key}")
        if not self.dry_run:
            self.http.request(
                step,
                "POST",
                f"admin/projects/{self.project_id}/members/{m['id']}",
                json_body={**m, "accessPolicy": want},
                idempotent=True,
            )  # the same state again

    def _bots(self) -> None:
        system = self.cfg.medplum.identifier_system
        code = render.render_bots(self.cfg)
        for spec in self.cfg.bots:
            step = f"Bot {spec.name}"
            desired = self._accepted_bot(bot_resource(self.cfg, spec))
            existing = self.http.search_one(step, "Bot", f"identifier={system}|{spec.identifier}")
            if existing is None:
                self._record("Bot", spec.name, "create")
                if self.dry_run:
                    continue
                policy = self.policy_ids[POLICY_OF_MEMBER[spec.key]]
                existing = self._create_member(
                    f"{step}: create",
                    "bot",
                    "Bot",
                    spec.name,
                    {
                        "name": spec.name,
                        "description": desired["description"],
                        "runtimeVersion": desired["runtimeVersion"],
                        "accessPolicy": {"reference": f"AccessPolicy/{policy}"},
                    },
                )
                existing = self._upsert(f"{step}: configure", existing, desired)
                self._deploy_code(step, existing, spec.filename, code[spec.filename])
                self.result.bot_ids[spec.key] = existing["id"]
                continue
            self.result.bot_ids[spec.key] = existing["id"]
            code_same = self._deployed_code_matches(existing, spec.filename, code[spec.filename])
            if _same(existing, desired) and code_same:
                self._record("Bot", spec.name, "unchanged")
            else:
                self._record(
                    "Bot",
                    spec.name,
                    "update",
                    "code" if _same(existing, desired) else "settings" + ("" if code_same else " and code"),
                )
                if not self.dry_run:
                    existing = self._upsert(step, existing, desired)
                    if not code_same:
                        self._deploy_code(step, existing, spec.filename, code[spec.filename])
            self._membership(f"{step}: membership", f"Bot/{existing['id']}", POLICY_OF_MEMBER[spec.key])

    def _create_member(self, step: str, kind: str, rtype: str, name: str, body: dict) -> dict:
        """`POST /admin/projects/{id}/{kind}` (a Bot or a ClientApplication with its membership). Not idempotent:
        after an answer the server may have sent after acting (5xx) it is not repeated blindly — the one it may
        have created (that name, not yet given medport's identifier or tag) is adopted instead."""
        path = f"admin/projects/{self.project_id}/{kind}"
        sent = datetime.now(UTC) - timedelta(minutes=2)  # what it may have created is not older (clock skew)
        try:
            return self.http.request(step, "POST", path, json_body=body)
        except MedplumError as e:
            if not e.maybe_applied:
                raise
            orphans = self._unconfigured(step, rtype, name, sent)
            if orphans:
                self.echo(f"  adopted   {rtype} {name} — created by the request answered HTTP {e.status}")
                return self.http.fhir(f"{step}: read", "GET", f"{rtype}/{orphans[-1]['id']}")
            return self.http.request(step, "POST", path, json_body=body)  # it had not acted: once more

    def _unconfigured(self, step: str, rtype: str, name: str, since: datetime) -> list[dict]:
        """Resources of that name updated since `since` without medport's identifier (Bot) or tag
        (ClientApplication), oldest first."""
        system = self.cfg.medplum.identifier_system
        after = since.isoformat(timespec="seconds").replace("+00:00", "Z")
        found = self.http.fhir(
            f"{step}: look for it",
            "GET",
            rtype,
            params={"name": name, "_lastUpdated": f"ge{after}", "_count": "20", "_sort": "_lastUpdated"},
        )
        mine = lambda r: (
            any(i.get("system") == system for i in r.get("identifier") or [])
            or any(t.get("system") == system for t in (r.get("meta") or {}).get("tag") or [])
        )
        return [e["resource"] for e in found.get("entry", []) if not mine(e["resource"])]

    @staticmethod
    def _code_filename(filename: str, code: str) -> str:
        # $deploy stores the filename as executableCode.title: carrying the code's hash there lets a
        # redeploy see "unchanged" without downloading the deployed Binary.
        digest = hashlib.sha256(code.encode("utf-8")).hexdigest()[:16]
        return f"{filename.removesuffix('.js')}.{digest}.js"

    def _deployed_code_matches(self, bot: dict, filename: str, code: str) -> bool:
        return (bot.get("executableCode") or {}).get("title") == self._code_filename(filename, code)

    def _deploy_code(self, step: str, bot: dict, filename: str, code: str) -> None:
        # Source first, uploaded raw like `medplum bot deploy` does, then the executable through $deploy.
        source = self.http.fhir(
            f"{step}: upload source",
            "POST",
            "Binary",
            data=code.encode("utf-8"),
            headers={"Content-Type": "text/javascript"},
        )
        bot = self.http.fhir(f"{step}: read", "GET", f"Bot/{bot['id']}")
        bot["sourceCode"] = {"contentType": "text/javascript", "title": filename, "url": f"Binary/{source['id']}"}
        self.http.fhir(f"{step}: set source", "PUT", f"Bot/{bot['id']}", json_body=bot)
        self.http.fhir(
            f"{step}: $deploy",
            "POST",
            f"Bot/{bot['id']}/$deploy",
            idempotent=True,  # the same code again
            json_body={"code": code, "filename": self._code_filename(filename, code)},
        )

    def _client(self) -> None:
        desired = client_application(self.cfg)
        step = "ClientApplication webhook client"
        existing = self.http.search_one(step, "ClientApplication", _tag_query(desired))
        if existing is None:
            self._record("ClientApplication", WEBHOOK_CLIENT_KEY, "create", "its secret is shown once below")
            if self.dry_run:
                return
            policy = self.policy_ids[POLICY_OF_MEMBER["webhook_client"]]
            created = self._create_member(
                f"{step}: create",
                "client",
                "ClientApplication",
                desired["name"],
                {
                    "name": desired["name"],
                    "description": desired["description"],
                    "accessPolicy": {"reference": f"AccessPolicy/{policy}"},
                },
            )
            self.result.client_secret = created.get("secret")
            existing = self._upsert(f"{step}: tag", created, desired)
        elif _same(existing, desired):
            self._record("ClientApplication", WEBHOOK_CLIENT_KEY, "unchanged")
        else:
            self._record("ClientApplication", WEBHOOK_CLIENT_KEY, "update")
            if not self.dry_run:
                existing = self._upsert(step, existing, desired)
        self.result.client_id = existing["id"]
        self._membership(
            f"{step}: membership", f"ClientApplication/{existing['id']}", POLICY_OF_MEMBER["webhook_client"]
        )

    def _subscriptions(self) -> None:
        placeholders = {f"urn:uuid:{s.id}": s.key for s in self.cfg.bots}
        for desired in subscriptions(self.cfg):
            key = desired["meta"]["tag"][0]["code"]
            bot_key = placeholders[desired["channel"]["endpoint"]]
            bot_id = self.result.bot_ids.get(bot_key, "<new bot>")
            placeholder = desired["channel"]["endpoint"]
            desired["channel"]["endpoint"] = f"Bot/{bot_id}"
            for e in desired.get("extension", []):  # the FHIRPath criteria name the Bot too
                if isinstance(e.get("valueString"), str):
                    e["valueString"] = e["valueString"].replace(placeholder, f"Bot/{bot_id}")
            step = f"Subscription {key}"
            existing = self.http.search_one(step, "Subscription", _tag_query(desired))
            if _same(existing, desired):
                self._record("Subscription", key, "unchanged")
                continue
            self._record("Subscription", key, "update" if existing else "create")
            if not self.dry_run:
                self._upsert(step, existing, desired)
        system = self.cfg.medplum.identifier_system
        for key in stale_subscription_keys(self.cfg):
            step = f"Subscription {key}"
            existing = self.http.search_one(step, "Subscription", f"_tag={system}|{key}")
            if existing is None:
                continue
            self._record("Subscription", key, "delete", "no longer wanted by the config")
            if not self.dry_run:
                self.http.fhir(step, "DELETE", f"Subscription/{existing['id']}")

    def missing_secrets(self) -> list[str]:
        return [n for n in SECRET_NAMES[:2] if not self.secrets.get(n)]

    def preflight(self) -> None:
        """Check every input before changing anything: the secrets to set, the server answering, the
        credentials accepted, the project known and administered by them."""
        if self._checked:
            return
        if self.set_secrets:
            missing = self.missing_secrets()
            if missing:
                raise MedplumError("check inputs", f"{' and '.join(missing)} not given: the Project secrets need them")
            base = self.secrets.get("METRIPORT_BASE_URL")
            if base and not base.startswith(("https://", "http://")):
                raise MedplumError("check inputs", f"METRIPORT_BASE_URL must be an http(s) URL, not {base!r}")
        self._server_release()
        self.http.login()
        self._project()
        try:
            self.http.request("check admin rights", "GET", f"admin/projects/{self.project_id}")
        except MedplumError as e:
            if e.status in (401, 403, 404):
                raise MedplumError(
                    "check admin rights",
                    f"client {self.http.client_id} cannot administer project "
                    f"{self.project_id}: use the credentials of a ClientApplication that is an admin of "
                    "the project",
                    e.status,
                ) from None
            raise
        self._checked = True

    def _secrets(self) -> None:
        project = self.http.fhir("Project secrets: read", "GET", f"Project/{self.project_id}")
        current = {s["name"]: s for s in project.get("secret", [])}
        changed = [n for n, v in self.secrets.items() if (current.get(n) or {}).get("valueString") != v]
        if not changed:
            self._record("Project secrets", ", ".join(sorted(self.secrets)), "unchanged")
            return
        self._record("Project secrets", ", ".join(sorted(changed)), "update", "values not shown")
        if not self.dry_run:
            for n, v in self.secrets.items():
                current[n] = {"name": n, "valueString": v}
            self.http.request(
                "Project secrets: write",
                "POST",
                f"admin/projects/{self.project_id}/secrets",
                json_body=list(current.values()),
                idempotent=True,
            )  # the whole list: same state again

    def run(self) -> DeployResult:
        self.preflight()
        self._features()
        self._policies()
        self._bots()
        self._client()
        self._subscriptions()
        if self.set_secrets:
            self._secrets()
        self.result.webhook_url = webhook_execute_url(
            self.http.base_url,
            self.result.bot_ids.get("webhook_bot", "<webhook-bot-id>"),
            self.result.client_id or "<client-id>",
            "<client-secret>",
        )
        return self.result


def _report_bot_ids(cfg: Config, result: DeployResult, base_url: str, out_dir: str | None) -> None:
    """Print the Bots' ids and (unless --no-write-ids) record them where `medplum bot deploy` reads them."""
    from ..generation import deployed
    from ..generation.manifest import dumps, medplum_cli_config

    by_name = {spec.name: result.bot_ids[spec.key] for spec in cfg.bots if spec.key in result.bot_ids}
    click.echo(f"\nBots on {base_url} (project {result.project_id}):")
    for name, bot_id in by_name.items():
        click.echo(f"  {name:<28} Bot/{bot_id}")
    for problem in deployed.pin_conflicts(cfg, by_name):
        click.echo(click.style(f"warning: {problem}", fg="yellow"))
    if out_dir is None:
        return
    record = deployed.record(base_url, result.project_id, by_name)
    path = deployed.write(out_dir, record)
    config_json = Path(out_dir) / "medplum.config.json"
    config_json.write_text(dumps(medplum_cli_config(cfg, deployed.bot_ids(cfg, record))), "utf-8")
    click.echo(
        f"  recorded in {path} and {config_json} — commit both; `cd {out_dir} && npx medplum bot deploy "
        f"<name>` now finds these Bots"
    )


@click.command("deploy")
@config_option
@out_option
@medplum_options("config", purpose="to deploy to")
@click.option("--project", "project_id", help="Project id (default: the credentials' project).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option(
    "--set-secrets",
    is_flag=True,
    help="Also set Project secrets METRIPORT_API_KEY, METRIPORT_WEBHOOK_KEY, METRIPORT_BASE_URL from the environment.",
)
@click.option(
    "--write-ids/--no-write-ids",
    default=True,
    show_default=True,
    help="Record the deployed Bot ids in <out>/medport.deployed.json and <out>/medplum.config.json (where "
    "Medplum's CLI reads them).",
)
def deploy_command(
    config_path, out_dir, base_url, client_id, client_secret, project_id, dry_run, set_secrets, write_ids
):
    """Deploy the bots, their policies, client and subscriptions to a Medplum server.

    Idempotent: a second run reports everything unchanged. Needs credentials of a
    ClientApplication that is an admin of the project.
    """
    cfg = load_or_exit(config_path)
    base_url = base_url or cfg.medplum.base_url
    missing = [
        what
        for what, ok in (
            ("--client-id or MEDPLUM_CLIENT_ID", client_id),
            ("--client-secret or MEDPLUM_CLIENT_SECRET", client_secret),
        )
        if not ok
    ]
    http = MedplumHttp(
        base_url, client_id or "", client_secret or "", on_retry=lambda m: click.echo(f"  retry     {m}", err=True)
    )
    deployer = Deployer(cfg, http, project_id=project_id, dry_run=dry_run, set_secrets=set_secrets, echo=click.echo)
    if set_secrets:
        missing += [f"{name} in the environment (for --set-secrets)" for name in deployer.missing_secrets()]
    if missing:
        raise click.ClickException(
            "missing " + "; ".join(missing) + " — nothing was changed. The client must be an "
            "admin ClientApplication of the project."
        )
    click.echo(f"{'plan' if dry_run else 'deploying'}: {config_path} -> {base_url}")
    try:
        deployer.preflight()
        click.echo(
            f"  checked   {base_url} answers, client {client_id} administers project {deployer.project_id}"
            + (", secrets present" if set_secrets else "")
        )
        result = deployer.run()
    except MedplumError as e:
        changed = any(c.status in ("created", "updated") for c in deployer.result.changes)
        raise click.ClickException(f"deploy failed at {e}" + ("" if changed else " — nothing was changed")) from None
    counts = {s: sum(1 for c in result.changes if c.status == s) for s in {c.status for c in result.changes}}
    click.echo("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for w in result.warnings:
        click.echo(click.style(f"warning: {w}", fg="yellow"))
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    _report_bot_ids(cfg, result, base_url, out_dir if write_ids else None)
    click.echo("\nWebhook URL for Metriport's dashboard (Settings → Webhook):")
    if result.client_secret:
        click.echo("  " + result.webhook_url.replace("<client-secret>", result.client_secret))
        click.echo("  (the client secret is shown this once; store it now)")
    else:
        click.echo(f"  {result.webhook_url}")
        click.echo("  (replace <client-secret> with the secret of the webhook ClientApplication)")
