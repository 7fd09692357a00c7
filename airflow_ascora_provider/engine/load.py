"""Writing records: the one code path behind the sample, the full load and every delta.

For each batch (sized to the destination's cap):

1. transform (bad records → quarantine, the rest go on);
2. compare each payload's hash with the crosswalk: unchanged records are not written at all, so a
   re-run writes nothing and a delta writes exactly what changed;
3. save a write intent per record *before* writing, with the before-image of anything being
   updated; if the worker dies after the CRM accepted the batch but before the ledger heard of it,
   the retry reuses the saved before-image (the CRM already holds the new values) and the upsert
   on the Ascora id adopts the records instead of duplicating them;
4. write, then record creates/updates (crosswalk + audit, one transaction that also clears the
   intents) and quarantine the records the destination rejected, naming the field when it says.

A create the destination may or may not have done (its request timed out and it had not landed when
the plugin looked) is *in doubt*: it keeps its write intent and is settled when the unit's other
batches went out (:meth:`MapLoader.settle`), by which time a late write has usually landed. The
load does not stand still for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_ascora_provider.destinations.spec import OutgoingRecord, WriteResult
from airflow_ascora_provider.engine.batching import chunked
from airflow_ascora_provider.engine.context import MigrationContext, is_digest_v1, payload_hash, payload_hash_v1
from airflow_ascora_provider.engine.transform import BatchTransformer
from airflow_ascora_provider.ledger import Intent, QuarantineEntry, Write
from airflow_ascora_provider.mapping.spec import ObjectMap
from airflow_ascora_provider.mapping.values import to_jsonable
from airflow_ascora_provider.source.extract import Progress

log = logging.getLogger(__name__)


@dataclass
class LoadStats:
    considered: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    not_for_this_map: int = 0
    write_calls: int = 0
    seconds: float = 0.0
    written: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list, repr=False)

    def add(self, other: LoadStats) -> None:
        for name in ("considered", "created", "updated", "unchanged", "quarantined", "not_for_this_map",
                     "write_calls", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.written.extend(other.written)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("written")
        out["seconds"] = round(self.seconds, 3)
        return out


def batch_size_for(ctx: MigrationContext) -> int:
    cap = ctx.destination.batch_size
    wanted = int(ctx.destination_options.get("batch_size") or cap)
    return max(1, min(cap, wanted))


def _same_by_earlier_digest(held: str | None, record: OutgoingRecord) -> bool:
    """Whether the ledger's digest, made by an earlier release's way (``payload_hash_v1``), is that
    of this record's payload: a ledger from before an upgrade still tells which records changed, so
    the upgrade rewrites nothing. The record's own digest is then kept in its place."""
    return is_digest_v1(held) and payload_hash_v1(record.payload) == held


@dataclass
class PendingBatch:
    """Records of one batch that must be written, with their hashes and before-images."""

    stats: LoadStats
    to_write: list[tuple[OutgoingRecord, str]] = field(default_factory=list)
    before: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    adopted: set[str] = field(default_factory=set)

    @property
    def records(self) -> list[OutgoingRecord]:
        return [record for record, _ in self.to_write]


