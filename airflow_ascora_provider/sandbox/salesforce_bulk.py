"""Bulk API 2.0 ingest jobs for the Salesforce emulator.

Lifecycle (documented): ``POST jobs/ingest`` → ``Open``; one ``PUT …/batches`` of CSV (201, empty
body); ``PATCH {"state": "UploadComplete"}``; the job then runs ``InProgress`` → ``JobComplete``
(or ``Failed`` / ``Aborted``). Here a job advances one step each time its status is read after the
upload is closed, so a client has to poll at least twice, as it must against the real service.

Rows are written through :class:`~airflow_ascora_provider.sandbox.salesforce_org.Org`, so they
meet the same rules as REST writes. Results follow the docs: ``successfulResults`` has
``sf__Id, sf__Created`` then the original columns, ``failedResults`` has ``sf__Id, sf__Error`` then
the original columns, ``unprocessedrecords`` only the original columns; their order is not
guaranteed (the emulator returns them reversed, so a client must match rows by content). An empty
cell leaves a field alone; ``#N/A`` sets it to null. One job uses one daily "batch" per 10,000
records; once the org's daily batch allowance is spent a closed job fails ([K]: the exact message
is not documented).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from airflow_ascora_provider.sandbox.salesforce_org import Org, SfError, now_iso

OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
RECORDS_PER_BATCH = 10_000


class JobError(SfError):
    """A refused job request (``INVALIDJOB``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__("INVALIDJOB", message, status=status)


@dataclass
class IngestJob:
    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    version: str
    state: str = "Open"
    created: str = field(default_factory=now_iso)
    modified: str = field(default_factory=now_iso)
    data: str | None = None
    error: str | None = None
    header: list[str] = field(default_factory=list)
    succeeded: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id, "operation": self.operation, "object": self.object, "createdById": None,
            "createdDate": self.created, "systemModstamp": self.modified, "state": self.state,
            "externalIdFieldName": self.external_id, "concurrencyMode": "Parallel", "contentType": "CSV",
            "apiVersion": float(self.version), "jobType": "V2Ingest", "lineEnding": self.line_ending,
            "columnDelimiter": next(k for k, v in DELIMITERS.items() if v == self.delimiter),
            "contentUrl": f"services/data/v{self.version}/jobs/ingest/{self.id}/batches",
            "numberRecordsProcessed": len(self.succeeded) + len(self.failed),
            "numberRecordsFailed": len(self.failed), "retries": 0, "totalProcessingTime": 0,
            "apiActiveProcessingTime": 0, "apexProcessingTime": 0,
            **({"errorMessage": self.error} if self.error else {}),
        }


