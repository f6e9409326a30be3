"""Generated request inputs (seeded, deterministic) for comparing the fake's rules with Metriport's npm
packages: patients (valid ones, each mutated at one or two places, and wild ones), resource lists,
metadata, date strings, emails and webhook settings. Shared by test_sdk_parity.py and the fuzz tests.

No string holds a lone surrogate: the fake refuses those at the body parser, while Node would
carry them on (and validator's encodeURI throws on them, a 500 in Metriport).
"""

from __future__ import annotations

import random
import string

from medport.emulator.metriport import schemas

BASE_PATIENT = {
    "firstName": "Ann",
    "lastName": "Lee",
    "dob": "1980-05-06",
    "genderAtBirth": "F",
    "address": [{"addressLine1": "1 Main St", "city": "Town", "state": "CA", "zip": "94110"}],
    "contact": [{"phone": "4155551234"}],
}

NAMES = ["Ann", " Ann ", "", "  ", None, 5, ["a"], "\u3000", "\u00a0Zoë\u00a0", "O'Neil-Smith", "李", "\t\n"]
DOBS = [
    "1990-01-02",
    "1990/01/02",
    "19900102",
    "1899-12-31",
    "2999-01-01",
    "01/02/1990",
    "abc",
    "",
    " 1990-01-02 ",
    5,
    None,
    "1990-02-30",
    "2000Z",
    "1990-01-32Z",
    "1990-1-2",
    "1990-01-02T00:00:00Z",
    "Jan 2 1990",
    "1990-01-02 junk",
    "1990",
    "0050-01-01",
    "1900-01-01",
    "1900-01-01T00:00:00+05:00",
    "\u00a01990-01-02",
    "1990-01-02\u3000",
    "+001990-01-01",
    "1990.01.02",
]
GENDERS = ["F", "M", "O", "U", "X", "m", "", None, 5, ["F"]]
LINES = ["1 Main St", "", "  ", None, 5, "Apt 4", "\u00a0"]
CITIES = ["Town", "", 5, None, "  ", "São Paulo"]
STATES = ["CA", "ca", " tx ", "PR", "MP", "ZZ", "California", 5, None, "", "dc", "Gu", "ß", [], "AS "]
ZIPS = [
    "94110",
    "12345",
    "00000",
    "94110-1234",
    "0211",
    94110,
    "9411O",
    None,
    "",
    [9, 4, 1, 1, 0],
    True,
    "a94110",
    " 94110 ",
    94110.0,
    1e21,
    "٩٤١١٠",
    {"z": 1},
    "54321",
    "99999",
    "10001",
]
COUNTRIES = ["USA", "US", None, "", 5]
PHONES = [
    "4155551234",
    "+1 (415) 555-1234",
    "123",
    "14155551234",
    "24155551234",
    4155551234,
    None,
    "",
    [4, 1, 5, 5, 5, 5, 1, 2, 3, 4],
    True,
    {},
    1e21,
    "415.555.1234 ext 9",
    "١٢٣٤٥٦٧٨٩٠",
    14155551234.0,
]
EMAILS = [
    "a@b.co",
    "+1a@b.co",
    "theo..grant@example.com",
    "x@y",
    "",
    None,
    "a@b.c",
    '"q"@x.io',
    "a@xn--p1ai.com",
    5,
    "ü@ex.com",
    "a@-b.com",
    "a@b_c.com",
    " a@b.co",
    "a@b.co ",
    "+13035550107@example.com",
    "A@B.CO",
    "a@b.co.",
    "a@[127.0.0.1]",
    "@b.co",
    "a@",
    "a@b..co",
    '"a b"@x.io',
    "a\u00a0b@x.io",
    "a@ＦＵＬＬ.com",
]


def _pick(rnd: random.Random, xs):
    return rnd.choice(xs)


def _contact(rnd: random.Random):
    c = {}
    if rnd.random() < 0.7:
        c["phone"] = _pick(rnd, PHONES)
    if rnd.random() < 0.6:
        c["email"] = _pick(rnd, EMAILS)
    return c if rnd.random() < 0.95 else _pick(rnd, [None, 5, "s", []])


