"""Cutting a stream of staged records into lists, without reading the stream ahead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
