"""Reading the fake's requests the way Metriport's Express app does (express.json/urlencoded, qs), checking
the API key, and the one `current_backend()` accessor: what api.py and devapi.py share (as emulator/medplum/httpio.py).
"""

from __future__ import annotations

import json
import secrets
import zlib
from typing import Any
from urllib.parse import unquote_plus

from flask import Response, current_app, g, jsonify, request

from ..jsbehaviour import first_lone_surrogate
from . import rules
from .backend import MetriportBackend
from .errors import HttpError

EXTENSION = "metriport"  # app.extensions key of the backend
API_KEY_CONFIG = "METRIPORT_API_KEY"  # app.config key of the accepted API key
API_KEY_HEADER = "x-api-key"
MAX_BODY_BYTES = 20 * 1024 * 1024  # express.json({ limit: "20mb" })
QS_PARAMETER_LIMIT = 1000  # qs parameterLimit


def current_backend() -> MetriportBackend:
    return current_app.extensions[EXTENSION]


def valid_api_key(key: str | None) -> bool:
    expected = current_app.config[API_KEY_CONFIG]
    if not key:
        return False
    return secrets.compare_digest(key.encode("utf-8", "surrogateescape"), expected.encode())


# ---------------------------------------------------------------- request reading (express.json / qs)
def _reject_constant(name: str) -> Any:
    raise ValueError(f"Unexpected token '{name[0]}', \"{name}\" is not valid JSON")


def _decode(raw: bytes) -> bytes:
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate"):
        raise HttpError(415, f'unsupported content encoding "{encoding}"')
    try:
        d = zlib.decompressobj(wbits=47)  # gzip or zlib header
        out = d.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as e:
        raise HttpError(400, f"incorrect header check ({e})") from None
    if len(out) > MAX_BODY_BYTES:
        raise HttpError(413, "request entity too large")
    return out


def parse_json_text(text: str) -> Any:
    """JSON.parse with body-parser's strict mode (object or array at the top)."""
    stripped = text.lstrip(" \t\n\r")
    if not stripped:
        return {}
    if stripped[0] not in "{[":
        raise HttpError(400, f"Unexpected token '{stripped[0]}', \"{stripped[:10]}\" is not valid JSON")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise HttpError(400, "Unexpected JSON: nested too deeply") from None
    except ValueError as e:
        raise HttpError(400, f"Unexpected token in JSON: {e}") from None
    if first_lone_surrogate(value) is not None:
        raise HttpError(400, "Bad Unicode escape in JSON: lone surrogate")
    return value


def read_body() -> Any:
    """`req.body` as Express sets it for this request (cached on `g`)."""
    if "body" in g:
        return g.body
    mimetype = (request.mimetype or "").lower()
    body: Any = {}
    if mimetype == "application/json":
        charset = (request.mimetype_params.get("charset") or "utf-8").lower()
        if not charset.startswith("utf-"):
            raise HttpError(415, f'unsupported charset "{charset.upper()}"')
        raw = _decode(request.get_data(cache=True))
        try:
            text = raw.decode(charset, errors="replace")
        except LookupError:
            raise HttpError(415, f'unsupported charset "{charset.upper()}"') from None
        body = parse_json_text(text.removeprefix("\ufeff"))
    elif mimetype == "application/x-www-form-urlencoded":
        query = _decode(request.get_data(cache=True)).decode("utf-8", errors="replace")
        form: dict[str, Any] = {}
        for pair in query.split("&")[:QS_PARAMETER_LIMIT]:
            if not pair:
                continue
            k, _, v = pair.partition("=")
            k, v = unquote_plus(k), unquote_plus(v)
            form[k] = [*form[k], v] if isinstance(form.get(k), list) else ([form[k], v] if k in form else v)
        body = form
    g.body = body
    return body


def _query_pairs() -> list[tuple[str, str]]:
    if "query_pairs" not in g:
        raw = request.query_string.decode("latin-1")
        pairs = []
        for part in raw.split("&")[:QS_PARAMETER_LIMIT]:
            if not part:
                continue
            k, _, v = part.partition("=")
            k = unquote_plus(k.encode("latin-1").decode("utf-8", "replace"))
            v = unquote_plus(v.encode("latin-1").decode("utf-8", "replace"))
            if k:
                pairs.append((k, v))
        g.query_pairs = pairs
    return g.query_pairs


def query_value(name: str) -> Any:
    """`req.query[name]` as qs parses it: a str, None (absent) or rules.NOT_A_STRING (array/object)."""
    plain = [v for k, v in _query_pairs() if k == name]
    nested = any(k.startswith(name + "[") for k, _ in _query_pairs())
    if nested or len(plain) > 1:
        return rules.NOT_A_STRING
    return plain[0] if plain else None


def query_object() -> dict[str, Any]:
    """`req.query` as an object: repeated names as arrays, `a[]`/`a[0]` as arrays, `a[b]` as objects."""
    out: dict[str, Any] = {}
    for k, v in _query_pairs():
        if "[" in k and k.endswith("]") and not k.startswith("["):
            base, sub = k.split("[", 1)[0], k[k.index("[") + 1 : -1]
            if sub == "" or sub.isdigit():
                out[base] = [*out[base], v] if isinstance(out.get(base), list) else [v]
            else:
                if not isinstance(out.get(base), dict):
                    out[base] = {}
                out[base][sub] = v
        elif k in out:
            out[k] = [*out[k], v] if isinstance(out[k], list) else [out[k], v]
        else:
            out[k] = v
    return out


def q(name: str) -> str | None:
    return rules.query(name, query_value(name))


def q_or_fail(name: str) -> str:
    return rules.query_or_fail(name, query_value(name))


def created(body: Any) -> tuple[Response, int]:
    return jsonify(body), 201