def _address(rnd: random.Random, base: bool = False):
    a = dict(BASE_PATIENT["address"][0]) if base else {}
    fields = {
        "addressLine1": LINES,
        "addressLine2": LINES,
        "city": CITIES,
        "state": STATES,
        "zip": ZIPS,
        "country": COUNTRIES,
        "coordinates": [{"lat": 1, "lon": 2}, {"lat": "1"}, None],
    }
    chance = 0.25 if base else 0.85
    for k, pool in fields.items():
        if rnd.random() < (chance if k not in ("addressLine2", "country", "coordinates") else chance / 3):
            a[k] = _pick(rnd, pool)
    return a if base or rnd.random() < 0.95 else _pick(rnd, [None, "x", 5])


EXTRAS = {
    "personalIdentifiers": [
        [{"type": "ssn", "value": "123"}],
        [{"type": "driversLicense", "value": "x", "state": "CA"}],
        [{"type": "driversLicense", "value": "x"}],
        [{"type": "driversLicense", "value": "x", "state": "PR"}],
        [{"type": "x"}],
        "x",
        [{"type": "ssn", "value": "1", "period": {"start": "2020"}}],
        [{"type": "ssn", "value": "1", "period": {}}],
        [],
    ],
    "externalId": ["e1", 5, None, ""],
    "hie": [{"carequality": {"exclude": True}}, {"commonwell": {}}, {"foo": 1}, {"tefca": {"exclude": "x"}}, None, {}],
    "additionalIds": [{"healthix": ["a"]}, {"healthix": []}, {"healthix": ["a", "b"]}, {"x": 1}, {"healthix": [" "]}],
    "networkQuery": [
        {"sources": ["hie"]},
        {"sources": []},
        {"sources": {"hie": {"enabled": False}}},
        {"sources": {"hie": {"enabled": True}}, "metadata": {"a": "b"}},
        {"sources": ["x"]},
    ],
    "cohorts": [["a"], [1], "x"],
    "status": [{"hieOptOut": True}, {"hieOptOut": "x"}],
    "hieOptOut": [True, "yes"],
    "settings": [{"subscriptions": {"adt": ["x"]}}],
}


def wild_patient(rnd: random.Random) -> dict:
    d: dict = {}
    for k, pool in (("firstName", NAMES), ("lastName", NAMES), ("dob", DOBS), ("genderAtBirth", GENDERS)):
        if rnd.random() < 0.92:
            d[k] = _pick(rnd, pool)
    if rnd.random() < 0.95:
        r = rnd.random()
        d["address"] = (
            [_address(rnd) for _ in range(rnd.randint(0, 3))]
            if r < 0.6
            else (_address(rnd) if r < 0.95 else _pick(rnd, [None, "x"]))
        )
    if rnd.random() < 0.7:
        r = rnd.random()
        d["contact"] = (
            [_contact(rnd) for _ in range(rnd.randint(0, 3))] if r < 0.6 else (_contact(rnd) if r < 0.95 else None)
        )
    for k, pool in EXTRAS.items():
        if rnd.random() < 0.08:
            d[k] = _pick(rnd, pool)
    return d


def mutated_patient(rnd: random.Random) -> dict:
    """The valid base patient with one or two changes: most of these are the near misses that matter."""
    d = {k: (list(v) if isinstance(v, list) else v) for k, v in BASE_PATIENT.items()}
    d["address"] = [dict(BASE_PATIENT["address"][0])]
    for _ in range(rnd.choice([0, 1, 1, 1, 2])):
        kind = rnd.random()
        if kind < 0.15:
            d["dob"] = _pick(rnd, DOBS)
        elif kind < 0.25:
            d[_pick(rnd, ["firstName", "lastName"])] = _pick(rnd, NAMES)
        elif kind < 0.3:
            d["genderAtBirth"] = _pick(rnd, GENDERS)
        elif kind < 0.6:
            d["address"] = [_address(rnd, base=True)] if rnd.random() < 0.8 else _address(rnd, base=True)
        elif kind < 0.85:
            d["contact"] = [_contact(rnd) for _ in range(rnd.randint(1, 2))] if rnd.random() < 0.8 else _contact(rnd)
        else:
            k = _pick(rnd, list(EXTRAS))
            d[k] = _pick(rnd, EXTRAS[k])
    if rnd.random() < 0.1:
        d.pop(_pick(rnd, list(d)))
    return d


