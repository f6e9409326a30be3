"""What a consolidated query delivers: Metriport's filter, then its hydration, in plain Python.

A port of core `command/consolidated/consolidated-filter.ts` (`filterConsolidated`) and what it calls, kept
step for step so the fake delivers the record production delivers:
1. `filter_by_resource` (`consolidated-filter-by-resource.ts`): only the asked types — the Patient too is
   dropped when types are given (the hydration brings it back: everything references it);
2. `filter_by_date` (`consolidated-filter-by-date.ts` + `consolidated-filter-shared.ts`): per type, the dates
   it carries compared with dateFrom/dateTo (inclusive, whole days, UTC); a resource without a usable date
   is kept; "ongoing" dates (a Condition's onset) only against dateFrom;
3. `add_missing_references` (`addMissingReferences`): the resources the kept ones reference, added back from
   the patient's whole record — up to 5 rounds. References are read as Metriport reads them: the regex
   `"reference":\\s*"(.+?)"` over the resources' JSON, `Type/id` split on "/" (so `urn:uuid:` and `#contained`
   references name nothing), and a missing one is looked up by id alone in the whole record.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

from ..jsbehaviour import iso_string
from . import jsdate

MAX_HYDRATION_ITERATIONS = 5  # consolidated-filter.ts maxHydrationIterations
_REFERENCE_RX = re.compile(r'"reference":\s*"(.+?)"')  # core external/fhir/bundle/bundle.ts referenceRegex
_UUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_DAY_MS = 86_400_000
_MIN_MS = cast(float, jsdate.dayjs_utc("1900-01-01"))  # safeDate's bounds
_MAX_MS = cast(float, jsdate.dayjs_utc("2100-01-01"))


# ------------------------------------------------------------------ the steps
def filter_consolidated(
    entries: list[dict], resources: list[str] | None = None, date_from: str | None = None, date_to: str | None = None
) -> list[dict]:
    """`filterConsolidated`: the entries a consolidated query with these parameters delivers."""
    kept = filter_by_resource(entries, resources)
    kept = filter_by_date(kept, date_from, date_to)
    return add_missing_references(kept, entries)


def filter_by_resource(entries: list[dict], resources: list[str] | None) -> list[dict]:
    if not resources:
        return entries
    wanted = set(resources)
    return [e for e in entries if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") in wanted]


def add_missing_references(filtered: list[dict], original: list[dict], iteration: int = 1) -> list[dict]:
    """The filtered entries plus the resources they reference, from `original` (by id), up to 5 rounds."""
    kept = [e["resource"] for e in filtered if isinstance(e.get("resource"), dict)]
    missing = missing_references(kept)
    index: dict[Any, Any] = {}
    for e in original:
        r = e.get("resource")
        index[r.get("id") if isinstance(r, dict) else None] = r  # a later entry with the same id wins (a JS Map)
    to_add = [index[ref_id] for _, ref_id in missing if index.get(ref_id)]
    result = filtered + [bundle_entry(r) for r in to_add]
    if missing_references(to_add) and iteration < MAX_HYDRATION_ITERATIONS:
        return add_missing_references(result, original, iteration + 1)
    return result


def missing_references(resources: list[dict]) -> list[tuple[str, str]]:
    """`getReferencesFromResources`: (type, id) of each distinct reference string in `resources` whose id is
    not the id of one of them (in order of first appearance)."""
    if not resources:
        return []
    ids = {r.get("id") for r in resources if r.get("id")}
    return [(t, i) for t, i in references(resources) if i not in ids]


def references(resources: Iterable[dict]) -> list[tuple[str, str]]:
    """`getReferences` + `buildReferenceFromStringRelative`: every distinct reference string as (type, id)."""
    text = json.dumps(list(resources), ensure_ascii=False, separators=(",", ":"))  # JSON.stringify's text
    seen: set[str] = set()
    out = []
    for raw in _REFERENCE_RX.findall(text):
        if raw in seen:
            continue
        seen.add(raw)
        parts = raw.split("/")
        if len(parts) > 1 and parts[0] and parts[1]:
            out.append((parts[0], parts[1]))
    return out


def bundle_entry(resource: dict) -> dict:
    """`buildBundleEntry`: fullUrl urn:uuid:<id> (urn:id:<id> when the id is no UUID), none without an id."""
    rid = resource.get("id")
    if not rid:
        return {"resource": resource}
    return {"fullUrl": f"urn:uuid:{rid}" if _UUID_RX.match(str(rid)) else f"urn:id:{rid}", "resource": resource}


# ------------------------------------------------------------------ dates (consolidated-filter-shared.ts)
def _ms(value: Any) -> float | None:
    """`buildDayjs(value)` (dayjs.utc) as epoch milliseconds, None when invalid."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return jsdate.dayjs_utc(value)
    return None


