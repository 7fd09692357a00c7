"""Cutting a stream of staged records into lists, without reading the stream ahead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` items (the last may be shorter), each taken from the stream only when asked
    for, in one C-level step rather than an append an item."""
    chunks = getattr(items, "chunks", None)
    if chunks is not None:  # staged records: chunks that keep their columns (source.staging.StagedRecords)
        yield from chunks(size)
        return
    stream = iter(items)
    while batch := list(islice(stream, size)):
        yield batch