class BulkIngest:
    def __init__(self, org: Org):
        self.org = org
        self.jobs: dict[str, IngestJob] = {}

    def job(self, job_id: str) -> IngestJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise SfError("NOT_FOUND", f"Job {job_id} not found", status=404)
        return job

    def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        with self.org.lock:
            operation = payload.get("operation")
            if operation not in OPERATIONS:
                raise JobError(f"InvalidJob : Invalid operation: {operation}")
            name = payload.get("object")
            obj = self.org.objects.get(str(name))
            if obj is None:
                raise JobError(f"InvalidJob : Unable to find object: {name}")
            if payload.get("contentType", "CSV") != "CSV":
                raise JobError("InvalidJob : contentType must be CSV")
            external = payload.get("externalIdFieldName")
            if operation == "upsert":
                f = obj.field(external or "")
                if f is None or not f.visible or not (f.external_id or f.type == "id"):
                    raise JobError(f"InvalidJob : External ID field {external!r} does not exist or is not an "
                                   f"External ID on {obj.name}")
            ending = payload.get("lineEnding", "LF")
            delimiter = DELIMITERS.get(payload.get("columnDelimiter", "COMMA"))
            if ending not in ("LF", "CRLF") or delimiter is None:
                raise JobError("InvalidJob : lineEnding must be LF or CRLF and columnDelimiter one of "
                               + ", ".join(DELIMITERS))
            job = IngestJob(self.org.new_id("750"), obj.name, operation, external if operation == "upsert" else None,
                            ending, delimiter, self.org.version)
            self.jobs[job.id] = job
            return job.info()

    def upload(self, job_id: str, body: bytes, content_type: str) -> None:
        with self.org.lock:
            job = self.job(job_id)
            if job.state != "Open" or job.data is not None:
                raise JobError(f"InvalidJob : Job {job_id} is not open for data (state {job.state}); a job takes "
                               "exactly one upload", status=409)
            if not content_type.startswith("text/csv"):
                raise JobError("InvalidJob : data must be uploaded as text/csv")
            job.data = body.decode("utf-8")
            job.modified = now_iso()

    def set_state(self, job_id: str, state: str) -> dict[str, Any]:
        with self.org.lock:
            job = self.job(job_id)
            if state == "UploadComplete":
                if job.state != "Open":
                    raise JobError(f"InvalidJob : Job {job_id} is {job.state}, not Open")
                if not job.data:
                    raise JobError("InvalidJob : no data was uploaded for this job")
                job.state = "UploadComplete"
                rows = max(1, job.data.count("\n"))
                batches = math.ceil(rows / RECORDS_PER_BATCH)
                if self.org.bulk_batches_used + batches > self.org.bulk_batches_max:
                    job.state, job.error = "Failed", "Exceeded the daily Bulk API batch limit (DailyBulkApiBatches)"
                else:
                    self.org.bulk_batches_used += batches
            elif state == "Aborted":
                if job.state in ("JobComplete", "Failed", "Aborted"):
                    raise JobError(f"InvalidJob : Job {job_id} is already {job.state}")
                job.state = "Aborted"
            else:
                raise JobError(f"InvalidJob : a client can set the state to UploadComplete or Aborted, not {state}")
            job.modified = now_iso()
            return job.info()

    def status(self, job_id: str) -> dict[str, Any]:
        """Each read after the upload is closed moves the job on one step: queued → running → done."""
        with self.org.lock:
            job = self.job(job_id)
            if job.state == "UploadComplete":
                job.state = "InProgress"
            elif job.state == "InProgress":
                self._run(job)
                job.state = "Failed" if job.error else "JobComplete"
            job.modified = now_iso()
            return job.info()

    def delete(self, job_id: str) -> None:
        with self.org.lock:
            job = self.job(job_id)
            if job.state not in ("JobComplete", "Failed", "Aborted"):
                raise JobError(f"InvalidJob : Job {job_id} is {job.state}; only finished jobs can be deleted")
            del self.jobs[job_id]

    def listing(self) -> dict[str, Any]:
        with self.org.lock:
            return {"done": True, "records": [j.info() for j in self.jobs.values()], "nextRecordsUrl": None}

    def _run(self, job: IngestJob) -> None:
        obj = self.org.objects[job.object]
        reader = csv.reader(io.StringIO(job.data, newline=""), delimiter=job.delimiter)
        rows = list(reader)
        job.header = rows[0] if rows else []
        body = [r for r in rows[1:] if any(cell for cell in r)]
        fields = []
        for name in job.header:
            f = obj.field(name)
            if f is None or not f.visible:
                job.error = f"InvalidBatch : Field name not found : {name}"
                job.unprocessed = body
                return
            fields.append(f)
        if job.operation in ("delete", "hardDelete") and [f.name for f in fields] != ["Id"]:
            job.error = "InvalidBatch : The 'delete' batch must contain only 'Id'"
            job.unprocessed = body
            return
        for row in body:
            try:
                record_id, created = self._write(job, obj, fields, row)
                job.succeeded.append((record_id, created, row))
            except SfError as exc:
                fields_part = ",".join(exc.fields)
                job.failed.append(("", f"{exc.code}:{exc.message}:{fields_part} --", row))

    def _write(self, job: IngestJob, obj, fields, row: list[str]) -> tuple[str, bool]:
        if len(row) != len(fields):
            raise SfError("INVALID_ROW", f"the row has {len(row)} values for {len(fields)} columns")
        values: dict[str, Any] = {}
        for f, text in zip(fields, row):
            if text == "":
                continue  # an empty cell leaves the field as it is
            values[f.name] = None if text == "#N/A" else _from_csv(f, text)
        if job.operation == "insert":
            if "Id" in values:
                raise SfError("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"])
            return self.org.insert(obj.name, values), True
        if job.operation == "update":
            record_id = values.pop("Id", None)
            if not record_id:
                raise SfError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            self.org.update(obj.name, record_id, values)
            return self.org.where.get(record_id, record_id), False
        if job.operation == "upsert":
            key = obj.field(job.external_id).name
            value = values.pop(key, None)
            if value in (None, ""):
                raise SfError("MISSING_ARGUMENT", f"{key} not specified", [key])
            return self.org.upsert(obj.name, key, str(value), values)
        record_id = values.get("Id") or ""
        self.org.delete(record_id)
        return record_id, False

    def results(self, job_id: str, kind: str) -> str:
        with self.org.lock:
            job = self.job(job_id)
            if kind == "successfulResults":
                if job.state != "JobComplete":
                    raise JobError(f"InvalidJob : results are available once the job is complete (it is {job.state})")
                head, rows = ["sf__Id", "sf__Created"], [[i, "true" if c else "false", *r] for i, c, r in job.succeeded]
            elif kind == "failedResults":
                if job.state != "JobComplete":
                    raise JobError(f"InvalidJob : results are available once the job is complete (it is {job.state})")
                head, rows = ["sf__Id", "sf__Error"], [[i, e, *r] for i, e, r in job.failed]
            elif kind.lower() == "unprocessedrecords":
                head, rows = [], job.unprocessed if job.state in ("Failed", "Aborted") else []
            else:
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow([*head, *job.header])
            for row in reversed(rows):
                writer.writerow(row)
            return out.getvalue()


def _from_csv(f, text: str) -> Any:
    """A CSV cell in the JSON type the REST layer would carry (so both paths share one check)."""
    if f.type == "boolean":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0"):
            raise SfError("INVALID_FIELD", f"'{text}' is not a valid value for the type xsd:boolean", [f.name])
        return lowered in ("true", "1")
    if f.type in ("int", "double", "currency", "percent"):
        try:
            number = float(text)
        except ValueError:
            raise SfError("INVALID_FIELD", f"'{text}' is not a valid value for the type xsd:double", [f.name]) from None
        return int(number) if f.type == "int" and number == int(number) else number
    return text