def safe_date(value: Any) -> Any:
    """`safeDate`: the value when it parses to a date in [1900-01-01, 2100-01-01], else None."""
    if not value:
        return None
    t = _ms(value)
    if t is None or t < _MIN_MS or t > _MAX_MS:
        return None
    return _iso(t) if isinstance(value, (int, float)) else value


def _iso(t: float) -> str:
    """`toISOString()` (an invalid time: "", which no date check accepts)."""
    try:
        return iso_string(t)
    except ValueError:
        return ""


def _start_of_day(t: float) -> float:
    return t - t % _DAY_MS


def is_date_within(date: Any, rng: dict | None) -> bool | None:
    """`isDateWithinDateRange`: None when the date or the range says nothing."""
    if not date or not safe_date(date) or not rng:
        return None
    t = _ms(date)
    if t is None:  # safe_date parsed it: not reached
        return None
    lo = _ms(rng["dateFrom"]) if rng.get("dateFrom") else None
    hi = _ms(rng["dateTo"]) if rng.get("dateTo") else None

    def after():
        return lo is not None and t >= _start_of_day(lo)

    def before():
        return hi is not None and t <= _start_of_day(hi) + _DAY_MS - 1

    if rng.get("dateFrom") and rng.get("dateTo"):
        return after() and before()
    if rng.get("dateFrom"):
        return after()
    if rng.get("dateTo"):
        return before()
    return None


def are_dates_within(dates: list, rng: dict | None) -> bool | None:
    parsed = [d for d in (safe_date(x) for x in dates) if d]
    if not parsed:
        return None
    return any(is_date_within(d, rng) for d in parsed)


def is_period_within(period: Any, rng: dict | None) -> bool | None:
    p = period if isinstance(period, dict) else {}
    return are_dates_within([d for d in (safe_date(p.get("start")), safe_date(p.get("end"))) if d], rng)


def are_periods_within(periods: list | None, rng: dict | None) -> bool | None:
    with_date = [p for p in (periods or []) if isinstance(p, dict) and (p.get("start") or p.get("end"))]
    if not with_date:
        return None
    return any(is_period_within(p, rng) for p in with_date)


def are_ranges_within(ranges: list | None, rng: dict | None) -> bool | None:
    with_date = [r for r in (ranges or []) if isinstance(r, dict) and (r.get("low") or r.get("high"))]
    if not with_date:
        return None

    def dates(r: dict) -> list:
        values = [(r.get(k) or {}).get("value") if isinstance(r.get(k), dict) else None for k in ("low", "high")]
        return [v if isinstance(v, str) else _iso(v) for v in values if v and not isinstance(v, bool)]

    return any(are_dates_within(dates(r), rng) for r in with_date)


def ongoing(rng: dict | None) -> dict | None:
    """`dateRangeToOngoing`: a single point in time of an ongoing condition is compared with dateFrom only."""
    if not rng or not rng.get("dateFrom"):
        return None
    return {"dateFrom": rng["dateFrom"]}


_AGE_UNITS = {
    "a": "year",
    "year": "year",
    "years": "year",
    "mo": "month",
    "month": "month",
    "months": "month",
    "wk": "week",
    "week": "week",
    "weeks": "week",
    "d": "day",
    "day": "day",
    "days": "day",
    "h": "hour",
    "hour": "hour",
    "hours": "hour",
    "min": "minute",
    "minute": "minute",
    "minutes": "minute",
}


