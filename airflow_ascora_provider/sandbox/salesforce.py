"""A Salesforce org emulator that the real simple-salesforce and Airflow's ``SalesforceHook`` talk to.

simple-salesforce builds every URL as ``https://{instance}/services/...``: the scheme is fixed, the
port of ``instance_url`` is kept. So the emulator serves **TLS on 127.0.0.1** with a self-signed
certificate made at start (``TlsServedApp``, shared with the Dataverse emulator, whose client needs
https too), and clients trust that one certificate through a ``requests.Session`` whose ``verify``
is its path. The connection uses
*direct session* auth (``session_id`` + ``instance_url``), so no login call is made and neither
SalesforceHook nor simple-salesforce is changed in any way.

What is served (``/services/data/vXX.X``; every call counts against the daily API limit and every
answer carries ``Sforce-Limit-Info: api-usage=used/max``):

* ``sobjects`` (global describe), ``sobjects/{Obj}/describe``, CRUD on ``sobjects/{Obj}/{Id}``,
  upsert ``PATCH sobjects/{Obj}/{ExtField}/{value}`` (201 created / 200 updated / 300 several
  matches), ``GET sobjects/ContentVersion/{Id}/VersionData``;
* sObject Collections ``composite/sobjects`` (POST create, PATCH update, PATCH ``/{Obj}/{ExtField}``
  upsert, DELETE, GET retrieve) with at most 200 records and ``allOrNone`` rollback;
* ``query`` / ``queryAll`` / ``query/{locator}`` (SOQL subset, see ``salesforce_soql``), ``limits``;
* Tooling ``sobjects/CustomField`` (POST, GET, PATCH) and ``query`` over CustomField;
* Bulk API 2.0 ``jobs/ingest`` (see ``salesforce_bulk``);
* ``/services/oauth2/userinfo``.

Errors are Salesforce's: a JSON array of ``{message, errorCode, fields}`` (401 ``INVALID_SESSION_ID``,
403 ``REQUEST_LIMIT_EXCEEDED``, 400 ``INVALID_FIELD`` …); inside collections, per record, with
``statusCode``. :func:`~airflow_ascora_provider.sandbox.emulator.instrument` adds the request log,
rate limit and fault injection the other emulators have. What a Salesforce admin does in Setup
(custom objects, record types, org settings) is under ``/__salesforce__/``, and in-process on
``app.state.salesforce`` (the :class:`~airflow_ascora_provider.sandbox.salesforce_org.Org`).
"""

from __future__ import annotations

import copy
import json
import tempfile
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from airflow_ascora_provider.sandbox.dataverse import TlsServedApp, self_signed_certificate
from airflow_ascora_provider.sandbox.emulator import instrument
from airflow_ascora_provider.sandbox.salesforce_bulk import BulkIngest
from airflow_ascora_provider.sandbox.salesforce_org import (
    DEFAULT_SESSION_ID,
    ORG_ID,
    Org,
    RequestError,
    SfError,
    to_18,
)

MAX_COLLECTION = 200
SUPPORTED_VERSIONS = tuple(f"{v}.0" for v in range(31, 67))
CONTROL = "/__salesforce__"


def serve_options() -> dict[str, Any]:
    """uvicorn TLS settings for ``ascora-sandbox serve salesforce`` (simple-salesforce only speaks https)."""
    cert, key = self_signed_certificate(tempfile.mkdtemp(prefix="salesforce-tls-"))
    print(f"Salesforce emulator: https only; CA bundle for clients (connection extra ca_bundle): {cert}; "
          f"session id (extra access_token): {DEFAULT_SESSION_ID}")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _error(exc: SfError) -> JSONResponse:
    return JSONResponse(exc.as_rest(), status_code=exc.status)


