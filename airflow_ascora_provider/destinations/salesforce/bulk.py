"""Bulk API 2.0 ingest jobs, driven through simple-salesforce without waiting on them.

``sf.bulk2.<Object>.insert(...)`` uploads *and then blocks until the job ends*, which would hold a
worker slot for the whole job. The engine instead submits, defers on ``BulkJobTrigger`` and polls, so
this module splits the same lifecycle into steps, each one public simple-salesforce call:
``sf.restful("jobs/ingest", POST)`` creates a job, ``simple_salesforce.util.call_salesforce`` uploads
the CSV (the upload answers 201 with an empty body, which ``restful`` would try to parse as JSON),
``sf.restful(..., PATCH)`` closes it, ``sf.restful(GET)`` polls, and
``sf.bulk2.<Object>.get_successful_records`` / ``get_failed_records`` fetch the result CSVs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from dataclasses import dataclass
from typing import Any

MAX_UPLOAD_BYTES = 100 * 1024 * 1024 - 1024 * 1024  # Bulk 2.0 accepts 100 MB per upload; keep 1 MB spare
# (connect, read) seconds for the upload: Salesforce answers only once it has stored up to 100 MB, which
# can take longer than the session's default ``timeout`` meant for single calls.
UPLOAD_TIMEOUT = (10.0, 300.0)
_FIELDS_TAIL = re.compile(r"^[A-Za-z0-9_, ]*$")


@dataclass(frozen=True)
class JobRow:
    source_id: str
    values: dict[str, str]  # CSV column -> cell


def to_csv(key_field: str, rows: list[JobRow]) -> str:
    columns = [key_field, *sorted({c for r in rows for c in r.values} - {key_field})]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.values.get(c, "") for c in columns])
    return out.getvalue()


def parse_error(text: str) -> tuple[str, str, list[str]]:
    """``sf__Error`` → (code, message, fields); e.g. ``REQUIRED_FIELD_MISSING:Required fields are missing:
    [Name]:Name --``."""
    text = text.strip()
    fields: list[str] = []
    if text.endswith("--"):
        text = text[:-2].rstrip()
        head, sep, tail = text.rpartition(":")
        if sep and _FIELDS_TAIL.match(tail):
            fields = [f.strip() for f in tail.split(",") if f.strip()]
            text = head
    code, _, message = text.partition(":")
    return code.strip(), message.strip(), fields


def create_job(sf, sobject: str, operation: str, external_id: str | None) -> str:
    body = {"object": sobject, "operation": operation, "contentType": "CSV", "lineEnding": "LF",
            "columnDelimiter": "COMMA"}
    if operation == "upsert":
        body["externalIdFieldName"] = external_id
    return sf.restful("jobs/ingest", method="POST", json=body)["id"]


def upload(sf, job_id: str, data: str) -> None:
    from simple_salesforce.util import call_salesforce

    payload = data.encode("utf-8")
    if len(payload) > MAX_UPLOAD_BYTES:
        raise ValueError(f"bulk job data is {len(payload):,} bytes; Bulk API 2.0 takes at most 100 MB per job")
    headers = {"Authorization": f"Bearer {sf.session_id}", "Content-Type": "text/csv; charset=UTF-8",
               "Accept": "application/json"}
    response = call_salesforce(f"{sf.bulk2_url}ingest/{job_id}/batches", "PUT", session=sf.session,
                               headers=headers, data=payload, timeout=UPLOAD_TIMEOUT)
    if response.status_code != 201:
        raise RuntimeError(f"Bulk API 2.0 refused the data of job {job_id}: HTTP {response.status_code} "
                           f"{response.text[:200]}")


def set_state(sf, job_id: str, state: str) -> dict[str, Any]:
    return sf.restful(f"jobs/ingest/{job_id}", method="PATCH", json={"state": state})


def job_info(sf, job_id: str) -> dict[str, Any]:
    return sf.restful(f"jobs/ingest/{job_id}")


def submit(sf, sobject: str, operation: str, key_field: str, rows: list[JobRow]) -> str:
    """Create, upload and close one job; a job whose upload fails is aborted before the error goes up."""
    job_id = create_job(sf, sobject, operation, key_field)
    try:
        upload(sf, job_id, to_csv(key_field, rows))
        set_state(sf, job_id, "UploadComplete")
    except Exception:
        with contextlib.suppress(Exception):  # the upload's error is the one worth reporting
            set_state(sf, job_id, "Aborted")
        raise
    return job_id


def results(sf, sobject: str, job_id: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(successful rows, failed rows) of a finished job, as dicts keyed by CSV column."""
    handler = getattr(sf.bulk2, sobject)
    ok = list(csv.DictReader(io.StringIO(handler.get_successful_records(job_id))))
    failed = list(csv.DictReader(io.StringIO(handler.get_failed_records(job_id))))
    return ok, failed
