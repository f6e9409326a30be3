"""Load, validate and complete medport.toml.

Every problem is reported at once, each with its path and, where one exists, a hint
(`webhook_bot.resources[3]: 'Observaton' is not an R4 resource type — did you mean 'Observation'?`).
Defaults come from the JSON Schema itself, so the schema is the one reference for keys.
The validated, default-filled data is then loaded once into frozen dataclasses, one per
TOML section; they declare no defaults of their own (a test checks they mirror the schema).
"""

from __future__ import annotations

import copy
import difflib
import json
import tomllib
import uuid
from dataclasses import Field, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import jsonschema

from medport.emulator.cronexpr import is_valid_cron
from medport.emulator.medplum.releases import NEWEST, OLDEST, UnsupportedRelease
from medport.emulator.medplum.releases import release as medplum_release

CONFIG_FILENAME = "medport.toml"


class ConfigError(Exception):
    """The config is missing, unreadable or invalid; `problems` lists every reason."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{path}: invalid configuration ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}"
        )


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("medport.generator.generation").joinpath("config.schema.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def resource_types() -> dict[str, Any]:
    return json.loads(
        resources.files("medport.generator.generation").joinpath("resource_types.json").read_text("utf-8")
    )


# Bot ids are uuid5 of "<identifier system>|<identifier>" unless the config pins them, so they are stable.
ID_NAMESPACE = uuid.UUID("6f1c1a52-9a8e-4d0f-9a57-2b4f4c0c8a11")


def stable_id(system: str, value: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{system}|{value}"))


# Sections mirror config.schema.json key for key. No field has a default: the schema supplies them,
# and keys the schema leaves optional without a default (ids, dates) load as None.


@dataclass(frozen=True)
class MedplumSection:
    runtime: str
    base_url: str
    identifier_system: str
    version: str  # the release the emulator emulates
    versions: tuple[str, ...]  # the releases `medport check` runs its scenarios on


@dataclass(frozen=True)
class MetriportSection:
    environment: str
    facility_identifier_system: str
    patient_identifier_system: str
    resource_identifier_system: str


@dataclass(frozen=True)
class PatientBotSection:
    name: str
    identifier: str
    id: str | None
    flow: str
    sources: tuple[str, ...]
    interactions: tuple[str, ...]
    timeout: int


@dataclass(frozen=True)
class WebhookBotSection:
    name: str
    identifier: str
    id: str | None
    client_name: str
    verify_signature: bool
    async_processing: bool
    resources: tuple[str, ...]
    timeout: int
    max_attempts: int
    lease_seconds: int
    sweep_cron: str


@dataclass(frozen=True)
class ConsolidatedSection:
    date_from: str | None
    date_to: str | None
    resources: tuple[str, ...]


@dataclass(frozen=True)
class DocumentsSection:
    store: bool
    content: str
    max_bytes: int
    identifier_system: str
    request_bulk_urls: bool


@dataclass(frozen=True)
class RealtimeSection:
    import_: bool = field(metadata={"toml": "import"})
    types: tuple[str, ...]


@dataclass(frozen=True)
class ContributionSection:
    enabled: bool
    name: str
    identifier: str
    id: str | None
    timeout: int
    resources: tuple[str, ...]
    on_encounter_finished: bool
    cron: str
    documents: bool
    max_resources: int
    max_bytes: int
    identifier_system: str


@dataclass(frozen=True)
class EnrollSection:
    criteria: str
    only_unlinked: bool
    batch_size: int


@dataclass(frozen=True)
class ImportSection:
    batch_max_entries: int
    batch_max_bytes: int
    window_resources: int


@dataclass(frozen=True)
class RetrySection:
    max_attempts: int
    initial_delay_ms: int
    max_delay_ms: int


@dataclass(frozen=True)
class BotSpec:
    """One Bot as deployed: what the manifest, the renderer and deploy need to name and find it."""

    key: str  # "patient_bot" | "webhook_bot" | "contribution": its config section
    name: str
    identifier: str
    id: str  # pinned in the config, else stable_id(medplum.identifier_system, identifier)
    filename: str  # "<name>.js"
    timeout: int  # Bot.timeout in seconds


@dataclass(frozen=True)
class BotSpecs:
    patient: BotSpec
    webhook: BotSpec
    contribution: BotSpec | None  # None when contribution.enabled is off

    def __iter__(self):
        return iter((self.patient, self.webhook, *([self.contribution] if self.contribution else [])))


def _section(toml: str | None = None) -> dict[str, Any]:
    """The metadata of a Config field holding a TOML section; `toml` names the key when it is a Python keyword."""
    return {"section": True, **({"toml": toml} if toml else {})}


def toml_key(f: Field) -> str:
    return f.metadata.get("toml", f.name)


def section_fields() -> list[Field]:
    return [f for f in fields(Config) if f.metadata.get("section")]


def _load_section(cls: type, raw: dict) -> Any:
    # Arrays become tuples so a loaded section is immutable all the way down.
    values = {f.name: raw.get(toml_key(f)) for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _bot_spec(key: str, bot: PatientBotSection | WebhookBotSection | ContributionSection, system: str) -> BotSpec:
    return BotSpec(
        key, bot.name, bot.identifier, bot.id or stable_id(system, bot.identifier), f"{bot.name}.js", bot.timeout
    )


@dataclass(frozen=True)
class Config:
    """The validated config: one typed attribute per TOML section, the bot specs, and where it came from."""

    medplum: MedplumSection = field(metadata=_section())
    metriport: MetriportSection = field(metadata=_section())
    patient_bot: PatientBotSection = field(metadata=_section())
    webhook_bot: WebhookBotSection = field(metadata=_section())
    consolidated: ConsolidatedSection = field(metadata=_section())
    documents: DocumentsSection = field(metadata=_section())
    realtime: RealtimeSection = field(metadata=_section())
    contribution: ContributionSection = field(metadata=_section())
    enroll: EnrollSection = field(metadata=_section())
    import_: ImportSection = field(metadata=_section("import"))
    retry: RetrySection = field(metadata=_section())
    bots: BotSpecs = field(repr=False)
    path: str
    data: dict = field(repr=False, compare=False)  # the validated dict with defaults, for callers that need JSON

    @classmethod
    def from_data(cls, data: dict, path: str) -> Config:
        """Load validated, default-filled data (from `validate_data`, which checks it first)."""
        hints = get_type_hints(cls)
        sections = {f.name: _load_section(hints[f.name], data[toml_key(f)]) for f in section_fields()}
        system = sections["medplum"].identifier_system
        contribution = sections["contribution"]
        bots = BotSpecs(
            _bot_spec("patient_bot", sections["patient_bot"], system),
            _bot_spec("webhook_bot", sections["webhook_bot"], system),
            _bot_spec("contribution", contribution, system) if contribution.enabled else None,
        )
        return cls(**sections, bots=bots, path=path, data=data)

    @property
    def metriport_base_url(self) -> str:
        env = self.metriport.environment
        return {"sandbox": "https://api.sandbox.metriport.com", "production": "https://api.metriport.com"}.get(
            env, env.rstrip("/")
        )


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def _schema_at(parts) -> dict:
    node = schema()
    for p in parts:
        if isinstance(p, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(p, {})
        if "$ref" in node:
            node = {
                **schema()["$defs"][node["$ref"].rsplit("/", 1)[1]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
    return node


# Keys that existed once, with what replaced them (an "unknown key" error says so).
RENAMED = {
    (
        "consolidated",
        "request_allowed_resources_only",
    ): "replaced by consolidated.resources, the types the consolidated query asks Metriport for "
    "(webhook_bot.resources stays the import list)"
}


def _describe(err: jsonschema.ValidationError) -> list[str]:
    where = _path(err.absolute_path)
    instance: Any = err.instance  # the JSON value and the schema keyword's value (never unset here)
    expected: Any = err.validator_value
    if err.validator == "additionalProperties":
        allowed = _schema_at(err.absolute_path).get("properties", {}).keys()
        extra = sorted(set(instance) - set(allowed))
        return [
            f"{_path([*err.absolute_path, k])}: unknown key — {RENAMED[(*err.absolute_path, k)]}"
            if (*err.absolute_path, k) in RENAMED
            else f"{_path([*err.absolute_path, k])}: unknown key{_hint(k, allowed)}"
            f" (allowed: {', '.join(sorted(allowed))})"
            for k in extra
        ]
    if err.validator == "enum" and list(err.absolute_path)[:2] == ["consolidated", "resources"]:
        return [
            f"{where}: {instance!r} is not a type Metriport's consolidated query accepts"
            f"{_hint(str(instance), map(str, expected))} — Metriport answers 400 to any other "
            f"(its list, resourceTypeForConsolidation: {', '.join(expected)})"
            + (
                ". Medication and PractitionerRole come with the resources that reference them: import them "
                "(webhook_bot.resources), do not ask for them"
                if instance in ("Medication", "PractitionerRole")
                else ""
            )
        ]
    if err.validator == "enum":
        opts = ", ".join(repr(o) for o in expected)
        return [f"{where}: {instance!r} is not one of {opts}{_hint(str(instance), map(str, expected))}"]
    if err.validator == "type":
        return [f"{where}: expected {expected}, got {type(instance).__name__} {instance!r}"]
    if err.validator == "pattern":
        desc = _schema_at(err.absolute_path).get("description", "")
        return [f"{where}: {instance!r} has the wrong form" + (f" ({desc})" if desc else f" (must match {expected})")]
    return [f"{where}: {err.message}"]


def _apply_defaults(data: dict, node: dict) -> dict:
    """Fill defaults from the schema, recursing into objects (sections default to {})."""
    out = copy.deepcopy(data)
    for key, sub in node.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("properties"):
            out[key] = _apply_defaults(out[key], sub)
    return out


def _resource_problems(resources: list, key: str = "webhook_bot.resources", verb: str = "imported") -> list[str]:
    problems = []
    r4 = set(resource_types()["r4"])
    medplum_types = set(resource_types()["medplum"])
    shapes = resource_types()["identifier"]
    for i, rt in enumerate(resources):
        if not isinstance(rt, str):
            continue
        if rt in ("Patient",):
            problems.append(
                f"{key}[{i}]: 'Patient' cannot be {verb} — "
                + (
                    "data is attached to the existing Medplum Patient"
                    if verb == "imported"
                    else "Metriport holds the patient's demographics already (the patient bot sends them)"
                )
                + "; remove it"
            )
        elif rt in medplum_types or rt in ("Bundle", "Binary", "Subscription", "AuditEvent", "Task"):
            problems.append(f"{key}[{i}]: '{rt}' is not clinical data medport may {verb[:-1]}; remove it")
        elif rt not in r4:
            problems.append(f"{key}[{i}]: '{rt}' is not an R4 resource type{_hint(rt, r4)}")
        elif shapes.get(rt) == "none":
            problems.append(
                f"{key}[{i}]: '{rt}' has no identifier element, so it cannot be "
                + (
                    "upserted idempotently on the Metriport id"
                    if verb == "imported"
                    else "marked as contributed (what Metriport returns of it would be imported as a second copy)"
                )
                + "; remove it"
            )
    return problems


def _semantic_problems(raw: dict) -> list[str]:
    """Rules the schema cannot express. They read the raw dict, not the typed Config, because they run
    beside the schema check on data that may still be ill-typed, so every problem is reported at once."""
    problems = _resource_problems(raw["webhook_bot"]["resources"])
    patient, webhook = raw["patient_bot"], raw["webhook_bot"]
    imported = set(webhook["resources"])
    metriport_types = schema()["properties"]["consolidated"]["properties"]["resources"]["items"]["enum"]
    for i, rt in enumerate(raw["consolidated"]["resources"]):
        if isinstance(rt, str) and rt in metriport_types and rt not in imported:
            problems.append(
                f"consolidated.resources[{i}]: {rt!r} is asked of Metriport but not imported (not in "
                "webhook_bot.resources): it would be downloaded and skipped — add it there or remove it"
            )
    contribution = raw["contribution"]
    problems += _resource_problems(contribution["resources"], "contribution.resources", "contributed")
    bots = [("patient_bot", patient), ("webhook_bot", webhook)] + (
        [("contribution", contribution)] if contribution["enabled"] else []
    )
    for i, (key, bot) in enumerate(bots):
        for other_key, other in bots[:i]:
            if bot["name"] == other["name"]:
                problems.append(f"{key}.name: must differ from {other_key}.name (each bot is rendered to <name>.js)")
            if bot["identifier"] == other["identifier"]:
                problems.append(f"{key}.identifier: must differ from {other_key}.identifier")
    c = raw["consolidated"]
    if c.get("date_from") and c.get("date_to") and c["date_from"] > c["date_to"]:
        problems.append(f"consolidated.date_to: {c['date_to']!r} is before date_from {c['date_from']!r}")
    r = raw["retry"]
    if r["initial_delay_ms"] > r["max_delay_ms"]:
        problems.append("retry.initial_delay_ms: larger than retry.max_delay_ms")
    m = raw["medplum"]
    for where, version in [
        ("medplum.version", m["version"]),
        *((f"medplum.versions[{i}]", v) for i, v in enumerate(m["versions"])),
    ]:
        try:
            if isinstance(version, str) and version.startswith("5."):  # other forms: the schema says so
                medplum_release(version)
        except UnsupportedRelease as e:
            problems.append(f"{where}: {e} (use {OLDEST} to {NEWEST})")
    if raw.get("documents", {}).get("content") == "url":
        problems.append(
            "documents.content: 'url' is no longer supported — it kept Metriport's presigned URLs in Medplum "
            "(the document to anyone holding one, then a dead link): use 'binary' (the default); "
            "`medport document-urls PATIENT` asks Metriport for fresh URLs"
        )
    for key, cron in (
        ("webhook_bot.sweep_cron", webhook.get("sweep_cron")),
        ("contribution.cron", contribution.get("cron")),
    ):
        if isinstance(cron, str) and cron.strip() and not is_valid_cron(cron):
            problems.append(
                f"{key}: {cron!r} is not a 5-field cron expression (minute hour "
                "day-of-month month day-of-week, e.g. '*/5 * * * *'); Medplum would ignore it"
            )
    return problems


def _query_types_default(data: dict, filled: dict) -> None:
    """consolidated.resources left out: the import list's types that Metriport's query accepts (for the
    default import list that is the schema's default), so narrowing the import list narrows the query."""
    consolidated = data.get("consolidated")
    given = consolidated if isinstance(consolidated, dict) else {}
    imports = filled.get("webhook_bot", {}).get("resources")
    if "resources" in given or not isinstance(imports, list) or not isinstance(filled.get("consolidated"), dict):
        return
    accepted = schema()["properties"]["consolidated"]["properties"]["resources"]["items"]["enum"]
    filled["consolidated"]["resources"] = [t for t in imports if t in accepted]


def validate_data(data: dict, path: str = CONFIG_FILENAME) -> Config:
    validator = jsonschema.Draft202012Validator(schema())
    problems: list[str] = []
    for err in sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        problems.extend(_describe(err))
    filled = _apply_defaults(data, schema()) if isinstance(data, dict) else {}
    if isinstance(data, dict):
        _query_types_default(data, filled)
    try:
        problems += [p for p in _semantic_problems(filled) if p not in problems]
    except (TypeError, KeyError, AttributeError):
        pass  # shapes are wrong: the schema problems above already say so
    if problems:
        raise ConfigError(path, problems)
    return Config.from_data(filled, path)


def load_config(path: str | Path | None = None) -> Config:
    p = Path(path) if path else Path(CONFIG_FILENAME)
    if not p.exists():
        raise ConfigError(
            str(p), [f"no config file at {p} — run `medport init` to write a commented starter config, or pass -c PATH"]
        )
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(str(p), [f"not valid TOML: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), [f"not UTF-8 text: {e}"]) from None
    return validate_data(data, str(p))