def patients(n: int, seed: int = 9) -> list[dict]:
    rnd = random.Random(seed)
    return [mutated_patient(rnd) if rnd.random() < 0.7 else wild_patient(rnd) for _ in range(n)]


_NOT_TYPES = [
    "Medication",
    "PractitionerRole",
    "condition",
    "",
    " Observation",
    "Observation ",
    "Foo",
    "Bundle",
    "Subscription",
    "OBSERVATION",
    5,
    None,
]


def resource_lists(n: int, seed: int = 11) -> list:
    rnd = random.Random(seed)
    out: list = []
    for _ in range(n):
        k = rnd.randint(0, 6)
        xs = [
            rnd.choice(schemas.RESOURCE_TYPES_FOR_CONSOLIDATION) if rnd.random() < 0.8 else rnd.choice(_NOT_TYPES)
            for _ in range(k)
        ]
        out.append(xs if rnd.random() < 0.97 else rnd.choice(["Condition", None, {}]))
    return out


def resource_params(n: int, seed: int = 12) -> list[str]:
    """Raw `resources=` query values: comma lists with quotes, spaces and empties."""
    rnd = random.Random(seed)
    out = []
    for lst in resource_lists(n, seed):
        if not isinstance(lst, list):
            continue
        parts = [str(x) if x is not None else "" for x in lst]
        parts = [f"'{p}'" if rnd.random() < 0.1 else (f'"{p}"' if rnd.random() < 0.1 else p) for p in parts]
        out.append(rnd.choice([",", ", ", " ,", ",,"]).join(parts))
    return out


def metadata_bodies(n: int, seed: int = 13) -> list:
    rnd = random.Random(seed)
    keys = [
        "medplumPatientId",
        "a",
        "",
        "x" * 40,
        "x" * 41,
        "1",
        "10",
        "2",
        "__proto__",
        "constructor",
        "k ey",
        "ü" * 40,
        "😀" * 20,
        "😀" * 21,
    ]
    values = ["v", "", "v" * 500, "v" * 501, 5, None, True, [], {}, "😀" * 250, "😀" * 251]
    out: list = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.05:
            out.append(rnd.choice([[1], "x", None, 5, {"metadata": None}, {"metadata": []}, {"metadata": "x"}, {}]))
            continue
        size = rnd.choice([0, 1, 2, 3, 49, 50, 51, 60]) if rnd.random() < 0.3 else rnd.randint(0, 4)
        md = {}
        for i in range(size):
            k = rnd.choice(keys) if rnd.random() < 0.5 else f"k{i}"
            md[k] = rnd.choice(values) if rnd.random() < 0.4 else "v"
        body = {"metadata": md}
        if rnd.random() < 0.1:
            body["other"] = 1
        out.append(body)
    return out


DATE_ATOMS = [
    "1990",
    "2001",
    "0050",
    "19900",
    "1899",
    "2999",
    "-",
    "/",
    ".",
    ":",
    " ",
    "  ",
    "T",
    "t",
    "Z",
    "z",
    "01",
    "1",
    "02",
    "13",
    "31",
    "32",
    "00",
    "0",
    "12",
    "24",
    "59",
    "60",
    "999",
    "1234",
    "+",
    "+05:00",
    "-0800",
    "jan",
    "Feb",
    "march",
    "junk",
    "am",
    "pm",
    "EST",
    "utc",
    "GMT",
    "ut",
    "(x)",
    "(",
    ")",
    "\u00a0",
    "\u3000",
    ",",
    "_",
    "é",
    "x",
    "mon",
    "Sept",
    "10:00",
    "1:2:3.4567",
    "\n",
    "\t",
    "+001990",
    "-000000",
    "99",
    "\ufeff",
    "\u2028",
    "0000001990",
    "275760",
    "+275760-09-13",
    "😀",
]


