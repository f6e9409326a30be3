"""emulator/cronexpr.py's `is_valid_cron` against the real npm cron-validator (the package and version Medplum's
server pins, packages/server/package.json: cron-validator 1.4.0, called as `isValidCron(cronString)` with no
options in packages/server/src/workers/cron.ts). Medplum schedules a Bot's cronString only when it passes; the
emulator's cron and `medport check` (webhook_bot.sweep_cron) must say the same for every expression."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from medport.emulator.cronexpr import CronSpec, is_valid_cron
from medport.emulator.node import node_binary
from medport.generator.generation.config import ConfigError, validate_data
from tests.paths import ROOT

VALIDATOR = ROOT / "node_modules" / "cron-validator"

ACCEPTED = [
    "* * * * *",
    "*/5 * * * *",
    "0 */12 * * *",
    "30 9 * * 1-5",
    "0 0 1 1 *",
    "15,45 1-3 * * *",
    "0 3 29 2 *",
    "5/10 * * * *",
    "1-5/2 * * * *",
    "00 00 01 01 00",
    "59 23 31 12 6",
    " 1 2 3 4 5 ",
    "0\t0\t*\t*\t0",
    "0 0 * * 0,6",
    "*/1 * * * *",
    "0-59/15 * * * *",
    "\ufeff0 0 * * *",
    "0\u00a00 * * *",
]
# refused by cron-validator with Medplum's (default) options, each for its own reason
REFUSED = [
    "*/5 * * * mon-fri",  # day names (alias off)
    "0 0 1 jan *",  # month names
    "0 0 * * 7",  # 7 for Sunday (allowSevenAsSunday off)
    "0 0 * * SUN",
    "0 0 ? * *",  # ? (allowBlankDay off)
    "0 0 * * ?",
    "0 0 * * 1#2",  # nth weekday (off)
    "0 0 L * *",
    "0 0 0 * *",  # day of month from 1
    "0 0 * 0 *",
    "0 0 * 13 *",
    "60 * * * *",
    "* 24 * * *",
    "0 0 32 * *",
    "* * * * * *",  # seconds (off)
    "* * * *",
    "",
    "   ",
    "*/0 * * * *",
    "*/ * * * *",
    "*/*/2 * * * *",
    "5-1 * * * *",
    "1-2-3 * * * *",
    "a * * * *",
    "1, * * * *",
    "-1 * * * *",
    "+1 * * * *",
    "٣ * * * *",  # an Arabic-Indic digit: \d is ASCII in JS
    "@hourly",
    "*/5 * * * mon",
    "0 0 * * 1-7",
    "1.5 * * * *",
    "0\x1c0 * * * *",
]


def cron_validator(expressions: list) -> list[bool]:
    """The real isValidCron, in Node, for every expression at once."""
    if not VALIDATOR.is_dir():
        pytest.skip(f"npm cron-validator is not installed in {ROOT / 'node_modules'} (`make setup` installs it)")
    script = (
        "const {isValidCron}=require(process.argv[1]);let s='';process.stdin.on('data',d=>s+=d);"
        "process.stdin.on('end',()=>process.stdout.write(JSON.stringify(JSON.parse(s).map(e=>isValidCron(e)))))"
    )
    out = subprocess.run(
        [node_binary(), "-e", script, str(VALIDATOR)],
        input=json.dumps(expressions),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_corpus_is_judged_like_medplum():
    verdicts = cron_validator(ACCEPTED + REFUSED)
    assert verdicts == [True] * len(ACCEPTED) + [False] * len(REFUSED), "the corpus itself is wrong"
    assert [is_valid_cron(e) for e in ACCEPTED] == [True] * len(ACCEPTED)
    assert [e for e in REFUSED if is_valid_cron(e)] == []
    assert len(REFUSED) >= 29


RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
WEIRD = ["", "mon", "jan", "?", "L", "7", "1#2", "٣", "-1", "x", "99999999999999999999", "*/", "1,", "1--2", "0/5/2"]


def _token(rnd: random.Random, lo: int, hi: int) -> str:
    """A field near the edges of its range (one past them now and then), sometimes something else entirely."""

    def atom() -> str:
        r = rnd.random()
        if r < 0.04:
            return rnd.choice(WEIRD)
        if r < 0.1:
            return str(rnd.choice([lo - 1, hi + 1]))
        return rnd.choice(
            ["*", "*", str(rnd.randint(lo, hi)), str(rnd.choice([lo, hi])), f"0{rnd.randint(max(lo, 0), min(hi, 9))}"]
        )

    t = atom()
    if rnd.random() < 0.2:
        t += "-" + atom()
    if rnd.random() < 0.2:
        t += "/" + rnd.choice([str(rnd.randint(1, 30))] * 6 + ["", "*", "0", "a"])
    if rnd.random() < 0.15:
        t += "," + _token(rnd, lo, hi)
    return t


def test_thousands_of_generated_expressions_agree_with_cron_validator():
    rnd = random.Random(23)
    exprs = []
    for _ in range(4000):
        n = rnd.choice([4, 5, 5, 5, 5, 5, 5, 6])
        seps = [rnd.choice([" "] * 12 + ["  ", "\t", "\u00a0", "\x1f", "\u2003"]) for _ in range(n - 1)]
        fields = [_token(rnd, *RANGES[i % 5]) for i in range(n)]
        text = fields[0] + "".join(sep + f for sep, f in zip(seps, fields[1:]))
        exprs.append(rnd.choice(["", "", " ", "\n"]) + text + rnd.choice(["", " "]))
    truth = cron_validator(exprs)
    assert sum(truth) > 200 and len(truth) - sum(truth) > 200  # both sides well represented
    mismatches = [(e, t) for e, t in zip(exprs, truth) if is_valid_cron(e) != t]
    assert mismatches == [], mismatches[:10]


def test_the_config_refuses_what_medplum_would_never_schedule():
    """Before: `sweep_cron = "*/5 * * * mon-fri"` passed `medport check` and Medplum never ran the sweep."""
    with pytest.raises(ConfigError, match="sweep_cron"):
        validate_data({"webhook_bot": {"sweep_cron": "*/5 * * * mon-fri"}}, "t")
    assert (
        validate_data({"webhook_bot": {"sweep_cron": "*/5 * * * 1-5"}}, "t").webhook_bot.sweep_cron == "*/5 * * * 1-5"
    )
    with pytest.raises(ValueError):
        CronSpec("0 0 * * 7")