def add_age_to_dob(age: Any, dob: str | None) -> str | None:
    """core `external/fhir/shared/age.ts` addAgeToDob (dayjs add: months and years keep the day, clamped)."""
    if not dob or not isinstance(age, dict) or not age.get("value") or isinstance(age["value"], bool):
        return None
    unit = _AGE_UNITS.get(age.get("unit") or "")
    t = _ms(dob)
    if not unit or t is None:
        return None
    n = age["value"]
    if unit in ("year", "month"):
        d = _dt.datetime(1970, 1, 1) + _dt.timedelta(milliseconds=t)
        months = d.year * 12 + (d.month - 1) + int(n) * (12 if unit == "year" else 1)
        y, m = divmod(months, 12)
        if not 1 <= y <= 9999:
            return None
        d = d.replace(year=y, month=m + 1, day=min(d.day, calendar.monthrange(y, m + 1)[1]))
        t = (d - _dt.datetime(1970, 1, 1)) / _dt.timedelta(milliseconds=1)
    elif unit in ("day", "week"):
        t += round(n * (7 if unit == "week" else 1)) * _DAY_MS
    else:
        t += n * (3_600_000 if unit == "hour" else 60_000)
    return _iso(t)


def _chain(*steps) -> bool:
    """The per-type checks: the first that says something decides, else the resource is kept."""
    for step in steps:
        res = step()
        if res is not None:
            return res
    return True


def _effective(r: dict) -> list:
    p = r.get("effectivePeriod") or {}
    return [
        r.get("effectiveDateTime"),
        p.get("start") if isinstance(p, dict) else None,
        p.get("end") if isinstance(p, dict) else None,
    ]


