"""The SOQL subset the Salesforce emulator answers.

``SELECT f1, f2 | COUNT() FROM Object [WHERE cond AND cond ...] [ORDER BY f [ASC|DESC]] [LIMIT n]``,
where a condition is ``field op literal`` with ``= != <> < > <= >= LIKE IN NOT IN`` and a literal
is a quoted string (backslash escapes), a number, ``true``/``false``/``null``, a date or datetime,
or a parenthesised list of those. ``OR``, parentheses around conditions, relationship paths
(``Account.Name``), sub-queries and aggregate functions other than ``COUNT()`` are refused with
``MALFORMED_QUERY`` rather than answered wrongly: a client depending on them would be tested
against behaviour the emulator does not have.

Comparison follows SOQL: text compares case-insensitively, ``LIKE`` knows ``%`` and ``_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<dt>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))?)(?![\w.])"
    r"|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<op><=|>=|!=|<>|=|<|>)"
    r"|(?P<punct>[(),])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)"
    r")"
)


class SoqlError(ValueError):
    """A query the emulator cannot (or Salesforce would not) run; ``code`` is Salesforce's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Condition:
    field: str
    op: str
    value: Any  # a Python literal, or a tuple of them for IN / NOT IN


@dataclass
class Query:
    object: str
    fields: list[str]
    count: bool = False
    where: list[Condition] = field(default_factory=list)
    order_by: str | None = None
    descending: bool = False
    limit: int | None = None


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at: {text[pos:pos + 30]!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _literal(kind: str, value: str) -> Any:
    if kind == "str":
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value[1:-1])
    if kind == "num":
        return float(value) if "." in value else int(value)
    if kind == "dt":
        return value
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    raise SoqlError("MALFORMED_QUERY", f"expected a literal, got {value!r}")


def parse(text: str) -> Query:
    tokens = _tokens(text)
    pos = 0

    def peek(offset: int = 0) -> tuple[str, str] | tuple[None, None]:
        return tokens[pos + offset] if pos + offset < len(tokens) else (None, None)

    def keyword(word: str) -> bool:
        kind, value = peek()
        return kind == "word" and value.upper() == word

    def expect_keyword(word: str) -> None:
        nonlocal pos
        if not keyword(word):
            raise SoqlError("MALFORMED_QUERY", f"expected {word} near {peek()[1]!r}")
        pos += 1

    expect_keyword("SELECT")
    fields: list[str] = []
    count = False
    while True:
        kind, value = peek()
        if kind != "word":
            raise SoqlError("MALFORMED_QUERY", f"expected a field name near {value!r}")
        pos += 1
        if value.upper() == "COUNT" and peek() == ("punct", "("):
            if peek(1) != ("punct", ")"):
                raise SoqlError("MALFORMED_QUERY", "the emulator supports only COUNT()")
            pos += 2
            count = True
        elif "." in value:
            raise SoqlError("MALFORMED_QUERY", f"relationship paths ({value}) are not supported by the emulator")
        else:
            fields.append(value)
        if peek() == ("punct", ","):
            pos += 1
            continue
        break
    expect_keyword("FROM")
    kind, obj = peek()
    if kind != "word":
        raise SoqlError("MALFORMED_QUERY", "expected an object name after FROM")
    pos += 1
    query = Query(object=obj, fields=fields, count=count)
    if keyword("WHERE"):
        pos += 1
        while True:
            kind, name = peek()
            if kind != "word":
                raise SoqlError("MALFORMED_QUERY", f"expected a field in WHERE near {name!r}")
            if "." in name:
                raise SoqlError("MALFORMED_QUERY", f"relationship paths ({name}) are not supported by the emulator")
            pos += 1
            kind, op = peek()
            if kind == "op":
                pos += 1
                op = "!=" if op == "<>" else op
            elif keyword("LIKE"):
                pos += 1
                op = "LIKE"
            elif keyword("IN"):
                pos += 1
                op = "IN"
            elif keyword("NOT") and peek(1)[0] == "word" and peek(1)[1].upper() == "IN":
                pos += 2
                op = "NOT IN"
            else:
                raise SoqlError("MALFORMED_QUERY", f"unsupported operator near {op!r}")
            if op in ("IN", "NOT IN"):
                if peek() != ("punct", "("):
                    raise SoqlError("MALFORMED_QUERY", f"{op} needs a parenthesised list")
                pos += 1
                values = []
                while True:
                    kind, raw = peek()
                    if kind is None:
                        raise SoqlError("MALFORMED_QUERY", "unterminated IN list")
                    pos += 1
                    values.append(_literal(kind, raw))
                    if peek() == ("punct", ","):
                        pos += 1
                        continue
                    if peek() == ("punct", ")"):
                        pos += 1
                        break
                    raise SoqlError("MALFORMED_QUERY", "expected ',' or ')' in an IN list")
                value = tuple(values)
            else:
                kind, raw = peek()
                if kind is None:
                    raise SoqlError("MALFORMED_QUERY", "a condition is missing its value")
                pos += 1
                value = _literal(kind, raw)
            query.where.append(Condition(name, op, value))
            if keyword("AND"):
                pos += 1
                continue
            if keyword("OR"):
                raise SoqlError("MALFORMED_QUERY", "OR is not supported by the emulator")
            break
    if keyword("ORDER"):
        pos += 1
        expect_keyword("BY")
        kind, name = peek()
        if kind != "word":
            raise SoqlError("MALFORMED_QUERY", "expected a field after ORDER BY")
        pos += 1
        query.order_by = name
        if keyword("DESC") or keyword("ASC"):
            query.descending = peek()[1].upper() == "DESC"
            pos += 1
    if keyword("LIMIT"):
        pos += 1
        kind, raw = peek()
        if kind != "num":
            raise SoqlError("MALFORMED_QUERY", "LIMIT needs a number")
        pos += 1
        query.limit = int(raw)
    if pos != len(tokens):
        raise SoqlError("MALFORMED_QUERY", f"unexpected token {peek()[1]!r}")
    return query


def _comparable(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _like(value: Any, pattern: str) -> bool:
    if value is None:
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, str(value), flags=re.IGNORECASE | re.DOTALL) is not None


def matches(record: dict[str, Any], condition: Condition, normalise=lambda field, value: value) -> bool:
    """``normalise(field, literal)`` lets the caller put literals in the stored form (ids, datetimes)."""
    actual = record.get(condition.field)
    if condition.op in ("IN", "NOT IN"):
        wanted = {_comparable(normalise(condition.field, v)) for v in condition.value}
        found = _comparable(actual) in wanted
        return found if condition.op == "IN" else not found
    if condition.op == "LIKE":
        return _like(actual, str(condition.value))
    literal = normalise(condition.field, condition.value)
    a, b = _comparable(actual), _comparable(literal)
    if condition.op == "=":
        return a == b
    if condition.op == "!=":
        return a != b
    if a is None or b is None:
        return False
    try:
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[condition.op]
    except TypeError:
        return False
