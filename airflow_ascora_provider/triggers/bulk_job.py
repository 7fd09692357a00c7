"""Waiting for a destination's asynchronous bulk job without holding a worker slot.

A Bulk API 2.0 ingest job (Salesforce), a Bulk Write job (Zoho) or a bulk upsert (Freshsales) can
run for many minutes. The load task submits the job and defers on this trigger; the triggerer polls
the job through the same destination plugin (so the polling logic lives with the API it talks to)
and wakes the task when the job has finished, failed, or taken longer than ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow_ascora_provider.compat import BaseTrigger, TriggerEvent


class BulkJobTrigger(BaseTrigger):
    """Poll ``destination``'s bulk job ``job`` every ``poll_interval`` seconds until it finishes.

    The event carries ``state`` (``done`` | ``failed`` | ``timeout`` | ``error``), the plugin's
    message, and the job handle as last returned (plugins may record sub-job progress in it).
    """

    def __init__(self, *, destination: str, job: dict[str, Any], conn_id: str | None = None,
                 options: dict[str, Any] | None = None, poll_interval: float = 10.0,
                 timeout: float = 6 * 3600.0, started: float | None = None) -> None:
        super().__init__()
        self.destination = destination
        self.job = job
        self.conn_id = conn_id
        self.options = options or {}
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.started = started if started is not None else time.time()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "destination": self.destination, "job": self.job, "conn_id": self.conn_id,
            "options": self.options, "poll_interval": self.poll_interval, "timeout": self.timeout,
            "started": self.started,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_ascora_provider.destinations.manager import get_destination

        dest = await asyncio.to_thread(get_destination, self.destination, self.conn_id, **self.options)
        try:
            while True:
                try:
                    status = await asyncio.to_thread(dest.poll_bulk_job, self.job)
                except Exception as exc:  # the task decides: it fails with this message and may retry
                    yield TriggerEvent({"state": "error", "message": f"{type(exc).__name__}: {exc}",
                                        "job": self.job})
                    return
                if status.finished:
                    yield TriggerEvent({"state": status.state, "message": status.message,
                                        "processed": status.processed, "job": self.job})
                    return
                if time.time() - self.started > self.timeout:
                    yield TriggerEvent({"state": "timeout", "job": self.job,
                                        "message": f"bulk job still {status.state} after {self.timeout:.0f}s"})
                    return
                self.log.info("%s bulk job %s: %s (%s processed)", self.destination,
                              self.job.get("id"), status.state, status.processed)
                await asyncio.sleep(self.poll_interval)
        finally:
            await asyncio.to_thread(dest.close)
