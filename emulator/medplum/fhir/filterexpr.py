"""The `_filter` search parameter as Medplum reads it (@medplum/core src/filter/parse.ts and tokenize.ts, on the
FHIRPath lexer src/fhirlexer/tokenize.ts): `<path> <op> <value>` comparisons joined by `and` / `or` (right
associative, no precedence), `( ... )` and `not ( ... )`. Operators map to Medplum's search operators; `ew`,
`po`, `ss`, `sb` and unknown ones are 400 "Invalid operator: x". Paths are parameter codes, chains
(`patient.name`) and `_has:` included; values are words, quoted strings ('..' / ".."), numbers, dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest

# filter/parse.ts operatorMap: _filter operator -> Medplum search operator (None: not supported)
OPERATORS = {
    "eq": "exact",
    "ne": "ne",
    "co": "contains",
    "sw": "sw",
    "ew": None,
    "gt": "gt",
    "lt": "lt",
    "ge": "ge",
    "le": "le",
    "ap": "ap",
    "sa": "sa",
    "eb": "eb",
    "pr": "present",
    "po": None,
    "ss": None,
    "sb": None,
    "in": "in",
    "ni": "not-in",
    "re": "eq",
    "identifier": "identifier",
}

_UNITS = {
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
}
_DATE_LITERAL = re.compile(r"^\d{4}-\d{2}[\dT:.+\-Z]*(?=[\s)\]]|$)")
_ESCAPES = {"'": "'", '"': '"', "`": "`", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "\\": "\\"}


@dataclass
class Comparison:
    path: str
    operator: str
    value: str


@dataclass
class Negation:
    child: Node


@dataclass
class Connective:
    keyword: str  # "and" | "or"
    left: Node
    right: Node


Node = Comparison | Negation | Connective


@dataclass
class _Token:
    id: str
    value: str


def _symbol_char(c: str) -> bool:
    return not (c.isspace() or c in "])")


class _Lexer:
    """The FHIRPath lexer with _filter's options: date literals, symbols running to whitespace, `)` or `]`."""

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.out: list[_Token] = []

    def tokens(self) -> list[_Token]:
        while True:
            tok = self._next()
            if tok is None:
                return self.out
            if tok.id != "Comment":
                self.out.append(tok)

    def _cur(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _peek(self) -> str:
        return self.s[self.i + 1] if self.i + 1 < len(self.s) else ""

    def _while(self, cond) -> str:
        start = self.i
        while self.i < len(self.s) and cond(self.s[self.i]):
            self.i += 1
        return self.s[start : self.i]

    def _next(self) -> _Token | None:
        self._while(str.isspace)
        c = self._cur()
        if not c:
            return None
        nxt = self._peek()
        if c == "/" and nxt == "*":
            end = self.s.find("*/", self.i + 2)
            self.i = len(self.s) if end < 0 else end + 2
            return _Token("Comment", "")
        if c == "/" and nxt == "/":
            self._while(lambda ch: ch != "\n")
            return _Token("Comment", "")
        if c in "'\"`":
            return self._string(c)
        if c == "@":
            self.i += 1
            return self._datetime()
        if c.isdigit():
            return self._number()
        if c.isalnum() or c == "_":
            value = self._while(_symbol_char)
            if value in ("true", "false"):
                return _Token(value, value)
            return _Token("Symbol", value)
        if c in "$%" and (nxt.isalnum() or nxt == "_"):
            return _Token("Symbol", self._while(_symbol_char))
        two = c + nxt
        if two in ("!=", "!~", "<=", ">=", "{}", "->"):
            self.i += 2
            return _Token(two, two)
        self.i += 1
        return _Token(c, c)

    def _string(self, end: str) -> _Token:
        self.i += 1
        buf = []
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\":
                self.i += 1
                esc = self._cur()
                if esc in _ESCAPES:
                    buf.append(_ESCAPES[esc])
                    self.i += 1
                elif esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.s[self.i + 1 : self.i + 5] or ""):
                    buf.append(chr(int(self.s[self.i + 1 : self.i + 5], 16)))
                    self.i += 5
                continue
            if ch == end:
                break
            buf.append(ch)
            self.i += 1
        self.i += 1
        return _Token("Symbol" if end == "`" else "String", "".join(buf))

    def _datetime(self) -> _Token:
        start = self.i
        self._while(lambda ch: ch.isdigit() or ch == "-")
        found_time = found_tz = False
        if self._cur() == "T":
            found_time = True
            self.i += 1
            self._while(lambda ch: ch.isdigit() or ch == ":")
            if self._cur() == "." and self._peek().isdigit():
                self.i += 1
                self._while(str.isdigit)
            if self._cur() == "Z":
                found_tz = True
                self.i += 1
            elif self._cur() in ("+", "-"):
                found_tz = True
                self.i += 1
                self._while(lambda ch: ch.isdigit() or ch == ":")
        if self.i == start:
            raise BadRequest("Invalid DateTime literal")
        value = self.s[start : self.i]
        if value.endswith("T"):
            value = value[:-1]
        elif not value.startswith("T") and found_time and not found_tz:
            value += "Z"
        return _Token("DateTime", value)

    def _number(self) -> _Token:
        start = self.i
        self._while(str.isdigit)
        if self._cur() == "." and self._peek().isdigit():
            self.i += 1
            self._while(str.isdigit)
        term = self._cur()
        if term == "-":
            if _DATE_LITERAL.match(self.s[start:]):
                self.i = start
                return self._datetime()
            self.i = start
            return _Token("String", self._while(_symbol_char))
        if term == " ":
            save = self.i
            self._while(str.isspace)
            unit = self._while(_symbol_char) if (self._cur().isalnum() or self._cur() == "_") else ""
            if unit in _UNITS:
                return _Token("Quantity", self.s[start : self.i])
            self.i = save
        elif term and (term.isalpha() or term in "_$"):
            self.i = start
            return _Token("String", self._while(_symbol_char))
        return _Token("Number", self.s[start : self.i])


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.t = tokens

    def peek(self) -> _Token | None:
        return self.t[0] if self.t else None

    def consume(self, want_id: str | None = None, want_value: str | None = None) -> _Token:
        if not self.t:
            raise BadRequest("Cant consume unknown more tokens.")
        tok = self.t[0]
        if want_id and tok.id != want_id:
            raise BadRequest(f'Expected {want_id} but got "{tok.id}" ({tok.value}) at line 1 column 0.')
        if want_value and tok.value != want_value:
            raise BadRequest(f'Expected "{want_value}" but got "{tok.value}" at line 1 column 0.')
        return self.t.pop(0)

    def parse(self) -> Node:
        nxt = self.peek()
        if nxt is not None and nxt.value == "(":
            self.consume("(")
            result: Node = self.parse()
            self.consume(")")
        elif nxt is not None and nxt.value == "not":
            self.consume("Symbol", "not")
            self.consume("(")
            result = Negation(self.parse())
            self.consume(")")
        else:
            path = self.consume("Symbol").value
            op = self.consume("Symbol").value
            operator = OPERATORS.get(op)
            if not operator:
                raise BadRequest("Invalid operator: " + op)
            result = Comparison(path, operator, self.consume().value)
        nxt = self.peek()
        if nxt is not None and nxt.value in ("and", "or"):
            self.consume("Symbol", nxt.value)
            return Connective(nxt.value, result, self.parse())
        return result


def parse_filter(text: str, refuse_trailing: bool = True) -> Node:
    """The expression tree of a `_filter` value; BadRequest with Medplum's message when it cannot be read.
    `refuse_trailing`: text left after a complete expression is an error (5.2) rather than ignored (5.1)."""
    parser = _Parser(_Lexer(text).tokens())
    tree = parser.parse()
    extra = parser.peek()
    if extra is not None and refuse_trailing:
        raise BadRequest("Unexpected token in _filter expression: " + extra.value)
    return tree