def _date_keep(r: dict, rng: dict, birth: str | None) -> bool:  # noqa: C901 — one branch per resource type, as consolidated-filter.ts
    """Whether one resource passes `filterBundleByDate`'s check for its type."""
    t = r.get("resourceType")
    g: Callable[[str], Any] = r.get
    if t in ("AllergyIntolerance", "Condition"):
        onset = [
            lambda: are_periods_within([g("onsetPeriod")], rng) if g("onsetPeriod") else None,
            lambda: are_ranges_within([g("onsetRange")], rng) if g("onsetRange") else None,
        ]
        if t == "AllergyIntolerance":
            onset.append(lambda: is_date_within(g("lastOccurrence"), rng) if g("lastOccurrence") else None)
        onset += [
            lambda: is_date_within(g("onsetString"), ongoing(rng)) if g("onsetString") else None,
            lambda: is_date_within(g("onsetDateTime"), ongoing(rng)) if g("onsetDateTime") else None,
            lambda: (
                is_date_within(add_age_to_dob(g("onsetAge"), birth), ongoing(rng)) if g("onsetAge") and birth else None
            ),
        ]
        if t == "AllergyIntolerance":
            onset.append(
                lambda: (
                    are_dates_within(
                        [x.get("onset") for x in g("reaction") or [] if isinstance(x, dict) and x.get("onset")],
                        ongoing(rng),
                    )
                    if g("reaction")
                    else None
                )
            )
        else:
            onset += [
                lambda: are_periods_within([g("abatementPeriod")], rng) if g("abatementPeriod") else None,
                lambda: are_ranges_within([g("abatementRange")], rng) if g("abatementRange") else None,
                lambda: is_date_within(g("abatementString"), rng) if g("abatementString") else None,
                lambda: is_date_within(g("abatementDateTime"), rng) if g("abatementDateTime") else None,
                lambda: (
                    is_date_within(add_age_to_dob(g("abatementAge"), birth), rng)
                    if g("abatementAge") and birth
                    else None
                ),
            ]
        return _chain(*onset)
    if t == "Communication":
        return _chain(lambda: are_dates_within([g("sent"), g("received")], rng))
    if t == "Composition":
        return _chain(
            lambda: are_periods_within(
                [e.get("period") for e in g("event") or [] if isinstance(e, dict)] if g("event") is not None else None,
                rng,
            )
        )
    if t == "Consent":
        return _chain(lambda: is_date_within(g("dateTime"), rng))
    if t in ("Coverage", "RelatedPerson"):
        return _chain(lambda: is_period_within(g("period"), rng))
    if t == "DiagnosticReport":
        return _chain(lambda: are_dates_within(_effective(r), rng))
    if t == "DocumentReference":
        ctx = g("context") if isinstance(g("context"), dict) else {}
        return _chain(lambda: is_period_within(ctx.get("period"), rng))
    if t == "Encounter":
        return _chain(
            lambda: are_periods_within([g("period")], rng) if g("period") else None,
            lambda: (
                are_periods_within([x.get("period") for x in g("location") if isinstance(x, dict)], rng)
                if g("location")
                else None
            ),
        )
    if t == "Goal":
        return _chain(
            lambda: is_date_within(g("startDate"), rng) if g("startDate") else None,
            lambda: (
                are_dates_within(
                    [x.get("dueDate") for x in g("target") if isinstance(x, dict) and x.get("dueDate")], rng
                )
                if g("target")
                else None
            ),
        )
    if t == "Immunization":
        return _chain(
            lambda: is_date_within(g("occurrenceDateTime"), rng) if g("occurrenceDateTime") else None,
            lambda: is_date_within(g("occurrenceString"), rng) if g("occurrenceString") else None,
            lambda: (
                are_dates_within([x.get("date") for x in g("reaction") if isinstance(x, dict) and x.get("date")], rng)
                if g("reaction")
                else None
            ),
        )
    if t == "MedicationDispense":
        return _chain(
            lambda: is_date_within(g("whenHandedOver"), rng) if g("whenHandedOver") else None,
            lambda: is_date_within(g("whenPrepared"), rng) if g("whenPrepared") else None,
        )
    if t == "MedicationRequest":
        return _chain(lambda: is_date_within(g("authoredOn"), rng))
    if t in ("MedicationAdministration", "MedicationStatement", "Observation"):
        steps = [
            lambda: is_period_within(g("effectivePeriod"), rng) if g("effectivePeriod") else None,
            lambda: is_date_within(g("effectiveDateTime"), rng) if g("effectiveDateTime") else None,
        ]
        if t == "Observation":
            steps += [
                lambda: is_date_within(g("effectiveInstant"), rng) if g("effectiveInstant") else None,
                lambda: is_date_within(g("issued"), rng) if g("issued") else None,
            ]
        return _chain(*steps)
    if t == "Procedure":
        return _chain(
            lambda: is_period_within(g("performedPeriod"), rng) if g("performedPeriod") else None,
            lambda: are_ranges_within([g("performedRange")], rng) if g("performedRange") else None,
            lambda: is_date_within(g("performedDateTime"), rng) if g("performedDateTime") else None,
            lambda: is_date_within(g("performedString"), rng) if g("performedString") else None,
            lambda: (
                is_date_within(add_age_to_dob(g("performedAge"), birth), rng) if g("performedAge") and birth else None
            ),
        )
    if t == "Provenance":
        return _chain(
            lambda: is_period_within(g("occurredPeriod"), rng) if g("occurredPeriod") else None,
            lambda: is_date_within(g("occurredDateTime"), rng) if g("occurredDateTime") else None,
            lambda: is_date_within(g("recorded"), rng) if g("recorded") else None,
        )
    return True


def filter_by_date(entries: list[dict], date_from: str | None = None, date_to: str | None = None) -> list[dict]:
    """`filterBundleByDate`: inclusive whole days; a resource without a usable date is kept."""
    if not date_from and not date_to:
        return entries
    rng = {"dateFrom": date_from, "dateTo": date_to}
    patient = next(
        (
            e["resource"]
            for e in entries
            if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == "Patient"
        ),
        None,
    )
    birth = patient.get("birthDate") if patient else None
    return [e for e in entries if isinstance(e.get("resource"), dict) and _date_keep(e["resource"], rng, birth)]