class SalesforceEmulator:
    """The request handlers; all state lives in :class:`Org` and :class:`BulkIngest`."""

    def __init__(self, org: Org):
        self.org = org
        self.bulk = BulkIngest(org)

    # -- plumbing ---------------------------------------------------------------------------------
    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise RequestError("JSON_PARSER_ERROR", "The request body is not valid JSON") from None

    def _version(self, request: Request) -> str:
        version = request.path_params["version"]
        if version not in SUPPORTED_VERSIONS:
            raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
        self.org.version = version
        return version

    # -- sObjects ---------------------------------------------------------------------------------
    async def resources(self, request: Request) -> Response:
        version = self._version(request)
        base = f"/services/data/v{version}"
        return JSONResponse({name: f"{base}/{name}" for name in ("sobjects", "query", "queryAll", "limits",
                                                                 "composite", "tooling", "jobs")})

    async def limits(self, request: Request) -> Response:
        self._version(request)
        return JSONResponse(self.org.limits())

    async def global_describe(self, request: Request) -> Response:
        self._version(request)
        return JSONResponse(self.org.describe_global())

    async def describe(self, request: Request) -> Response:
        self._version(request)
        return JSONResponse(self.org.describe(request.path_params["obj"]))

    async def sobject_root(self, request: Request) -> Response:
        self._version(request)
        name = request.path_params["obj"]
        if request.method == "GET":
            info = self.org.describe(name)
            return JSONResponse({"objectDescribe": {k: v for k, v in info.items() if k != "fields"},
                                 "recentItems": []})
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected a JSON object")
        record_id = self.org.insert(name, body)
        return JSONResponse({"id": record_id, "success": True, "errors": []}, status_code=201)

    async def sobject_record(self, request: Request) -> Response:
        self._version(request)
        name, record_id = request.path_params["obj"], request.path_params["id"]
        fields = [f for f in request.query_params.get("fields", "").split(",") if f] or None
        if request.method == "GET":
            return JSONResponse(self.org.get(name, record_id, fields))
        if request.method == "DELETE":
            obj = self.org.sobject(name)
            if self.org.where.get(record_id if len(record_id) == 18 else record_id) not in (None, obj.name):
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            self.org.delete(record_id)
            return Response(status_code=204)
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected a JSON object")
        self.org.update(name, record_id, body)
        return Response(status_code=204)

    async def sobject_by_field(self, request: Request) -> Response:
        """``/sobjects/{Obj}/{ExtField}/{value}`` (get or upsert) and ``/sobjects/{Obj}/{Id}/{blob field}``."""
        version = self._version(request)
        name, first, second = (request.path_params[k] for k in ("obj", "first", "second"))
        obj = self.org.sobject(name)
        f = obj.field(first)
        if f is None and obj.field(second) is not None and obj.field(second).type == "base64":
            if request.method != "GET":
                raise SfError("METHOD_NOT_ALLOWED", "HTTP Method not allowed", status=405)
            return Response(self.org.blob(name, first, obj.field(second).name), media_type="application/octetstream")
        fields = [x for x in request.query_params.get("fields", "").split(",") if x] or None
        if request.method == "GET":
            return JSONResponse(self.org.get_by(name, first, second, fields))
        if request.method != "PATCH":
            raise SfError("METHOD_NOT_ALLOWED", "HTTP Method not allowed", status=405)
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected a JSON object")
        try:
            record_id, created = self.org.upsert(name, first, second, body)
        except SfError as exc:
            if exc.status == 300:
                obj_name = obj.name
                matches = self.org.find_by(obj, obj.field(first), second)
                return JSONResponse([f"/services/data/v{version}/sobjects/{obj_name}/{m}" for m in matches],
                                    status_code=300)
            raise
        return JSONResponse({"id": record_id, "success": True, "errors": [], "created": created},
                            status_code=201 if created else 200)

    # -- sObject Collections ------------------------------------------------------------------------
    def _checked_records(self, body: Any, *, need_id: bool, forbid_id: bool, single_type: str | None = None
                         ) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise RequestError("JSON_PARSER_ERROR", "Expected {\"allOrNone\": bool, \"records\": [...]}")
        records = body["records"]
        if len(records) > MAX_COLLECTION:
            raise RequestError("EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                               f"{MAX_COLLECTION} records into this call")
        types = []
        for record in records:
            kind = (record.get("attributes") or {}).get("type") if isinstance(record, dict) else None
            if not kind:
                raise RequestError("INVALID_TYPE", "Must send a concrete entity type.")
            if single_type and kind.lower() != single_type.lower():
                raise RequestError("INVALID_TYPE", f"every record must be a {single_type} (got {kind})")
            has_id = any(k.lower() == "id" for k in record)
            if forbid_id and has_id:
                raise RequestError("INVALID_FIELD", "Id is not allowed in a create call", ["Id"])
            if need_id and not has_id:
                raise RequestError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            types.append(self.org.precheck(kind, record))
        chunks = sum(1 for i, t in enumerate(types) if i == 0 or t != types[i - 1])
        if chunks > 10:
            raise RequestError("INVALID_BATCH_REQUEST", "a request may contain at most 10 chunks of one type")
        return records

    def _all_or_none(self, body: dict[str, Any], work) -> list[dict[str, Any]]:
        """Run ``work(record) -> result`` per record; with allOrNone, one failure undoes the lot."""
        all_or_none = bool(body.get("allOrNone"))
        with self.org.lock:
            saved = (copy.deepcopy(self.org.records), dict(self.org.where), dict(self.org.blobs)) if all_or_none else None
            results = []
            for record in body["records"]:
                try:
                    results.append(work(record))
                except RequestError:
                    raise
                except SfError as exc:
                    results.append({"id": None, "success": False, "errors": [exc.as_record()]})
            if all_or_none and any(not r["success"] for r in results):
                self.org.records, self.org.where, self.org.blobs = saved
                rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "Record rolled back because "
                          "not all records were valid and the request was using AllOrNone header", "fields": []}
                results = [r if not r["success"] else {"id": None, "success": False, "errors": [rolled]}
                           for r in results]
            return results

    async def collections(self, request: Request) -> Response:
        self._version(request)
        if request.method == "DELETE":
            ids = [i for i in request.query_params.get("ids", "").split(",") if i]
            if not ids or len(ids) > MAX_COLLECTION:
                raise RequestError("EXCEEDED_ID_LIMIT", f"between 1 and {MAX_COLLECTION} ids are required")
            body = {"allOrNone": request.query_params.get("allOrNone", "false").lower() == "true", "records": ids}

            def remove(record_id):
                self.org.delete(record_id)
                return {"id": record_id, "success": True, "errors": []}

            return JSONResponse(self._all_or_none(body, remove))
        body = await self._json(request)
        if request.method == "POST":
            self._checked_records(body, need_id=False, forbid_id=True)
            return JSONResponse(self._all_or_none(body, lambda r: {
                "id": self.org.insert(r["attributes"]["type"], r), "success": True, "errors": []}))

        self._checked_records(body, need_id=True, forbid_id=False)

        def update(record):
            record_id = next(v for k, v in record.items() if k.lower() == "id")
            rest = {k: v for k, v in record.items() if k.lower() != "id"}
            self.org.update(record["attributes"]["type"], record_id, rest)
            return {"id": record_id, "success": True, "errors": []}

        return JSONResponse(self._all_or_none(body, update))

    async def collections_upsert(self, request: Request) -> Response:
        self._version(request)
        name, ext = request.path_params["obj"], request.path_params["ext"]
        body = await self._json(request)
        self._checked_records(body, need_id=False, forbid_id=ext.lower() != "id", single_type=name)

        def upsert(record):
            value = next((v for k, v in record.items() if k.lower() == ext.lower()), None)
            if value in (None, ""):
                raise SfError("MISSING_ARGUMENT", f"{ext} not specified", [ext])
            rest = {k: v for k, v in record.items() if k.lower() != ext.lower()}
            record_id, created = self.org.upsert(name, ext, str(value), rest)
            return {"id": record_id, "success": True, "errors": [], "created": created}

        return JSONResponse(self._all_or_none(body, upsert))

    async def collections_retrieve(self, request: Request) -> Response:
        self._version(request)
        name = request.path_params["obj"]
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        fields = [f for f in request.query_params.get("fields", "").split(",") if f]
        if not ids or not fields or len(ids) > 2000:
            raise RequestError("MISSING_ARGUMENT", "ids (at most 2000) and fields are required")
        out = []
        for record_id in ids:
            try:
                out.append(self.org.get(name, record_id, fields))
            except RequestError:
                raise
            except SfError:
                out.append(None)
        return JSONResponse(out)

    # -- queries ----------------------------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        self._version(request)
        text = request.query_params.get("q")
        if not text:
            raise RequestError("MALFORMED_QUERY", "a query (q) is required")
        return JSONResponse(self.org.query(text, include_deleted=request.url.path.rstrip("/").endswith("queryAll")))

    async def query_more(self, request: Request) -> Response:
        self._version(request)
        return JSONResponse(self.org.query_more(request.path_params["locator"]))

    # -- Tooling ----------------------------------------------------------------------------------
    async def tooling_create_field(self, request: Request) -> Response:
        self._version(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected {\"FullName\", \"Metadata\"}")
        tooling_id = self.org.create_custom_field(body)
        return JSONResponse({"id": tooling_id, "success": True, "errors": [], "warnings": [], "infos": []},
                            status_code=201)

    async def tooling_field(self, request: Request) -> Response:
        self._version(request)
        tooling_id = request.path_params["id"]
        if request.method == "GET":
            return JSONResponse(self.org.get_custom_field(tooling_id))
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected {\"Metadata\": {...}}")
        self.org.update_custom_field(tooling_id, body)
        return Response(status_code=204)

    async def tooling_query(self, request: Request) -> Response:
        self._version(request)
        return JSONResponse(self.org.tooling_query(request.query_params.get("q") or ""))

    # -- Bulk API 2.0 -----------------------------------------------------------------------------
    async def jobs(self, request: Request) -> Response:
        self._version(request)
        if request.method == "GET":
            return JSONResponse(self.bulk.listing())
        body = await self._json(request)
        if not isinstance(body, dict):
            raise RequestError("JSON_PARSER_ERROR", "Expected a JSON job definition")
        return JSONResponse(self.bulk.create(body))

    async def job(self, request: Request) -> Response:
        self._version(request)
        job_id = request.path_params["job"]
        if request.method == "GET":
            return JSONResponse(self.bulk.status(job_id))
        if request.method == "DELETE":
            self.bulk.delete(job_id)
            return Response(status_code=204)
        body = await self._json(request) or {}
        return JSONResponse(self.bulk.set_state(job_id, body.get("state")))

    async def job_batches(self, request: Request) -> Response:
        self._version(request)
        self.bulk.upload(request.path_params["job"], await request.body(), request.headers.get("content-type", ""))
        return Response(status_code=201)

    async def job_results(self, request: Request) -> Response:
        self._version(request)
        text = self.bulk.results(request.path_params["job"], request.path_params["kind"])
        return PlainTextResponse(text, media_type="text/csv")

    # -- OAuth and admin --------------------------------------------------------------------------
    async def userinfo(self, request: Request) -> Response:
        user = next(u for u in self.org.users() if u["Id"] == self.org.user_id)
        return JSONResponse({"user_id": user["Id"], "organization_id": ORG_ID, "preferred_username": user["Username"],
                             "email": user["Email"], "name": user["Name"], "active": True})

    async def admin_custom_object(self, request: Request) -> Response:
        body = await request.json()
        self.org.add_custom_object(body["name"], body.get("label") or body["name"][:-3].replace("_", " "),
                                   body.get("plural") or (body.get("label") or body["name"][:-3]) + "s")
        return JSONResponse({"ok": True})

    async def admin_record_type(self, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"id": self.org.add_record_type(body["object"], body["developer_name"], body.get("label"))})

    async def admin_settings(self, request: Request) -> Response:
        values = await request.json() if request.method == "POST" else {}
        return JSONResponse(self.org.settings(**values))

    async def admin_snapshot(self, request: Request) -> Response:
        return JSONResponse(self.org.snapshot())


