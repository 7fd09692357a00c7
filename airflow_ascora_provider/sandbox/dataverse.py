"""An in-memory Microsoft Dataverse (Dynamics 365 Sales) Web API v9.2 that is hard to please.

Why it exists: no Dataverse environment is reachable from tests, and the Web API has rules a client
gets wrong easily: entity set names and navigation properties come from metadata (never from
pluralising), lookups are written through ``@odata.bind``, upserts are conditional on ``If-Match`` /
``If-None-Match``, ``$batch`` is multipart with atomic change sets, alternate keys are usable only once
their index is Active, notes carry files as base64 under a size limit, and the service-protection
limits answer 429 with ``Retry-After``. This emulator implements those documented behaviours and
validates every write (unknown attribute ``0x80060888``, undeclared navigation property
``0x80048d19``, duplicate key ``0x80040237``, length ``0x80044331`` ...). Facts and sources:
``shared/reference/salesforce-and-dataverse-api.md`` part B. Where the documentation is silent it is
stricter than the real service, marked ``STRICTER:``.

It also plays Microsoft Entra ID for the OAuth2 client-credentials flow (OpenID configuration and
token endpoint under ``/{tenant}/...``) so the real ``msal`` library authenticates against it. msal only
talks to ``https`` authorities, so serve it with :class:`TlsServedApp` (a self-signed certificate made at
start; give its path to the client as the CA bundle).

``app.state.dataverse.snapshot()`` is a deep copy of every record and of the custom metadata, for
exact before/after comparisons in rollback tests.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import math
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_ascora_provider.sandbox.dataverse_batch import SubRequest, SubResponse, parse_batch, render_batch
from airflow_ascora_provider.sandbox.dataverse_metadata import (
    ATTRIBUTE_CLASSES,
    DEFAULT_KEY_ACTIVATION_SECONDS,
    KEYABLE_TYPES,
    MAX_KEYS_PER_TABLE,
    Attribute,
    DataverseError,
    Entity,
    Key,
    Relationship,
    activity_and_note_relationships,
    entity_set_name,
    label_text,
    standard_entities,
    standard_relationships,
    system_attributes,
)
from airflow_ascora_provider.sandbox.dataverse_odata import GUID, parse_filter, parse_key, split_segment
from airflow_ascora_provider.sandbox.emulator import ServedApp, instrument

API_ROOT = "/api/data/v9.2"
DEFAULT_TENANT = "sandbox-tenant"
DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-00000000a5c0"
DEFAULT_CLIENT_SECRET = "dataverse-sandbox-secret"
DEFAULT_PREFIX = "asc"
DEFAULT_OPTION_PREFIX = 10000
DEFAULT_MAX_UPLOAD = 5 * 1024 * 1024  # Organization.MaxUploadFileSize default, applies to the base64 text
DEFAULT_PAGE_SIZE = 5000
PROFESSIONAL_CUSTOM_TABLES = 15
DEFAULT_USERS = [
    {"email": "owner@sparkys-electrical.example", "name": "Olivia Owner"},
    {"email": "tech1@sparkys-electrical.example", "name": "Tom Tradie"},
]
_ODATA_HEADERS = {"OData-Version": "4.0"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ServiceProtection:
    """Dataverse's per-user limits: requests and execution time in a sliding window, concurrency.

    Each request inside a ``$batch`` counts, and so does the batch itself (STRICTER: the documentation
    only says the inner requests count).
    """

    def __init__(self, requests: int | None, window: float, execution_ms: int | None, concurrency: int | None):
        self.requests, self.window = requests, window
        self.execution_ms, self.concurrency = execution_ms, concurrency
        self._hits: dict[str, deque[tuple[float, int]]] = {}
        self._time: dict[str, deque[tuple[float, float]]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def set_limit(self, requests: int | None, window: float) -> None:
        """A new request limit and a fresh window (``POST /__sandbox__/rate-limit`` lands here)."""
        with self._lock:
            self.requests, self.window = requests, window
            self._hits.clear()
            self._time.clear()

    def _trim(self, key: str, now: float) -> tuple[deque, deque]:
        hits = self._hits.setdefault(key, deque())
        spent = self._time.setdefault(key, deque())
        while hits and now - hits[0][0] >= self.window:
            hits.popleft()
        while spent and now - spent[0][0] >= self.window:
            spent.popleft()
        return hits, spent

    def enter(self, key: str, weight: int) -> None:
        now = time.monotonic()
        with self._lock:
            hits, spent = self._trim(key, now)
            if self.concurrency and self._inflight.get(key, 0) >= self.concurrency:
                raise DataverseError(429, "0x80072326", f"Number of concurrent requests exceeded the limit of "
                                     f"{self.concurrency}.", {"Retry-After": "1"})
            used = sum(n for _, n in hits)
            if self.requests and used + weight > self.requests:
                wait = self.window - (now - hits[0][0]) if hits else self.window
                raise DataverseError(429, "0x80072322", f"Number of requests exceeded the limit of {self.requests} "
                                     f"over time window of {int(self.window)} seconds.",
                                     {"Retry-After": str(max(1, math.ceil(wait)))})
            if self.execution_ms and sum(ms for _, ms in spent) > self.execution_ms:
                wait = self.window - (now - spent[0][0])
                raise DataverseError(429, "0x80072321", f"Combined execution time of incoming requests exceeded "
                                     f"limit of {self.execution_ms:,} milliseconds over time window of "
                                     f"{int(self.window)} seconds.", {"Retry-After": str(max(1, math.ceil(wait)))})
            hits.append((now, weight))
            self._inflight[key] = self._inflight.get(key, 0) + 1

    def leave(self, key: str, started: float) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            self._inflight[key] = max(0, self._inflight.get(key, 1) - 1)
            hits, spent = self._trim(key, now)
            spent.append((now, (now - started) * 1000.0))
            headers = {}
            if self.requests:
                headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(
                    max(0, self.requests - sum(n for _, n in hits)))
            if self.execution_ms:
                headers["x-ms-ratelimit-time-remaining-xrm-requests"] = f"{max(0.0, self.execution_ms - sum(ms for _, ms in spent)):.2f}"
            return headers


class DataverseState:
    """Metadata, records, tokens and limits of one emulated environment (one lock for all of it)."""

    def __init__(self, *, prefix: str, option_prefix: int, users: list[dict], client_id: str, client_secret: str,
                 tenant: str, max_upload: int, professional: bool, key_activation_seconds: float,
                 token_lifetime: int, protection: ServiceProtection):
        self.lock = threading.RLock()
        self.client_id, self.client_secret, self.tenant = client_id, client_secret, tenant
        self.professional = professional
        self.key_activation_seconds = key_activation_seconds
        self.token_lifetime = token_lifetime
        self.protection = protection
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (app user id, expires at)
        self.entities: dict[str, Entity] = standard_entities()
        self.relationships: list[Relationship] = standard_relationships(self.entities)
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.entities}
        self.unpublished: set[str] = set()
        self.publishes: list[list[str]] = []
        self._journal: list[tuple[str, str, dict | None]] | None = None
        self._version = 1000
        org_id = str(uuid.uuid4())
        self.records["organization"][org_id] = {"organizationid": org_id, "name": "Sandbox",
                                                "maxuploadfilesize": max_upload}
        pub_id = str(uuid.uuid4())
        self.records["publisher"][pub_id] = {"publisherid": pub_id, "friendlyname": "Ascora Migration",
                                             "uniquename": "ascoramigration", "customizationprefix": prefix,
                                             "customizationoptionvalueprefix": option_prefix}
        self.app_user_id = self._insert("systemuser", {
            "fullname": "# Ascora migration (application user)", "internalemailaddress": None,
            "isdisabled": False, "accessmode": 4, "applicationid": client_id})
        for user in users:
            self._insert("systemuser", {"fullname": user.get("name") or user["email"],
                                        "internalemailaddress": user["email"],
                                        "domainname": user["email"], "isdisabled": bool(user.get("disabled")),
                                        "accessmode": 0, "applicationid": None})

    # ---- helpers -------------------------------------------------------------------------------
    def _insert(self, entity: str, values: dict[str, Any]) -> str:
        meta = self.entities[entity]
        record_id = values.get(meta.primary_id) or str(uuid.uuid4())
        now = _now()
        row = {meta.primary_id: record_id, **values}
        if "createdon" in meta.attributes:
            row.setdefault("createdon", now)
            row.setdefault("modifiedon", now)
            row.setdefault("statecode", 0)
            row.setdefault("statuscode", 1)
        self._version += 1
        row["versionnumber"] = self._version
        self.records[entity][record_id] = row
        return record_id

    def entity(self, logical: str) -> Entity:
        meta = self.entities.get(logical)
        if meta is None:
            raise DataverseError(404, "0x80040217", f"Could not find an entity with name {logical}")
        return meta

    def entity_by_set(self, set_name: str) -> Entity:
        for meta in self.entities.values():
            if meta.set_name == set_name:
                return meta
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{set_name}'.")

    def navigation(self, entity: str, name: str) -> Relationship | None:
        return next((r for r in self.relationships if r.referencing == entity and r.navigation == name), None)

    def journal(self, entity: str, record_id: str) -> None:
        if self._journal is not None:
            previous = self.records[entity].get(record_id)
            self._journal.append((entity, record_id, copy.deepcopy(previous)))

    def snapshot(self) -> dict[str, Any]:
        """Deep copy of every data record (per table, by creation order) and of the custom metadata."""
        with self.lock:
            data = {name: copy.deepcopy(sorted(rows.values(), key=lambda r: r.get("versionnumber", 0)))
                    for name, rows in self.records.items()
                    if name not in ("organization", "publisher", "systemuser", "team")}
            custom = {name: {"attributes": sorted(a for a, m in e.attributes.items() if m.custom),
                             "keys": sorted(e.keys)}
                      for name, e in self.entities.items() if e.custom or any(a.custom for a in e.attributes.values())}
            return {"records": data, "metadata": custom, "unpublished": sorted(self.unpublished)}

    def issue_token(self) -> tuple[str, int]:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = (self.app_user_id, time.monotonic() + self.token_lifetime)
        return token, self.token_lifetime

    def user_of(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        entry = self.tokens.get(authorization[7:].strip())
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]


def _error(exc: DataverseError) -> SubResponse:
    return SubResponse(exc.status, dict(exc.headers), exc.body())


class DataverseEmulator:
    """Dispatches one Web API request (top level or inside ``$batch``) against the state."""

    def __init__(self, state: DataverseState):
        self.state = state

    # ---- routing -------------------------------------------------------------------------------
    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes, base: str,
               refs: dict[str, str] | None = None) -> SubResponse:
        refs = refs or {}
        path, _, query = url.partition("?")
        if path.startswith("$") and path.split("/")[0] in refs:
            head, _, tail = path.partition("/")
            path = refs[head] + ("/" + tail if tail else "")
        if "://" in path:
            path = urlsplit(path).path
        path = unquote(path.removeprefix(API_ROOT).strip("/"))
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        request = SubRequest(method, path, {k.lower(): v for k, v in headers.items()}, body)
        try:
            with self.state.lock:
                return self._dispatch(request, params, base, refs)
        except DataverseError as exc:
            return _error(exc)

    def _dispatch(self, req: SubRequest, params: dict[str, str], base: str, refs: dict[str, str]) -> SubResponse:
        segments = req.url.split("/") if req.url else [""]
        head, key = split_segment(segments[0])
        rest = segments[1:]
        if head == "EntityDefinitions":
            return self._metadata(req, key, rest, params)
        if head == "RelationshipDefinitions" and req.method == "POST":
            return self._create_relationship(req.json())
        if head == "PublishXml" and req.method == "POST":
            return self._publish((req.json() or {}).get("ParameterXml", ""))
        if head == "PublishAllXml" and req.method == "POST":
            return self._publish(None)
        if head == "InsertOptionValue" and req.method == "POST":
            return self._insert_option(req.json() or {})
        if head == "WhoAmI" and req.method == "GET":
            org = next(iter(self.state.records["organization"]))
            return SubResponse(200, body={"UserId": self.state.app_user_id, "OrganizationId": org,
                                          "BusinessUnitId": org})
        meta = self.state.entity_by_set(head)
        if key is None:
            if rest:
                raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{rest[0]}'.")
            if req.method == "GET":
                return self._query(meta, req, params, base)
            if req.method == "POST":
                return self._create(meta, req, base, refs)
            raise DataverseError(405, "0x80060888", f"{req.method} is not allowed on an entity set")
        if rest:
            if len(rest) == 2 and rest[1] == "$ref" and req.method == "DELETE":
                return self._disassociate(meta, self._resolve_id(meta, parse_key(key)), rest[0])
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{'/'.join(rest)}'.")
        parsed = parse_key(key)
        if req.method == "GET":
            record_id = self._resolve_id(meta, parsed)
            return SubResponse(200, body=self._render(meta, self.state.records[meta.logical][record_id],
                                                      self._select(meta, params), req.headers, base))
        if req.method == "PATCH":
            return self._upsert(meta, parsed, req, base, refs)
        if req.method == "DELETE":
            record_id = self._resolve_id(meta, parsed)
            self._delete(meta, record_id)
            return SubResponse(204)
        raise DataverseError(405, "0x80060888", f"{req.method} is not allowed on a record")

    # ---- records: read -------------------------------------------------------------------------
    def _resolve_id(self, meta: Entity, key: dict[str, Any] | str, *, must_exist: bool = True) -> str | None:
        rows = self.state.records[meta.logical]
        if isinstance(key, str):
            if key in rows:
                return key
        else:
            if list(key) == [meta.primary_id]:
                return self._resolve_id(meta, str(key[meta.primary_id]).lower(), must_exist=must_exist)
            active = [k for k in meta.keys.values() if set(k.attributes) == set(key)]
            if not active:
                raise DataverseError(400, "0x80060888", f"The key '{', '.join(key)}' is not an alternate key of "
                                     f"entity '{meta.logical}'.")
            if active[0].status != "Active":
                # STRICTER/[INF]: the reference says only that a key is not usable before its index is Active.
                raise DataverseError(400, "0x80060888", f"The alternate key '{active[0].logical}' of entity "
                                     f"'{meta.logical}' is not active yet (index status {active[0].status}).")
            for record_id, row in rows.items():
                if all(_same(row.get(a), v) for a, v in key.items()):
                    return record_id
        if must_exist:
            shown = key if isinstance(key, str) else ",".join(f"{k}={v}" for k, v in key.items())
            raise DataverseError(404, "0x80040217", f"{meta.logical} With Id = {shown} Does Not Exist")
        return None

    def _select(self, meta: Entity, params: dict[str, str]) -> list[str] | None:
        text = params.get("$select")
        if not text:
            return None
        names = [s.strip() for s in text.split(",") if s.strip()]
        for name in names:
            bare = name[1:-6] if name.startswith("_") and name.endswith("_value") else name
            if bare not in meta.attributes:
                raise DataverseError(400, "0x80060888", f"Could not find a property named '{name}' on type "
                                     f"'Microsoft.Dynamics.CRM.{meta.logical}'.")
        return names

    def _render(self, meta: Entity, row: dict[str, Any], select: list[str] | None, headers: dict[str, str],
                base: str) -> dict[str, Any]:
        annotations = headers.get("prefer", "")
        want_lookup_names = "lookuplogicalname" in annotations or 'include-annotations="*"' in annotations
        out: dict[str, Any] = {"@odata.etag": f'W/"{row.get("versionnumber", 0)}"'}
        for name, attr in meta.attributes.items():
            wire = f"_{name}_value" if attr.is_lookup else name
            if select is not None and wire not in select and name not in select and name != meta.primary_id:
                continue
            value = row.get(name)
            if attr.is_lookup:
                out[wire] = value["id"] if value else None
                if want_lookup_names and value:
                    out[f"{wire}@Microsoft.Dynamics.CRM.lookuplogicalname"] = value["entity"]
            else:
                out[wire] = value
        return out

    def _query(self, meta: Entity, req: SubRequest, params: dict[str, str], base: str) -> SubResponse:
        select = self._select(meta, params)
        predicate = parse_filter(params.get("$filter"))
        rows = sorted(self.state.records[meta.logical].values(), key=lambda r: r.get("versionnumber", 0))
        full = [self._render(meta, r, None, {"prefer": 'odata.include-annotations="*"'}, base) for r in rows]
        matched = [r for r, rendered in zip(rows, full) if predicate(rendered)]
        if params.get("$orderby"):
            field, _, direction = params["$orderby"].partition(" ")
            matched.sort(key=lambda r: (r.get(field) is None, str(r.get(field) or "")),
                         reverse=direction.strip() == "desc")
        if params.get("$top"):
            matched = matched[: int(params["$top"])]
        page_size = DEFAULT_PAGE_SIZE
        match = re.search(r"odata\.maxpagesize=(\d+)", req.headers.get("prefer", ""))
        if match:
            page_size = min(DEFAULT_PAGE_SIZE, int(match.group(1)))
        start = int(params.get("$skiptoken") or 0)
        page = matched[start:start + page_size]
        body: dict[str, Any] = {"@odata.context": f"{base}{API_ROOT}/$metadata#{meta.set_name}",
                                "value": [self._render(meta, r, select, req.headers, base) for r in page]}
        if start + page_size < len(matched):
            kept = {k: v for k, v in params.items() if k != "$skiptoken"}
            query = "&".join(f"{k}={v}" for k, v in kept.items())
            body["@odata.nextLink"] = (f"{base}{API_ROOT}/{meta.set_name}?{query}{'&' if query else ''}"
                                       f"$skiptoken={start + page_size}")
        return SubResponse(200, body=body)

    # ---- records: write ------------------------------------------------------------------------
    def _entity_url(self, meta: Entity, record_id: str, base: str) -> str:
        return f"{base}{API_ROOT}/{meta.set_name}({record_id})"

    def _written(self, meta: Entity, record_id: str, req: SubRequest, base: str, created: bool) -> SubResponse:
        if "return=representation" in req.headers.get("prefer", ""):
            body = self._render(meta, self.state.records[meta.logical][record_id], None, req.headers, base)
            return SubResponse(201 if created else 200, {"Preference-Applied": "return=representation"}, body)
        url = self._entity_url(meta, record_id, base)
        return SubResponse(204, {"OData-EntityId": url, "Location": url})

    def _create(self, meta: Entity, req: SubRequest, base: str, refs: dict[str, str]) -> SubResponse:
        values = self._values(meta, req.json(), creating=True, refs=refs)
        record_id = str(values.pop(meta.primary_id, None) or uuid.uuid4()).lower()
        if record_id in self.state.records[meta.logical]:
            raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
        self._store(meta, record_id, values, creating=True)
        return self._written(meta, record_id, req, base, created=True)

    def _upsert(self, meta: Entity, key: dict[str, Any] | str, req: SubRequest, base: str,
                refs: dict[str, str]) -> SubResponse:
        existing = self._resolve_id(meta, key, must_exist=False)
        if_match = req.headers.get("if-match")
        if_none_match = req.headers.get("if-none-match")
        if existing is None and if_match == "*":
            shown = key if isinstance(key, str) else ",".join(f"{k}={v}" for k, v in key.items())
            raise DataverseError(404, "0x80040217", f"{meta.logical} With Id = {shown} Does Not Exist")
        if existing is not None and if_none_match == "*":
            raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
        if existing is not None and if_match not in (None, "*"):
            current = f'W/"{self.state.records[meta.logical][existing].get("versionnumber", 0)}"'
            if if_match != current:
                raise DataverseError(412, "0x80060882", "The version of the existing record doesn't match the "
                                     "RowVersion property provided.")
        creating = existing is None
        values = self._values(meta, req.json(), creating=creating, refs=refs)
        if creating:
            record_id = key if isinstance(key, str) else str(values.pop(meta.primary_id, None) or uuid.uuid4())
            if isinstance(key, dict):
                values.update(key)
        else:
            record_id = existing
        self._store(meta, record_id, values, creating=creating)
        return self._written(meta, record_id, req, base, created=creating)

    def _values(self, meta: Entity, body: Any, *, creating: bool, refs: dict[str, str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise DataverseError(400, "0x80048d19", "Error identified in Payload provided by the user: a JSON "
                                 "object is required.")
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                nav = name[: -len("@odata.bind")]
                rel = self.state.navigation(meta.logical, nav)
                if rel is None:
                    raise DataverseError(400, "0x80048d19", f"An undeclared property '{nav}' which only has property "
                                         "annotations in the payload but no property value was found in the payload. "
                                         "In OData, only declared navigation properties and declared named streams "
                                         "can be represented as properties without values.")
                values[rel.attribute] = self._bind(rel, value, refs)
                continue
            if "@" in name:
                continue  # instance annotations (@odata.type ...) carry no data
            attr = meta.attributes.get(name)
            if attr is None:
                raise DataverseError(400, "0x80060888", f"Invalid property '{name}' was found in entity "
                                     f"'Microsoft.Dynamics.CRM.{meta.logical}'.")
            if attr.is_lookup:
                raise DataverseError(400, "0x80048d0b", "CRM do not support direct update of Entity Reference "
                                     f"properties, Use Navigation properties instead. ('{name}')")
            if name == meta.primary_id:
                if not creating or not isinstance(value, str) or not GUID.match(value):
                    raise DataverseError(400, "0x80044331", f"'{name}' must be a GUID and can be set on create only.")
                values[name] = value.lower()
                continue
            allowed = attr.valid_for_create if creating else attr.valid_for_update
            if not allowed:
                # STRICTER: the service may ignore some read-only columns; refusing catches a client
                # that thinks it wrote them (overriddencreatedon on update, computed amounts ...).
                raise DataverseError(400, "0x80044331", f"A validation error occurred. The attribute '{name}' of "
                                     f"entity '{meta.logical}' is not valid for {'create' if creating else 'update'}.")
            values[name] = self._check(meta, attr, value)
        return values

    def _bind(self, rel: Relationship, value: Any, refs: dict[str, str]) -> dict[str, str]:
        if not isinstance(value, str):
            raise DataverseError(400, "0x80048d19", f"The value of '{rel.navigation}@odata.bind' must be an entity "
                                 "reference URL such as /accounts(<guid>).")
        text = refs.get(value, value)
        if "://" in text:
            text = urlsplit(text).path
        text = text.strip("/")
        text = text.removeprefix(API_ROOT.strip("/")).strip("/")
        set_name, key = split_segment(text)
        target = self.state.entity_by_set(set_name)
        allowed = {rel.referenced} | ({"systemuser", "team"} if rel.attribute == "ownerid" else set())
        if target.logical not in allowed:
            raise DataverseError(400, "0x80048d19", f"'{rel.navigation}' refers to {rel.referenced}, not to "
                                 f"{target.logical}.")
        if key is None:
            raise DataverseError(400, "0x80048d19", f"'{value}' is not an entity reference.")
        record_id = self._resolve_id(target, parse_key(key))
        if target.logical == "systemuser" and self.state.records["systemuser"][record_id].get("isdisabled"):
            # STRICTER: the seed's gotcha says records of inactive owners fail silently; here they fail loudly.
            raise DataverseError(400, "0x80040225", f"The specified user {record_id} is disabled and cannot own "
                                 "records.")
        return {"id": record_id, "entity": target.logical}

    def _check(self, meta: Entity, attr: Attribute, value: Any) -> Any:
        where = f"The value of '{attr.logical}' on record of type '{meta.logical}'"
        if value is None:
            if attr.required == "SystemRequired":
                raise DataverseError(400, "0x80040203", f"{where} is required and cannot be null.")
            return None
        kind = attr.type
        if kind in ("String", "Memo"):
            if not isinstance(value, str):
                raise DataverseError(400, "0x80048d19", f"{where} must be text.")
            if attr.max_length is not None and len(value) > attr.max_length:
                raise DataverseError(400, "0x80044331", f"A validation error occurred.  The length of the "
                                     f"'{attr.logical}' attribute of the '{meta.logical}' entity exceeded the maximum "
                                     f"allowed length of '{attr.max_length}'.")
            return value
        if kind in ("Integer", "BigInt"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataverseError(400, "0x80048d19", f"{where} must be a whole number.")
        elif kind in ("Decimal", "Double", "Money"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataverseError(400, "0x80048d19", f"{where} must be a number.")
        elif kind == "Boolean":
            if not isinstance(value, bool):
                raise DataverseError(400, "0x80048d19", f"{where} must be true or false.")
            return value
        elif kind in ("Picklist", "State", "Status"):
            if isinstance(value, bool) or not isinstance(value, int) or value not in attr.options:
                raise DataverseError(400, "0x80044331", f"{where} is outside the valid range. Accepted Values: "
                                     f"{','.join(str(v) for v in sorted(attr.options))}")
            return value
        elif kind == "Virtual":  # multi-select choice: "1,2"
            parts = [p for p in str(value).split(",") if p]
            if not all(p.strip().lstrip("-").isdigit() and int(p) in attr.options for p in parts):
                raise DataverseError(400, "0x80044331", f"{where} holds a value outside the valid range.")
            return ",".join(p.strip() for p in parts)
        elif kind == "DateTime":
            return self._check_date(attr, value, where)
        elif kind == "Uniqueidentifier":
            if not isinstance(value, str) or not GUID.match(value):
                raise DataverseError(400, "0x80048d19", f"{where} must be a GUID.")
            return value.lower()
        if attr.min_value is not None and value < attr.min_value or attr.max_value is not None and value > attr.max_value:
            raise DataverseError(400, "0x80044331", f"{where} is outside the valid range ({attr.min_value} to "
                                 f"{attr.max_value}).")
        return value

    @staticmethod
    def _check_date(attr: Attribute, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise DataverseError(400, "0x80048d19", f"{where} must be a date string.")
        if attr.format == "DateOnly":
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise DataverseError(400, "0x80048d19", f"Cannot convert the literal '{value}' to the expected type "
                                     "'Edm.Date'.")
            dt.date.fromisoformat(value)
            return value
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            # STRICTER: a timestamp without an offset is read in the user's zone by some clients; refused here.
            raise DataverseError(400, "0x80048d19", f"Cannot convert the literal '{value}' to the expected type "
                                 "'Edm.DateTimeOffset'.")
        return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _store(self, meta: Entity, record_id: str, values: dict[str, Any], *, creating: bool) -> None:
        rows = self.state.records[meta.logical]
        row = dict(rows.get(record_id) or {})
        row.update(values)
        now = _now()
        if creating:
            for name, attr in meta.attributes.items():
                if attr.required == "SystemRequired" and row.get(name) is None:
                    raise DataverseError(400, "0x80040203", f"The '{name}' attribute of '{meta.logical}' is required.")
            row[meta.primary_id] = record_id
            # The documented swap: createdon takes the supplied date, overriddencreatedon the import time.
            supplied = values.get("overriddencreatedon")
            if "createdon" in meta.attributes:
                row["createdon"] = supplied or now
                row["overriddencreatedon"] = now if supplied else None
                row.setdefault("statecode", 0)
                row.setdefault("statuscode", 1)
        if "modifiedon" in meta.attributes:
            row["modifiedon"] = now
        self._derive(meta, row, creating=creating)
        self._check_keys(meta, record_id, row)
        self.state.journal(meta.logical, record_id)
        self.state._version += 1
        row["versionnumber"] = self.state._version
        rows[record_id] = row

    def _derive(self, meta: Entity, row: dict[str, Any], *, creating: bool) -> None:
        """Columns the service computes: names, amounts, note file size, address numbers."""
        if meta.logical in ("contact", "lead"):
            row["fullname"] = " ".join(p for p in (row.get("firstname"), row.get("lastname")) if p) or None
        elif meta.logical == "opportunityproduct":
            if row.get("priceperunit") is not None and row.get("quantity") is not None:
                row["baseamount"] = round(row["priceperunit"] * row["quantity"], 4)
                row["extendedamount"] = round(row["baseamount"] - (row.get("manualdiscountamount") or 0), 4)
            row["opportunityproductname"] = row.get("productdescription")
        elif meta.logical == "annotation":
            body = row.get("documentbody")
            if body:
                limit = next(iter(self.state.records["organization"].values()))["maxuploadfilesize"]
                if len(body) > limit:
                    raise DataverseError(400, "0x80043e09", "The attachment is either not a valid type or is too "
                                         f"large. It cannot be uploaded or downloaded. ({len(body)} base64 characters; "
                                         f"MaxUploadFileSize is {limit})")
                try:
                    row["filesize"] = len(base64.b64decode(body, validate=True))
                except ValueError:
                    raise DataverseError(400, "0x80048d19", "documentbody is not valid base64.") from None
                row["isdocument"] = True
            else:
                row["filesize"] = None
        elif meta.logical == "customeraddress" and creating:
            parent = (row.get("parentid") or {}).get("id")
            taken = [r.get("addressnumber") or 0 for r in self.state.records["customeraddress"].values()
                     if (r.get("parentid") or {}).get("id") == parent]
            row["addressnumber"] = max([2, *taken]) + 1  # 1 and 2 belong to the parent's own address columns

    def _check_keys(self, meta: Entity, record_id: str, row: dict[str, Any]) -> None:
        # STRICTER: uniqueness is enforced from the moment a key exists, not only once its index is Active.
        for key in meta.keys.values():
            values = [row.get(a) for a in key.attributes]
            if any(v is None for v in values):
                continue
            for other_id, other in self.state.records[meta.logical].items():
                if other_id != record_id and all(_same(other.get(a), v) for a, v in zip(key.attributes, values)):
                    raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")

    def _delete(self, meta: Entity, record_id: str) -> None:
        self.state.journal(meta.logical, record_id)
        del self.state.records[meta.logical][record_id]
        # Parental relationships cascade (notes, regarding tasks, addresses, products); other lookups to the
        # deleted record are cleared (RemoveLink).
        for rel in self.state.relationships:
            if rel.referenced != meta.logical:
                continue
            child = self.state.entities[rel.referencing]
            for child_id, row in list(self.state.records[rel.referencing].items()):
                value = row.get(rel.attribute)
                if not value or value.get("id") != record_id:
                    continue
                if rel.attribute in ("objectid", "regardingobjectid", "parentid", "opportunityid"):
                    self._delete(child, child_id)
                else:
                    self.state.journal(rel.referencing, child_id)
                    row[rel.attribute] = None

    def _disassociate(self, meta: Entity, record_id: str, nav: str) -> SubResponse:
        rel = self.state.navigation(meta.logical, nav)
        if rel is None:
            raise DataverseError(400, "0x80048d19", f"'{nav}' is not a navigation property of {meta.logical}.")
        self.state.journal(meta.logical, record_id)
        self.state.records[meta.logical][record_id][rel.attribute] = None
        return SubResponse(204)

    # ---- $batch --------------------------------------------------------------------------------
    def batch(self, content_type: str, body: bytes, prefer: str, base: str) -> tuple[int, str, bytes]:
        parts = parse_batch(content_type, body)
        continue_on_error = "odata.continue-on-error" in prefer
        results: list[list[SubResponse] | SubResponse] = []
        status = 200
        for part in parts:
            if not part.changeset:
                sub = part.requests[0]
                response = self.handle(sub.method, sub.url, sub.headers, sub.body, base)
                results.append(response)
                failed = response.status >= 400
            else:
                with self.state.lock:
                    self.state._journal = []
                    refs: dict[str, str] = {}
                    answers: list[SubResponse] = []
                    failed = False
                    for sub in part.requests:
                        response = self.handle(sub.method, sub.url, sub.headers, sub.body, base, refs)
                        response.content_id = sub.content_id
                        if response.status >= 400:
                            failed = True
                            results.append(response)
                            break
                        if sub.content_id and "OData-EntityId" in response.headers:
                            refs[f"${sub.content_id}"] = response.headers["OData-EntityId"]
                        answers.append(response)
                    journal, self.state._journal = self.state._journal, None
                    if failed:
                        for entity, record_id, previous in reversed(journal):
                            if previous is None:
                                self.state.records[entity].pop(record_id, None)
                            else:
                                self.state.records[entity][record_id] = previous
                    else:
                        results.append(answers)
            if failed and not continue_on_error:
                status = 400
                results = [results[-1]]
                break
        content_type_out, payload = render_batch(results)
        return status, content_type_out, payload

    # ---- metadata ------------------------------------------------------------------------------
    def _metadata(self, req: SubRequest, key: str | None, rest: list[str], params: dict[str, str]) -> SubResponse:
        if key is None:
            if req.method == "POST":
                return self._create_entity(req.json() or {}, req.headers)
            rows = [e.render() for e in self.state.entities.values()]
            predicate = parse_filter(params.get("$filter"))
            return SubResponse(200, body={"value": [_pick(r, params) for r in rows if predicate(r)]})
        meta = self._entity_by_key(key)
        if not rest:
            if req.method != "GET":
                raise DataverseError(405, "0x80060888", "Use PUT with the full definition to update a table.")
            body = _pick(meta.render(), params)
            for name in (params.get("$expand") or "").split(","):
                name = name.split("(")[0].strip()
                if name:
                    body[name] = self._collection(meta, name)
            return SubResponse(200, body=body)
        name, sub_key = split_segment(rest[0])
        if name == "Attributes" and req.method == "POST":
            return self._create_attribute(meta, req.json() or {})
        if name == "Keys" and req.method == "POST":
            return self._create_key(meta, req.json() or {})
        if name == "Keys" and sub_key is not None:
            logical = (parse_key(sub_key) or {}).get("LogicalName") if "=" in sub_key else None
            key_def = meta.keys.get(logical or "")
            if key_def is None:
                raise DataverseError(404, "0x80060888", f"No key '{sub_key}' on {meta.logical}.")
            return SubResponse(200, body=_pick(key_def.render(), params))
        if name == "Attributes" and len(rest) == 2 and rest[1].endswith("PicklistAttributeMetadata"):
            kind = "Virtual" if "MultiSelect" in rest[1] else "Picklist"
            rows = [{**a.render(), "OptionSet": a.render_option_set()} for a in meta.attributes.values()
                    if a.type == kind]
            return SubResponse(200, body={"value": rows})
        if len(rest) == 1 and name in ("Attributes", "Keys", "ManyToOneRelationships"):
            return SubResponse(200, body={"value": self._collection(meta, name)})
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{rest[0]}'.")

    def _collection(self, meta: Entity, name: str) -> list[dict[str, Any]]:
        if name == "Attributes":
            return [a.render() for a in meta.attributes.values()]
        if name == "Keys":
            return [k.render() for k in meta.keys.values()]
        if name == "ManyToOneRelationships":
            return [r.render(self.state.entities[r.referenced].primary_id)
                    for r in self.state.relationships if r.referencing == meta.logical]
        raise DataverseError(400, "0x80060888", f"Could not find a property named '{name}' on EntityMetadata.")

    def _entity_by_key(self, key: str) -> Entity:
        parsed = parse_key(key)
        if isinstance(parsed, str):
            found = next((e for e in self.state.entities.values() if e.metadata_id == parsed), None)
            if found is None:
                raise DataverseError(404, "0x80040217", f"EntityMetadata With Id = {parsed} Does Not Exist")
            return found
        return self.state.entity(str(parsed.get("LogicalName", "")))

    def _prefix_ok(self, schema_name: str, what: str) -> None:
        prefixes = {p["customizationprefix"] for p in self.state.records["publisher"].values()}
        head = schema_name.split("_", 1)[0] if "_" in schema_name else ""
        if head.lower() not in prefixes or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", schema_name):
            raise DataverseError(400, "0x80044363", f"The {what} schema name '{schema_name}' must start with a "
                                 f"publisher's customization prefix ({', '.join(sorted(prefixes))}) and an underscore.")

    def _create_entity(self, body: dict[str, Any], headers: dict[str, str]) -> SubResponse:
        schema = str(body.get("SchemaName") or "")
        self._prefix_ok(schema, "table")
        logical = schema.lower()
        if logical in self.state.entities:
            raise DataverseError(400, "0x80044363", f"An entity with the specified name {logical} already exists.")
        customs = [e for e in self.state.entities.values() if e.custom]
        if self.state.professional and len(customs) >= PROFESSIONAL_CUSTOM_TABLES:
            # [INF] The licence guide allows 15 custom tables on Professional; the real refusal is undocumented.
            raise DataverseError(403, "0x80040220", f"Dynamics 365 Sales Professional allows {PROFESSIONAL_CUSTOM_TABLES} "
                                 f"custom tables; this environment already has {len(customs)}.")
        primary = next((a for a in body.get("Attributes") or () if a.get("IsPrimaryName")), None)
        if primary is None or primary.get("AttributeType") != "String":
            raise DataverseError(400, "0x80044331", "A new table needs exactly one String attribute with "
                                 "IsPrimaryName = true.")
        if body.get("IsActivity"):
            raise DataverseError(400, "0x80044331", "Custom activity tables are not supported by this emulator.")
        entity = Entity(logical, entity_set_name(logical), f"{logical}id", str(primary["SchemaName"]).lower(),
                        label_text(body.get("DisplayName")) or logical, custom=True, schema=schema,
                        has_notes=bool(body.get("HasNotes")), has_activities=bool(body.get("HasActivities")),
                        ownership=body.get("OwnershipType") or "UserOwned", published=False)
        system_attributes(entity, owned=entity.ownership == "UserOwned")
        self._prefix_ok(str(primary["SchemaName"]), "column")
        entity.add(self._attribute_from(primary, custom=True))
        self.state.entities[logical] = entity
        self.state.records[logical] = {}
        self.state.relationships.extend(activity_and_note_relationships(entity))
        if "ownerid" in entity.attributes:
            self.state.relationships.append(Relationship(f"user_{logical}", "systemuser", logical, "ownerid",
                                                         "ownerid"))
        self.state.unpublished.add(logical)
        return SubResponse(204, {"OData-EntityId": f"{API_ROOT}/EntityDefinitions({entity.metadata_id})"})

    def _attribute_from(self, body: dict[str, Any], *, custom: bool) -> Attribute:
        kind = ATTRIBUTE_CLASSES.get(str(body.get("@odata.type", "")).lstrip("#"))
        if kind is None or (body.get("AttributeType") and body["AttributeType"] != kind):
            raise DataverseError(400, "0x80048d19", f"Unsupported or inconsistent attribute type "
                                 f"{body.get('@odata.type')!r} / {body.get('AttributeType')!r}.")
        options: dict[int, str] = {}
        if kind in ("Picklist", "Virtual"):
            for option in (body.get("OptionSet") or {}).get("Options") or ():
                options[int(option["Value"])] = label_text(option.get("Label"))
        max_length = body.get("MaxLength")
        if kind == "String" and not (1 <= int(max_length or 100) <= 4000):
            raise DataverseError(400, "0x80044331", "MaxLength of a String column must be between 1 and 4000.")
        if kind == "Memo" and not (1 <= int(max_length or 2000) <= 1048576):
            raise DataverseError(400, "0x80044331", "MaxLength of a Memo column must be between 1 and 1048576.")
        return Attribute(str(body["SchemaName"]).lower(), kind, schema=str(body["SchemaName"]),
                         label=label_text(body.get("DisplayName")),
                         max_length=int(max_length or (100 if kind == "String" else 2000))
                         if kind in ("String", "Memo") else None,
                         format=body.get("Format") or (body.get("FormatName") or {}).get("Value"),
                         options=options, custom=custom,
                         required=(body.get("RequiredLevel") or {}).get("Value") or "None",
                         min_value=body.get("MinValue"), max_value=body.get("MaxValue"),
                         precision=body.get("Precision"), published=False)

    def _create_attribute(self, meta: Entity, body: dict[str, Any]) -> SubResponse:
        if not meta.customizable:
            raise DataverseError(400, "0x80040237", f"The entity {meta.logical} is not customizable; custom "
                                 "columns cannot be added to it.")
        schema = str(body.get("SchemaName") or "")
        self._prefix_ok(schema, "column")
        if schema.lower() in meta.attributes:
            raise DataverseError(400, "0x80044363", f"An attribute with the specified name {schema.lower()} already "
                                 f"exists on {meta.logical}.")
        attribute = self._attribute_from(body, custom=True)
        meta.add(attribute)
        self.state.unpublished.add(meta.logical)
        return SubResponse(204, {"OData-EntityId": f"{API_ROOT}/EntityDefinitions(LogicalName='{meta.logical}')/"
                                                   f"Attributes({attribute.metadata_id})"})

    def _create_relationship(self, body: dict[str, Any]) -> SubResponse:
        if body.get("@odata.type", "").lstrip("#") != "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata":
            raise DataverseError(400, "0x80048d19", "Only OneToManyRelationshipMetadata is supported.")
        schema = str(body.get("SchemaName") or "")
        self._prefix_ok(schema, "relationship")
        referenced = self.state.entity(str(body.get("ReferencedEntity", "")))
        referencing = self.state.entity(str(body.get("ReferencingEntity", "")))
        if not referencing.customizable:
            raise DataverseError(400, "0x80040237", f"The entity {referencing.logical} is not customizable.")
        if any(r.schema == schema for r in self.state.relationships):
            raise DataverseError(400, "0x80044363", f"A relationship named {schema} already exists.")
        lookup = body.get("Lookup") or {}
        lookup_schema = str(lookup.get("SchemaName") or "")
        self._prefix_ok(lookup_schema, "lookup column")
        logical = lookup_schema.lower()
        if logical in referencing.attributes:
            raise DataverseError(400, "0x80044363", f"An attribute with the specified name {logical} already exists.")
        referencing.add(Attribute(logical, "Lookup", schema=lookup_schema, label=label_text(lookup.get("DisplayName")),
                                  targets=(referenced.logical,), custom=True, published=False))
        navigation = body.get("ReferencingEntityNavigationPropertyName") or lookup_schema  # case-sensitive
        self.state.relationships.append(Relationship(schema, referenced.logical, referencing.logical, logical,
                                                     navigation))
        self.state.unpublished.add(referencing.logical)
        rel_id = self.state.relationships[-1].metadata_id
        return SubResponse(204, {"OData-EntityId": f"{API_ROOT}/RelationshipDefinitions({rel_id})"})

    def _create_key(self, meta: Entity, body: dict[str, Any]) -> SubResponse:
        if not meta.customizable:
            raise DataverseError(400, "0x80040237", f"Alternate keys cannot be defined on {meta.logical}.")
        schema = str(body.get("SchemaName") or "")
        self._prefix_ok(schema, "key")
        attributes = tuple(body.get("KeyAttributes") or ())
        if not attributes or len(attributes) > 16:
            raise DataverseError(400, "0x80044331", "A key needs between 1 and 16 attributes.")
        if len(meta.keys) >= MAX_KEYS_PER_TABLE:
            raise DataverseError(400, "0x80044331", f"A table can have at most {MAX_KEYS_PER_TABLE} keys.")
        for name in attributes:
            attr = meta.attributes.get(name)
            if attr is None or attr.type not in KEYABLE_TYPES:
                raise DataverseError(400, "0x80044331", f"'{name}' cannot be part of an alternate key of "
                                     f"{meta.logical} (allowed types: {', '.join(sorted(KEYABLE_TYPES))}).")
            if attr.type == "String" and (attr.max_length or 0) * 2 > 900:
                raise DataverseError(400, "0x80044331", f"'{name}' is too long for a key index (900 bytes).")
        if schema.lower() in meta.keys:
            raise DataverseError(400, "0x80044363", f"A key named {schema.lower()} already exists.")
        key = Key(schema.lower(), schema, attributes, time.monotonic(), self.state.key_activation_seconds)
        seen: set[tuple] = set()
        for row in self.state.records[meta.logical].values():
            values = tuple(row.get(a) for a in attributes)
            if None not in values and values in seen:
                key.failed = True  # the index job fails on existing duplicates
            seen.add(values)
        meta.keys[key.logical] = key
        return SubResponse(204, {"OData-EntityId": f"{API_ROOT}/EntityDefinitions(LogicalName='{meta.logical}')/"
                                                   f"Keys({key.metadata_id})"})

    def _insert_option(self, body: dict[str, Any]) -> SubResponse:
        meta = self.state.entity(str(body.get("EntityLogicalName", "")))
        attr = meta.attributes.get(str(body.get("AttributeLogicalName", "")))
        if attr is None or attr.type not in ("Picklist", "Virtual"):
            raise DataverseError(400, "0x80044331", "InsertOptionValue needs a choice column.")
        text = label_text(body.get("Label"))
        if not text:
            raise DataverseError(400, "0x80044331", "InsertOptionValue needs a Label.")
        if text in attr.options.values():
            raise DataverseError(400, "0x80044363", f"An option with the label '{text}' already exists.")
        prefix = next(iter(self.state.records["publisher"].values()))["customizationoptionvalueprefix"]
        value = int(body["Value"]) if body.get("Value") is not None else max(
            [prefix * 10000 - 1, *attr.options]) + 1
        if value in attr.options:
            raise DataverseError(400, "0x80044363", f"The option value {value} is already used.")
        attr.options[value] = text
        self.state.unpublished.add(meta.logical)
        return SubResponse(200, body={"NewOptionValue": value})

    def _publish(self, xml: str | None) -> SubResponse:
        if xml is None:
            names = sorted(self.state.unpublished)
        else:
            names = re.findall(r"<entity>\s*([^<\s]+)\s*</entity>", xml)
            if not names and "<importexportxml>" not in xml:
                raise DataverseError(400, "0x80048d19", "ParameterXml must be an <importexportxml> document.")
        for name in names:
            meta = self.state.entity(name)
            meta.published = True
            for attribute in meta.attributes.values():
                attribute.published = True
            self.state.unpublished.discard(name)
        self.state.publishes.append(names)
        return SubResponse(204)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and "id" in a:
        a = a["id"]
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return a == b


def _pick(row: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    select = [s.strip() for s in (params.get("$select") or "").split(",") if s.strip()]
    if not select:
        return row
    return {k: v for k, v in row.items() if k in select or k.startswith("@")}


def create_app(*, api_key: str | None = None, rate_limit: int | None = 6000, window: float = 300.0,
               execution_ms: int | None = 1_200_000, concurrency: int | None = 52,
               client_id: str = DEFAULT_CLIENT_ID, tenant: str = DEFAULT_TENANT, prefix: str = DEFAULT_PREFIX,
               option_prefix: int = DEFAULT_OPTION_PREFIX, users: list[dict] | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, professional: bool = False,
               key_activation_seconds: float = DEFAULT_KEY_ACTIVATION_SECONDS, token_lifetime: int = 3599):
    """Build the Dataverse + Entra ID emulator, wrapped by :func:`instrument` (request log, faults).

    ``api_key`` is the client secret of the app registration ``client_id`` (the Web API itself takes
    only bearer tokens from the token endpoint). ``rate_limit`` requests per ``window`` seconds per user,
    ``execution_ms`` and ``concurrency`` are the service-protection limits (6000 / 300 s, 20 minutes,
    52). ``prefix`` is the publisher's customization prefix; ``users`` seeds systemusers
    (``{"email", "name", "disabled"}``); ``professional`` refuses a 16th custom table.
    """
    protection = ServiceProtection(rate_limit, window, execution_ms, concurrency)
    state = DataverseState(prefix=prefix, option_prefix=option_prefix,
                           users=DEFAULT_USERS if users is None else users, client_id=client_id,
                           client_secret=api_key or DEFAULT_CLIENT_SECRET, tenant=tenant,
                           max_upload=max_upload_bytes, professional=professional,
                           key_activation_seconds=key_activation_seconds, token_lifetime=token_lifetime,
                           protection=protection)
    emulator = DataverseEmulator(state)

    def base_of(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    async def openid_configuration(request: Request) -> JSONResponse:
        tenant_id = request.path_params["tenant"]
        root = f"{base_of(request)}/{tenant_id}"
        return JSONResponse({"token_endpoint": f"{root}/oauth2/v2.0/token",
                             "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                             "issuer": f"{root}/v2.0", "token_endpoint_auth_methods_supported": ["client_secret_post"],
                             "response_types_supported": ["code", "token"], "tenant_region_scope": "OC"})

    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        if request.path_params["tenant"] != state.tenant:
            return JSONResponse({"error": "invalid_request", "error_description":
                                 f"AADSTS90002: Tenant '{request.path_params['tenant']}' not found."}, status_code=400)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type", "error_description":
                                 "AADSTS70003: only client_credentials is supported here."}, status_code=400)
        if form.get("client_id") != state.client_id or form.get("client_secret") != state.client_secret:
            return JSONResponse({"error": "invalid_client", "error_description":
                                 "AADSTS7000215: Invalid client secret provided."}, status_code=401)
        scope = str(form.get("scope") or "")
        if scope.split(" ")[0].rstrip("/") != f"{base_of(request)}/.default":
            return JSONResponse({"error": "invalid_scope", "error_description": f"AADSTS500011: The resource of "
                                 f"scope '{scope}' was not found; use {base_of(request)}/.default."}, status_code=400)
        access, lifetime = state.issue_token()
        return JSONResponse({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                             "access_token": access})

    def respond(sub: SubResponse, extra: dict[str, str]) -> Response:
        headers = {**_ODATA_HEADERS, **sub.headers, **extra}
        if sub.body is None:
            return Response(status_code=sub.status, headers=headers)
        return JSONResponse(sub.body, status_code=sub.status, headers=headers)

    async def api(request: Request) -> Response:
        user = state.user_of(request.headers.get("authorization"))
        if user is None:
            return Response(status_code=401, headers={"WWW-Authenticate": f'Bearer authorization_uri='
                                                      f'"{base_of(request)}/{state.tenant}/oauth2/authorize"'})
        body = await request.body()
        base = base_of(request)
        path = request.url.path
        batch = path.rstrip("/").endswith("/$batch")
        weight = 1
        if batch and request.method == "POST":
            try:
                weight += sum(len(p.requests) for p in parse_batch(request.headers.get("content-type", ""), body))
            except DataverseError as exc:
                return respond(_error(exc), {})
        try:
            protection.enter(user, weight)
        except DataverseError as exc:
            if exc.status == 429:
                app.state.sandbox.counters["429"] += 1
            return respond(_error(exc), {})
        # What the limit counted, so a benchmark can compare it with what the limit allows.
        counters = app.state.sandbox.counters
        counters["counted_requests"] = counters.get("counted_requests", 0) + weight
        started = time.monotonic()
        raw: tuple[int, str, bytes] | None = None
        try:
            if batch and request.method != "POST":
                sub = _error(DataverseError(405, "0x80060888", "$batch takes POST"))
            elif batch:
                try:
                    raw = emulator.batch(request.headers.get("content-type", ""), body,
                                         request.headers.get("prefer", ""), base)
                except DataverseError as exc:
                    sub = _error(exc)
            else:
                target = path + (f"?{request.url.query}" if request.url.query else "")
                sub = emulator.handle(request.method, target, dict(request.headers), body, base)
        finally:
            extra = protection.leave(user, started)
        if raw is not None:
            status, content_type, payload = raw
            return Response(payload, status_code=status,
                            headers={**_ODATA_HEADERS, **extra, "Content-Type": content_type})
        return respond(sub, extra)

    routes = [
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route(API_ROOT + "/{rest:path}", api, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
    ]
    app = Starlette(routes=routes)
    app.state.dataverse = state
    app.state.dataverse_emulator = emulator
    instrumented = instrument(app, rate_limit=None)
    # The limit is service protection's (a $batch weighs 1 + its requests), so the generic per-call
    # limiter stays off and the rate-limit switch and the 429 counter are service protection's.
    instrumented.control.own_limit = protection.set_limit
    instrumented.control.batch_cutter = cut_batch
    return instrumented


def cut_batch(body: bytes, content_type: str, draw_prefix) -> bytes | None:
    """A multipart ``$batch`` with only its first ``draw_prefix(parts)`` parts, for a ``partial`` fault.

    Each part is one record's change set, so the leading records are written and the rest never
    arrive, as when a server fails part way through; None when the body is not a batch of 2+ parts.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type or "", re.IGNORECASE)
    if not match or not content_type.lower().startswith("multipart/mixed"):
        return None
    delimiter = b"--" + match.group(1).encode("latin-1")
    segments = body.split(delimiter)  # preamble, parts..., closing "--"
    parts = len(segments) - 2
    if parts < 2:
        return None
    keep = draw_prefix(parts)
    return delimiter.join(segments[:keep + 1]) + delimiter + b"--\r\n"


