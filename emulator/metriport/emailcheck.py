"""Metriport's email rule: @metriport/shared `isEmailValid` (domain/contact/email.ts).

    isEmailValid(email) = email non-empty
                          && !email.trim().startsWith("+1")        (taken for a phone number)
                          && validator.isEmail(email, {allow_utf8_local_part: true, blacklisted_chars: ""})

`is_email` reproduces validator.js 13.15 `isEmail` (lib/isEmail.js, lib/isFQDN.js, lib/isByteLength.js)
with the options Metriport passes and validator's defaults for the rest (no display name, TLD
required, no IP domain, no underscores, 254/64/254 length limits). Lengths are JavaScript lengths
(UTF-16 code units); byte lengths are UTF-8. A test compares it with the npm package on generated
addresses.
"""

from __future__ import annotations

import re

from ..jsbehaviour import JS_SPACE_CLASS, js_length, js_trim

_SP = JS_SPACE_CLASS[1:-1]
_UTF8_RANGES = "\u00a1-\ud7ff\uf900-\ufdcf\ufdf0-\uffef"
_USER_UTF8_PART = re.compile(r"[a-zA-Z0-9!#$%&'*+\-/=?^_`{|}~" + _UTF8_RANGES + r"]+\Z")
_QUOTED_USER_UTF8 = re.compile(
    r"(?:[" + _SP + r"\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x21\x23-\x5b\x5d-\x7e\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]"
    r"|\\[\x01-\x09\x0b\x0c\x0d-\x7f\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef])*\Z"
)
_TLD = re.compile(r"(?:[a-zA-Z\u00a1-\u00a8\u00aa-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]{2,}|[xX][nN][a-zA-Z0-9-]{2,})\Z")
_LABEL = re.compile(r"[a-zA-Z_\u00a1-\U0010ffff0-9-]+\Z")
_FULL_WIDTH = re.compile("[\uff01-\uff5e]")
_SPACE = re.compile("[" + _SP + "]")
_DIGITS = re.compile(r"[0-9]+\Z")


def _byte_length(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def is_fqdn(domain: str) -> bool:
    """validator `isFQDN(str, {require_tld: true, allow_underscores: false})`."""
    parts = domain.split(".")
    tld = parts[-1]
    if len(parts) < 2:
        return False
    if not _TLD.match(tld) or _SPACE.search(tld):
        return False
    if _DIGITS.match(tld):
        return False
    for part in parts:
        if js_length(part) > 63 or not _LABEL.match(part) or _FULL_WIDTH.search(part):
            return False
        if part.startswith("-") or part.endswith("-") or "_" in part:
            return False
    return True


def is_email(s: str) -> bool:
    """validator `isEmail(s, {allow_utf8_local_part: true, blacklisted_chars: ""})`."""
    if js_length(s) > 254:
        return False
    user, _, domain = s.rpartition("@")
    if "@" not in s:
        user, domain = "", s
    if _byte_length(user) > 64 or _byte_length(domain) > 254:
        return False
    if not is_fqdn(domain):
        return False  # allow_ip_domain is off
    if user[:1] == '"' and user[-1:] == '"':
        return bool(_QUOTED_USER_UTF8.match(user[1:-1]))
    return all(_USER_UTF8_PART.match(p) for p in user.split("."))


def is_email_valid(email: str) -> bool:
    """@metriport/shared `isEmailValid`."""
    if not email:
        return False
    if js_trim(email).startswith("+1"):
        return False
    return is_email(email)