def date_strings(n: int, seed: int = 14) -> list[str]:
    rnd = random.Random(seed)
    fixed = [
        "1990-01-02",
        "1990/01/02",
        "19900102",
        "1990-1-2Z",
        "Jan 2 1990",
        "01/02/1990",
        "2000Z",
        "1990-01-02 junk",
        "1990-01-02T00:00:00+05:00",
        "+275760-09-13T00:00:00.000Z",
        "+275760-09-13T00:00:00.001Z",
        "+275760-09-13T01:00:00+01:00",
        "-271821-04-20T00:00:00Z",
    ]
    return fixed + ["".join(rnd.choice(DATE_ATOMS) for _ in range(rnd.randint(1, 6))) for _ in range(n)]


_EMAIL_ALPHABET = (
    string.ascii_letters + string.digits + ".+-_@\"'() ,;:<>[]\\!#$%&*/=?^`{|}~" + "üé李\u00a0\uff21\u3000"
)


def emails(n: int, seed: int = 15) -> list[str]:
    rnd = random.Random(seed)
    out = list(EMAILS[i] for i in range(len(EMAILS)) if isinstance(EMAILS[i], str))
    for _ in range(n):
        if rnd.random() < 0.5:
            user = "".join(rnd.choice(_EMAIL_ALPHABET) for _ in range(rnd.randint(0, 8)))
            host = "".join(rnd.choice(string.ascii_lowercase + "-_.ü0") for _ in range(rnd.randint(0, 8)))
            tld = rnd.choice(["com", "co", "c", "123", "xn--p1ai", "ü", "", "co.", "COM", "com "])
            out.append(f"{user}@{host}.{tld}" if rnd.random() < 0.9 else f"{user}{host}")
        else:
            out.append("".join(rnd.choice(_EMAIL_ALPHABET) for _ in range(rnd.randint(0, 20))))
    out += [
        "a" * 64 + "@x.io",
        "a" * 65 + "@x.io",
        "a@" + "b" * 63 + ".io",
        "a@" + "b" * 64 + ".io",
        "a@" + ".".join(["b" * 60] * 5) + ".io",
        '"' + "@x.io",
        '""@x.io',
        '"\\"x"@x.io',
    ]
    return out


def settings_bodies(n: int, seed: int = 16) -> list:
    rnd = random.Random(seed)
    urls = [
        "https://hooks.example.com/metriport",
        "http://example.com",
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "https://x.amazonaws.com/y",
        "ftp://example.com",
        "mailto:a@b.co",
        "not a url",
        "",
        None,
        5,
        "http://",
        "http://[::1]:80/",
        "http://[::]/",
        "https://a.b/internal/x",
        "https://user:pass@hooks.example.com/x",
        "https://hooks.example.com:99999/",
        "https://exa mple.com",
        "0",
        "https://" + "a" * 2040 + ".io",
        "HTTPS://EXAMPLE.COM",
        "https://ëxample.com/ü",
        "http://1.2.3.4/",
        "http://999.1.1.1/",
        "a:b",
        "https://example.com/%zz",
        "http://0x7f000001/",
    ]
    keys = list(schemas.MR_SECTION_KEYS)
    out: list = []
    for _ in range(n):
        body: dict = {}
        if rnd.random() < 0.9:
            body["webhookUrl"] = rnd.choice(urls)
        if rnd.random() < 0.1:
            body["mrFilters"] = (
                [{"key": k} for k in keys]
                if rnd.random() < 0.5
                else [
                    {
                        "key": rnd.choice(keys + ["x"]),
                        "dateFilter": {"from": rnd.choice(["2020-01-01", "x", "2020/1/1"])},
                    }
                ]
            )
        if rnd.random() < 0.05:
            body["extra"] = 1
        out.append(body if rnd.random() < 0.97 else rnd.choice([[], "x", None]))
    return out