class _SalesforceAsgi:
    """Authentication, API-call counting and the limit header around the Starlette routes."""

    def __init__(self, app: Starlette, org: Org):
        self.app = app
        self.org = org
        self.state = app.state

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(CONTROL):
            return await self.app(scope, receive, send)
        counted = path.startswith("/services/data/v")
        headers = dict(scope.get("headers") or [])
        if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.org.session_id}":
            response = JSONResponse([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                                    status_code=401)
            return await response(scope, receive, send)
        if counted:
            try:
                self.org.count_call()
            except SfError as exc:
                response = _error(exc)
                response.headers["Sforce-Limit-Info"] = self.org.limit_info()
                return await response(scope, receive, send)

        async def with_limit_header(message):
            if message["type"] == "http.response.start" and counted:
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"sforce-limit-info", self.org.limit_info().encode())]}
            await send(message)

        await self.app(scope, receive, with_limit_header)


def create_app(api_key: str | None = None, rate_limit: int | None = None, *, window: float = 60.0,
               users: list[dict] | None = None, audit_fields: bool = True, orders: bool = True,
               daily_api_limit: int = 100_000, daily_bulk_batches: int = 15_000, page_size: int = 2000,
               custom_objects: list[dict] | None = None):
    """Build the emulator, wrapped by ``instrument`` (request log, 429s, faults).

    ``api_key`` is the session id (access token) clients must send; ``users`` seeds active Users
    (``{"email", "firstName", "lastName", "active"}``) because users are licences an admin creates,
    never records a migration writes; ``audit_fields`` is the org's "Set Audit Fields upon Record
    Creation" permission; ``orders`` whether Orders are enabled; ``custom_objects`` are created as an
    admin would in Setup (``{"name": "Invoice__c", "label", "plural"}``), since the REST API cannot.
    """
    org = Org(session_id=api_key or DEFAULT_SESSION_ID, users=users, audit_fields=audit_fields, orders=orders,
              daily_api_limit=daily_api_limit, daily_bulk_batches=daily_bulk_batches, page_size=page_size)
    for spec in custom_objects or ():
        org.add_custom_object(spec["name"], spec.get("label") or spec["name"][:-3], spec.get("plural") or
                              (spec.get("label") or spec["name"][:-3]) + "s")
    emulator = SalesforceEmulator(org)

    def handle(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except SfError as exc:
                return _error(exc)
        return endpoint

    v = "/services/data/v{version}"
    routes = [
        Route("/services/data", _versions, methods=["GET"]),
        Route("/services/data/", _versions, methods=["GET"]),
        Route(f"{v}", handle(emulator.resources), methods=["GET"]),
        Route(f"{v}/", handle(emulator.resources), methods=["GET"]),
        Route(f"{v}/limits", handle(emulator.limits), methods=["GET"]),
        Route(f"{v}/limits/", handle(emulator.limits), methods=["GET"]),
        Route(f"{v}/sobjects", handle(emulator.global_describe), methods=["GET"]),
        Route(f"{v}/sobjects/", handle(emulator.global_describe), methods=["GET"]),
        Route(f"{v}/sobjects/{{obj}}/describe", handle(emulator.describe), methods=["GET"]),
        Route(f"{v}/sobjects/{{obj}}/describe/", handle(emulator.describe), methods=["GET"]),
        Route(f"{v}/sobjects/{{obj}}", handle(emulator.sobject_root), methods=["GET", "POST"]),
        Route(f"{v}/sobjects/{{obj}}/", handle(emulator.sobject_root), methods=["GET", "POST"]),
        Route(f"{v}/sobjects/{{obj}}/{{id}}", handle(emulator.sobject_record), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{v}/sobjects/{{obj}}/{{first}}/{{second:path}}", handle(emulator.sobject_by_field),
              methods=["GET", "PATCH"]),
        Route(f"{v}/composite/sobjects", handle(emulator.collections), methods=["POST", "PATCH", "DELETE"]),
        Route(f"{v}/composite/sobjects/{{obj}}", handle(emulator.collections_retrieve), methods=["GET"]),
        Route(f"{v}/composite/sobjects/{{obj}}/{{ext}}", handle(emulator.collections_upsert), methods=["PATCH"]),
        Route(f"{v}/query", handle(emulator.query), methods=["GET"]),
        Route(f"{v}/query/", handle(emulator.query), methods=["GET"]),
        Route(f"{v}/queryAll", handle(emulator.query), methods=["GET"]),
        Route(f"{v}/queryAll/", handle(emulator.query), methods=["GET"]),
        Route(f"{v}/query/{{locator}}", handle(emulator.query_more), methods=["GET"]),
        Route(f"{v}/queryAll/{{locator}}", handle(emulator.query_more), methods=["GET"]),
        Route(f"{v}/tooling/sobjects/CustomField", handle(emulator.tooling_create_field), methods=["POST"]),
        Route(f"{v}/tooling/sobjects/CustomField/", handle(emulator.tooling_create_field), methods=["POST"]),
        Route(f"{v}/tooling/sobjects/CustomField/{{id}}", handle(emulator.tooling_field), methods=["GET", "PATCH"]),
        Route(f"{v}/tooling/query", handle(emulator.tooling_query), methods=["GET"]),
        Route(f"{v}/tooling/query/", handle(emulator.tooling_query), methods=["GET"]),
        Route(f"{v}/jobs/ingest", handle(emulator.jobs), methods=["GET", "POST"]),
        Route(f"{v}/jobs/ingest/", handle(emulator.jobs), methods=["GET", "POST"]),
        Route(f"{v}/jobs/ingest/{{job}}", handle(emulator.job), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{v}/jobs/ingest/{{job}}/batches", handle(emulator.job_batches), methods=["PUT"]),
        Route(f"{v}/jobs/ingest/{{job}}/{{kind}}", handle(emulator.job_results), methods=["GET"]),
        Route(f"{v}/jobs/ingest/{{job}}/{{kind}}/", handle(emulator.job_results), methods=["GET"]),
        Route("/services/oauth2/userinfo", handle(emulator.userinfo), methods=["GET", "POST"]),
        Route(f"{CONTROL}/custom-objects", emulator.admin_custom_object, methods=["POST"]),
        Route(f"{CONTROL}/record-types", emulator.admin_record_type, methods=["POST"]),
        Route(f"{CONTROL}/settings", emulator.admin_settings, methods=["GET", "POST"]),
        Route(f"{CONTROL}/snapshot", emulator.admin_snapshot, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.salesforce = org
    app.state.salesforce_bulk = emulator.bulk
    return instrument(_SalesforceAsgi(app, org), rate_limit=rate_limit, window=window)


async def _versions(request: Request) -> Response:
    return JSONResponse([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in SUPPORTED_VERSIONS])


__all__ = ["DEFAULT_SESSION_ID", "SalesforceEmulator", "TlsServedApp", "create_app", "serve_options"]
