"""The part of Zoho's COQL the emulator answers: ``select … from … where … [order by …] [limit …]``.

Limits enforced (COQL-Limitations page, fact sheet §2.3): at most 50 selected fields, at most 50
values in ``in``/``not in``, LIMIT at most 2,000 (default 200), OFFSET + LIMIT at most 100,000.
STRICTER: the WHERE clause is required (older COQL versions refused queries without one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airflow_ascora_provider.sandbox.zoho_model import ZohoError

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|!=|=|<|>)"
                    r"|(?P<punct>[(),*])|(?P<word>[A-Za-z_$][A-Za-z0-9_.$]*))")
MAX_LIMIT = 2000
MAX_FIELDS = 50
MAX_IN = 50


def _syntax(near: str) -> ZohoError:
    return ZohoError("SYNTAX_ERROR", "invalid query formed", details={"near": near, "line": 1, "column": 1})


@dataclass
class Query:
    fields: list[str]
    module: str
    where: Any
    order_by: list[tuple[str, str]]
    limit: int
    offset: int


class _Parser:
    def __init__(self, text: str):
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip().rstrip(";")
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise _syntax(text[pos:pos + 20])
            kind = match.lastgroup
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self, *expected: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() in expected:
            self.i += 1
            return True
        return False

    def take(self, kind: str | None = None) -> str:
        token = self.peek()
        if token is None or (kind and token[0] != kind):
            raise _syntax(token[1] if token else "end of query")
        self.i += 1
        return token[1]

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token and token == ("punct", char):
            self.i += 1
            return True
        return False

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            raise _syntax("end of query")
        self.i += 1
        kind, text = token
        if kind == "str":
            return text[1:-1].replace("\\'", "'")
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind == "word" and text.lower() == "null":
            return None
        raise _syntax(text)

    def condition(self) -> Any:
        if self.punct("("):
            node = self.expression()
            if not self.punct(")"):
                raise _syntax("missing )")
            return node
        name = self.take("word")
        if self.word("is"):
            negate = self.word("not")
            if not self.word("null"):
                raise _syntax(name)
            return ("isnull", name, not negate)
        negate = self.word("not")
        if self.word("in"):
            if not self.punct("("):
                raise _syntax(name)
            values = [self.value()]
            while self.punct(","):
                values.append(self.value())
            if not self.punct(")"):
                raise _syntax(name)
            if len(values) > MAX_IN:
                raise ZohoError("LIMIT_EXCEEDED", "in clause limit exceeded",
                                details={"by": "in", "limit": MAX_IN})
            return ("in", name, values, negate)
        if self.word("like"):
            return ("like", name, self.value(), negate)
        if negate:
            raise _syntax(name)
        op = self.take("op")
        return ("cmp", name, op, self.value())

    def expression(self) -> Any:
        node = self.condition()
        while True:
            if self.word("and"):
                node = ("and", node, self.condition())
            elif self.word("or"):
                node = ("or", node, self.condition())
            else:
                return node


def parse(text: str) -> Query:
    p = _Parser(text)
    if not p.word("select"):
        raise _syntax(text[:20])
    fields = [p.take("word")]
    while p.punct(","):
        fields.append(p.take("word"))
    if len(fields) > MAX_FIELDS:
        raise ZohoError("LIMIT_EXCEEDED", "select column limit exceeded", details={"by": "select", "limit": 50})
    if not p.word("from"):
        raise _syntax("from")
    module = p.take("word")
    if not p.word("where"):
        raise ZohoError("SYNTAX_ERROR", "invalid query formed", details={"clause": "where", "reason": "missing"})
    where = p.expression()
    order: list[tuple[str, str]] = []
    if p.word("order"):
        if not p.word("by"):
            raise _syntax("order")
        while True:
            name = p.take("word")
            descending = p.word("desc")
            if not descending:
                p.word("asc")
            order.append((name, "desc" if descending else "asc"))
            if not p.punct(","):
                break
    limit, offset = 200, 0
    if p.word("limit"):
        first = p.value()
        if p.punct(","):
            offset, limit = first, p.value()
        else:
            limit = first
            if p.word("offset"):
                offset = p.value()
    if p.peek() is not None:
        raise _syntax(p.peek()[1])
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ZohoError("LIMIT_EXCEEDED", "limit exceeded", details={"by": "limit", "limit": MAX_LIMIT})
    if not isinstance(offset, int) or offset < 0 or offset + limit > 100_000:
        raise ZohoError("LIMIT_EXCEEDED", "offset limit exceeded", details={"by": "offset", "limit": 100_000})
    return Query(fields, module, where, order, limit, offset)


def _value_of(record: dict[str, Any], name: str) -> Any:
    head, _, sub = name.partition(".")
    value = record.get(head)
    if isinstance(value, dict):
        return value.get(sub or "id")
    return value


def matches(node: Any, record: dict[str, Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return matches(node[1], record) and matches(node[2], record)
    if kind == "or":
        return matches(node[1], record) or matches(node[2], record)
    if kind == "isnull":
        value = _value_of(record, node[1])
        return (value in (None, "")) == node[2]
    if kind == "in":
        found = _value_of(record, node[1]) in node[2]
        return found != node[3]
    if kind == "like":
        pattern = "^" + re.escape(str(node[2])).replace("%", ".*") + "$"
        found = re.match(pattern, str(_value_of(record, node[1]) or ""), re.IGNORECASE) is not None
        return found != node[3]
    _, name, op, expected = node
    value = _value_of(record, name)
    if op == "=":
        return value == expected
    if op == "!=":
        return value != expected
    if value is None or expected is None:
        return False
    try:
        return {"<": value < expected, ">": value > expected, "<=": value <= expected,
                ">=": value >= expected}[op]
    except TypeError:
        return False


def fields_named(node: Any) -> list[str]:
    """Every field a WHERE clause names (to check they exist)."""
    if node[0] in ("and", "or"):
        return fields_named(node[1]) + fields_named(node[2])
    return [node[1].partition(".")[0]]