class MapLoader:
    """Loads records of one object map; reused across batches so indexes are built once per task."""

    def __init__(self, ctx: MigrationContext, object_map: ObjectMap, *, collect: bool = False):
        self.ctx = ctx
        self.map = object_map
        self.transformer = BatchTransformer(ctx, object_map)
        self.collect = collect
        self.ledger = ctx.ledger
        self.dest = ctx.destination
        self._in_doubt: list[tuple[OutgoingRecord, str, dict[str, Any] | None, bool, Any]] = []

    def load(self, records: Iterable[dict[str, Any]], total: int | None = None, *, settle: bool = True) -> LoadStats:
        """Load ``records``; with ``settle=False`` creates left in doubt wait for the caller's
        :meth:`settle` (after other maps' records went out)."""
        stats = LoadStats()
        started = time.monotonic()
        progress = Progress(f"load {self.map.name}", total)
        # Records another map takes (a customer is a company *or* a person) are set aside before
        # batching, so every write carries a full batch rather than the share this map keeps.
        when, elsewhere = self.map.when, 0
        mine: Iterable[dict[str, Any]] = records
        if when is not None:
            def applicable() -> Iterator[dict[str, Any]]:
                nonlocal elsewhere
                for record in records:
                    if when.matches(record, self.ctx.as_of):
                        yield record
                    else:
                        elsewhere += 1
            mine = applicable()
        for batch in self.transformer.batches(mine, batch_size_for(self.ctx)):
            stats.add(self.load_batch(batch))
            if self.transformer.looks_up_itself:  # a parent is never in doubt when a child needs it
                stats.add(self.settle())
            progress.tick(len(batch))
        if settle:
            stats.add(self.settle())
        stats.considered += elsewhere
        stats.not_for_this_map += elsewhere
        stats.seconds = time.monotonic() - started
        return stats

    def load_batch(self, records: list[dict[str, Any]]) -> LoadStats:
        pending = self.prepare(records)
        if not pending.to_write:
            return pending.stats
        results = self.dest.write_batch(self.map.target, pending.records, self.map.key_field)
        pending.stats.write_calls += 1
        return self.commit(pending, results)

    def prepare(self, records: list[dict[str, Any]], *, resuming: bool = False) -> PendingBatch:
        """Transform, drop unchanged records, save write intents: everything before the write.

        ``resuming`` is the second pass over a unit whose records went out in a bulk job: transform
        failures were quarantined by the first pass, and the job's results (not a lookup by Ascora
        id) say which records exist, so neither is done again.
        """
        om, ctx = self.map, self.ctx
        stats = LoadStats(considered=len(records))
        outcome = self.transformer.transform(records)
        stats.not_for_this_map = outcome.not_for_this_map
        if outcome.quarantined:
            if not resuming:
                self.ledger.quarantine(ctx.run_id, ctx.destination_name, outcome.quarantined)
            stats.quarantined += len({q.source_id for q in outcome.quarantined})
        pending = PendingBatch(stats)
        if not outcome.records:
            return pending
        ids = [r.source_id for r in outcome.records]
        existing = self.ledger.crosswalk_get_many(ctx.destination_name, om.source, ids, om.target)
        redigested: list[tuple[str, str, str]] = []  # entries an earlier release digested, unchanged
        for record in outcome.records:
            digest = record.digest or payload_hash(record.payload)
            entry = existing.get((record.source_id, om.target))
            # A map of existing records (users) arrives with its record already found; the user it
            # was written to before must still be that one for the write to be skipped.
            if entry is not None and record.dest_id in (None, entry.dest_id) and (
                    entry.payload_hash == digest or _same_by_earlier_digest(entry.payload_hash, record)):
                if entry.payload_hash != digest:
                    redigested.append((record.source_id, entry.payload_hash, digest))
                stats.unchanged += 1
                if self.collect:  # a retried sample still diffs what its first attempt wrote
                    stats.written.append((record.source_id, entry.dest_id, record.payload))
                continue
            if record.dest_id is None:
                record.dest_id = entry.dest_id if entry else None
            pending.to_write.append((record, digest))
        if redigested:  # compared the long way once: the next run compares them by digest alone
            self.ledger.crosswalk_redigest(ctx.destination_name, om.source, om.target, redigested)
        if pending.to_write:
            pending.before, pending.adopted = self._before_images(pending.records, adopt=not resuming)
        return pending

    def commit(self, pending: PendingBatch, results: list[WriteResult]) -> LoadStats:
        """Record what the destination answered: crosswalk + audit for writes, quarantine for refusals."""
        om, ctx, stats = self.map, self.ctx, pending.stats
        if len(results) != len(pending.to_write):
            raise RuntimeError(f"{ctx.destination_name} returned {len(results)} results for "
                               f"{len(pending.to_write)} records ({om.target}); a plugin must answer every record")
        results = self._adopt_refused_creates(pending, results)
        writes: list[Write] = []
        rejected: list[QuarantineEntry] = []
        for (record, digest), result in zip(pending.to_write, results):
            if result.in_doubt:  # its intent stays until settle() knows
                self._in_doubt.append((record, digest, pending.before.get(record.source_id),
                                       record.source_id in pending.adopted, result.settle))
                continue
            if result.ok:
                is_update = record.dest_id is not None and record.source_id not in pending.adopted
                writes.append(Write(
                    source_object=om.source, source_id=record.source_id, target_object=om.target,
                    dest_id=result.dest_id, op="update" if is_update else "create", payload_hash=digest,
                    before_image=pending.before.get(record.source_id) if is_update else None,
                ))
                if is_update:
                    stats.updated += 1
                else:
                    stats.created += 1
                if self.collect:
                    stats.written.append((record.source_id, result.dest_id, record.payload))
            else:
                value = record.payload.get(result.error_field) if result.error_field else None
                rejected.append(QuarantineEntry(
                    source_object=om.source, source_id=record.source_id, field=result.error_field,
                    value=value, reason=f"[{om.name}] {ctx.destination_name} rejected it: {result.error}",
                    stage="load"))
        # Writing a record also settles its earlier quarantine rows, in the same transaction.
        self.ledger.record_writes(ctx.run_id, ctx.destination_name, writes, resolve_quarantine=True)
        if rejected:
            self.ledger.quarantine(ctx.run_id, ctx.destination_name, rejected)
            self.ledger.clear_intents(ctx.destination_name,
                                      [(om.source, q.source_id, om.target) for q in rejected])
            stats.quarantined += len(rejected)
        return stats

    def settle(self) -> LoadStats:
        """Finish the creates left in doubt (see the module's docstring) and record them as any write.

        Each plugin's ``settle`` looks for the record first and sends it again only once the request
        that timed out can no longer land. If settling fails, the unit fails with the intents still
        saved: its retry looks for these records as it would after a crash.
        """
        if not self._in_doubt:
            return LoadStats()
        waiting, self._in_doubt = self._in_doubt, []
        log.info("%s: settling %d create(s) whose requests timed out", self.map.name, len(waiting))
        pending = PendingBatch(LoadStats())
        results: list[WriteResult] = []
        for record, digest, before, adopted, settle in waiting:
            pending.to_write.append((record, digest))
            pending.before[record.source_id] = before
            if adopted:
                pending.adopted.add(record.source_id)
            results.append(settle())
        return self.commit(pending, results)

    def _adopt_refused_creates(self, pending: PendingBatch, results: list[WriteResult]) -> list[WriteResult]:
        """Load the refused creates the destination holds anyway, instead of quarantining them.

        When the reply to a create is lost (a dropped connection, a gateway timeout) or the server
        fails part-way through a batch, the client's retry sends records that were already written,
        and the destination refuses them as duplicates of themselves. Records refused on a create are
        therefore looked up by their Ascora id; those found are adopted like the leftovers of a crash
        (counted as created by this run) and written once more as updates of what is there.
        """
        om = self.map
        refused = [i for i, ((record, _), result) in enumerate(zip(pending.to_write, results))
                   if not result.ok and not result.in_doubt and record.dest_id is None]
        if not refused or not om.key_field:
            return results
        records = [pending.to_write[i][0] for i in refused]
        found = self.dest.find_by_source_ids(om.target, om.key_field, [r.source_id for r in records])
        retry = [(i, r) for i, r in zip(refused, records) if r.source_id in found]
        if not retry:
            return results
        log.info("%s: %d refused create(s) are already in %s; adopting them", om.name, len(retry),
                 self.ctx.destination_name)
        for _, record in retry:
            record.dest_id = found[record.source_id]
            pending.adopted.add(record.source_id)
        again = self.dest.write_batch(om.target, [r for _, r in retry], om.key_field)
        pending.stats.write_calls += 1
        results = list(results)
        for (i, _), result in zip(retry, again, strict=True):
            results[i] = result
        return results

    def _before_images(self, records: list[OutgoingRecord], *, adopt: bool = True
                       ) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
        """Save intents; return the true before-image of every update and the creates adopted after a crash.

        A record with a leftover *create* intent and no crosswalk entry may already exist in the CRM
        (the worker died after the write, before the ledger heard of it). It is looked up by its
        Ascora id and, when found, written as an update of that record while still counting as
        created by this migration, so rollback deletes it and nothing is duplicated.
        """
        om, ctx = self.map, self.ctx
        intents = self.ledger.get_intents(ctx.destination_name, om.source, om.target,
                                          [r.source_id for r in records])
        adopted: set[str] = set()
        orphans = [r for r in records if r.dest_id is None and r.source_id in intents
                   and intents[r.source_id].op == "create"]
        if orphans and om.key_field and adopt:
            found = self.dest.find_by_source_ids(om.target, om.key_field, [r.source_id for r in orphans])
            for record in orphans:
                if record.source_id in found:
                    record.dest_id = found[record.source_id]
                    adopted.add(record.source_id)
            if adopted:
                log.info("%s: adopting %d record(s) written before an interruption", om.name, len(adopted))
        updates = [r for r in records if r.dest_id is not None and r.source_id not in adopted]
        fields = sorted({f for r in updates for f in r.payload})
        need = [r.dest_id for r in updates if r.source_id not in intents]
        current = self.dest.read_records(om.target, need, fields) if need else {}
        before: dict[str, dict[str, Any] | None] = {}
        new_intents = []
        for record in records:
            saved = intents.get(record.source_id)
            if saved is not None and saved.op == "update":
                before[record.source_id] = saved.before_image
                continue
            image = to_jsonable(current.get(record.dest_id)) if record.dest_id and record.source_id not in adopted else None
            before[record.source_id] = image
            if saved is None:
                new_intents.append(Intent(om.source, record.source_id, om.target,
                                          "update" if record.dest_id else "create", image))
        if new_intents:
            self.ledger.save_intents(ctx.run_id, ctx.destination_name, new_intents)
        return before, adopted