def self_signed_certificate(folder: str | Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost that is its own CA; give the .pem to clients as CA bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Dataverse sandbox")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "dataverse-sandbox.pem", folder / "dataverse-sandbox.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServedApp(ServedApp):
    """:class:`ServedApp` over https with a fresh self-signed certificate (``ca_file`` is its path).

    msal accepts only https authorities, so the emulator's token endpoint must be served over TLS.
    ``certificate`` (``(cert, key)`` from :func:`self_signed_certificate`) reuses one made earlier, so
    a client can be given its CA file before the emulator exists (a plugin's options in a table).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, cert_dir: str | Path | None = None,
                 certificate: tuple[Path, Path] | None = None):
        import uvicorn

        super().__init__(app, host, port)
        self._tmp = None if cert_dir or certificate else tempfile.TemporaryDirectory(prefix="dataverse-tls-")
        self.ca_file, key_file = certificate or self_signed_certificate(cert_dir or self._tmp.name)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30,
                                timeout_graceful_shutdown=1, ssl_certfile=str(self.ca_file),
                                ssl_keyfile=str(key_file))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def serve_options() -> dict[str, Any]:
    """uvicorn TLS settings for ``ascora-sandbox serve dataverse`` (msal needs an https authority)."""
    folder = Path(tempfile.mkdtemp(prefix="dataverse-tls-"))
    cert, key = self_signed_certificate(folder)
    print(f"Dataverse sandbox: https only; CA bundle for clients: {cert}; tenant {DEFAULT_TENANT}, client id "
          f"{DEFAULT_CLIENT_ID}")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


__all__ = ["API_ROOT", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "DEFAULT_PREFIX", "DEFAULT_TENANT",
           "DataverseState", "TlsServedApp", "create_app", "self_signed_certificate", "serve_options"]
