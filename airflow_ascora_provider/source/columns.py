"""A column of Python values that knows which classes it holds.

A transform and the payload digest ask each column which classes its values are (text that may be
empty, amounts, timestamps ...) to pick one way for the whole column. Asked of the values, that is a
pass over every value of every column (two passes for a plain copy: the transform's and the
digest's). A staged column knows the answer from its Arrow type and its count of nulls, and keeps it
here; a column derived from it keeps it where the derivation cannot add a class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class KindedColumn(list):
    """A list of values and ``kinds``: the classes of its values, ``type(None)`` among them when a value
    is none. It may name a class no value has (kinds of a column it was cut from); never miss one."""

    __slots__ = ("kinds",)

    def __init__(self, values: Iterable[Any], kinds: frozenset[type]):
        super().__init__(values)
        self.kinds = kinds


def kinds_of(values: list[Any]) -> frozenset[type] | set[type]:
    """The classes of ``values``: as kept with a :class:`KindedColumn`, else found value by value."""
    kinds = getattr(values, "kinds", None)
    return kinds if kinds is not None else set(map(type, values))


def with_kinds_of(source: list[Any], values: Iterable[Any]) -> list[Any]:
    """``values`` (taken from ``source``: a copy, a subset) as a list keeping ``source``'s kinds."""
    kinds = getattr(source, "kinds", None)
    return list(values) if kinds is None else KindedColumn(values, kinds)
