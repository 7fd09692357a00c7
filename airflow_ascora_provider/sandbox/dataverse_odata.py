"""The slice of OData query syntax the Dataverse emulator understands: ``$filter`` and key segments.

Enough for what a migration client sends (``eq``/``ne``/``gt``/``ge``/``lt``/``le``, ``and``/``or``/
``not``, parentheses, ``contains``/``startswith``/``endswith``, and
``Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=['a','b'])``), evaluated against the JSON
the client would read back. Anything else is refused with the 400 a real server gives for a query it
cannot parse, so a client never relies on an operator the emulator silently ignores.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from airflow_ascora_provider.sandbox.dataverse_metadata import DataverseError

Predicate = Callable[[dict[str, Any]], bool]
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),\[\]=])|(?P<word>[^\s(),\[\]=']+))")
_FUNCTIONS = {"contains", "startswith", "endswith"}
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}


def query_error(message: str) -> DataverseError:
    return DataverseError(400, "0x80060888", f"Syntax error at position in '$filter': {message}")


def _literal(token: str) -> Any:
    if token.startswith("'"):
        return token[1:-1].replace("''", "'")
    if token == "null":
        return None
    if token in ("true", "false"):
        return token == "true"
    if GUID.match(token):
        return token.lower()
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        raise query_error(f"'{token}' is not a literal") from None


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()  # Dataverse compares text case-insensitively (SQL collation)
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    a, b = _norm(left), _norm(right)
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if a is None or b is None:
        return False
    try:
        return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
    except TypeError:
        return False


class FilterParser:
    def __init__(self, text: str):
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                if text[pos:].strip():
                    raise query_error(f"unexpected text {text[pos:pos + 20]!r}")
                break
            self.tokens.append(match.group("str") or match.group("punct") or match.group("word"))
            pos = match.end()
        self.i = 0

    def parse(self) -> Predicate:
        predicate = self._or()
        if self.i != len(self.tokens):
            raise query_error(f"unexpected {self.tokens[self.i]!r}")
        return predicate

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise query_error(f"expected {expected or 'a term'}, found {token!r}")
        self.i += 1
        return token

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek() == "or":
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._peek() == "and":
            self._take()
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def _unary(self) -> Predicate:
        token = self._peek()
        if token == "not":
            self._take()
            inner = self._unary()
            return lambda row: not inner(row)
        if token == "(":
            self._take("(")
            inner = self._or()
            self._take(")")
            return inner
        if token in _FUNCTIONS:
            return self._function(self._take())
        if token == "Microsoft.Dynamics.CRM.In":
            return self._in()
        name = self._take()
        op = self._take()
        if op not in _COMPARE:
            raise query_error(f"unknown operator {op!r}")
        value = _literal(self._take())
        return lambda row: _compare(op, row.get(name), value)

    def _function(self, name: str) -> Predicate:
        self._take("(")
        prop = self._take()
        self._take(",")
        value = _literal(self._take())
        self._take(")")
        if not isinstance(value, str):
            raise query_error(f"{name} needs a text argument")
        needle = value.casefold()

        def test(row: dict[str, Any]) -> bool:
            have = row.get(prop)
            if not isinstance(have, str):
                return False
            have = have.casefold()
            return {"contains": needle in have, "startswith": have.startswith(needle),
                    "endswith": have.endswith(needle)}[name]

        return test

    def _in(self) -> Predicate:
        self._take()
        self._take("(")
        self._take("PropertyName")
        self._take("=")
        prop = _literal(self._take())
        self._take(",")
        self._take("PropertyValues")
        self._take("=")
        self._take("[")
        values = []
        while self._peek() != "]":
            values.append(_norm(_literal(self._take())))
            if self._peek() == ",":
                self._take()
        self._take("]")
        self._take(")")
        wanted = set(values)
        return lambda row: _norm(row.get(prop)) in wanted


def parse_filter(text: str | None) -> Predicate:
    if not text:
        return lambda row: True
    return FilterParser(text).parse()


def split_segment(segment: str) -> tuple[str, str | None]:
    """``accounts(…)`` → (``accounts``, ``…``); the key may hold quoted ``)`` characters."""
    if "(" not in segment:
        return segment, None
    name, _, rest = segment.partition("(")
    depth_quote = False
    for index, char in enumerate(rest):
        if char == "'":
            depth_quote = not depth_quote
        elif char == ")" and not depth_quote:
            if rest[index + 1:]:
                raise DataverseError(400, "0x80060888", f"Bad resource segment {segment!r}")
            return name, rest[:index]
    raise DataverseError(400, "0x80060888", f"Unbalanced parentheses in {segment!r}")


def parse_key(text: str) -> dict[str, Any] | str:
    """A GUID, or ``name='value',other=1`` for an alternate key."""
    text = text.strip()
    if GUID.match(text):
        return text.lower()
    out: dict[str, Any] = {}
    parser = FilterParser(text)
    while parser._peek() is not None:
        name = parser._take()
        parser._take("=")
        out[name] = _literal(parser._take())
        if parser._peek() == ",":
            parser._take()
    if not out:
        raise DataverseError(400, "0x80060888", f"Bad key segment '({text})'")
    return out
