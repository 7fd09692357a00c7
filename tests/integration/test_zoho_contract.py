"""The Zoho emulator against Zoho's own OpenAPI v8 files: every request the hook sends and every
answer the emulator gives must fit the published contract, so the emulator cannot drift from Zoho.

The spec files are Zoho's, unchanged (``shared/specs/zoho-crm-v8``, from zoho/crm-oas). Their
``$ref`` links point at raw GitHub URLs of sibling files; they are resolved to the local copies,
and the few files the folder does not ship (tags, layouts, profiles, custom views, related lists)
resolve to an empty schema. Three readings of OpenAPI 3.0 that the validator makes explicit:

* ``nullable: true`` allows ``null`` (JSON Schema has no such keyword);
* ``oneOf`` is read as ``anyOf``: Zoho's alternatives overlap (a success and an error object both
  have ``status``/``code``/``message``/``details``), so exactly-one can never hold;
* ``required`` is enforced on envelopes and error objects, but not inside the large resource models
  (records, fields, modules, notes, attachments, users): these mark every property required,
  although the API returns only the requested ``fields`` and the properties of each data type, and
  requests reuse the same models. There, the properties present must still match their types and enums.

A status the spec does not list for an operation is checked against its documented 2xx answer when
the emulator's is 2xx (Zoho's files list only ``200`` for writes that really answer 201/207), and is
otherwise reported; 429 answers (not in these files) are not checked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC_FILES = ("record.json", "fields.json", "modules.json", "notes.json", "attachments.json", "users.json",
              "bulk_write.json", "coql.json", "common.json")
RELAX_REQUIRED_ABOVE = 12  # models with more properties than this are resource models (see above)


def _spec_dir() -> Path | None:
    for candidate in (os.environ.get("ZOHO_OAS_DIR"), REPO.parent / "shared" / "specs" / "zoho-crm-v8",
                      Path("/work/shared/specs/zoho-crm-v8")):
        if candidate and (Path(candidate) / "record.json").is_file():
            return Path(candidate)
    return None


SPEC_DIR = _spec_dir()
pytestmark = pytest.mark.skipif(SPEC_DIR is None, reason="Zoho OpenAPI v8 files not found (set ZOHO_OAS_DIR)")


def _normalise(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema (nullable, oneOf, required on resource models)."""
    if isinstance(node, list):
        return [_normalise(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _normalise(v) for k, v in node.items() if k not in ("example", "examples", "xml", "discriminator")}
    if "oneOf" in out:
        out["anyOf"] = out.pop("oneOf")
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if len(out.get("properties") or {}) > RELAX_REQUIRED_ABOVE:
        out.pop("required", None)
    if out.get("format") in ("int32", "int64", "date-time", "date", "binary"):
        out.pop("format")
    out.pop("pattern", None)  # patterns in these files are copied from sample values (a@b.com shapes)
    return out


class Contract:
    """The spec files, a $ref registry across them, and lookup of an operation by method and path."""

    def __init__(self, folder: Path):
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.docs = {name: json.loads((folder / name).read_text()) for name in SPEC_FILES}
        normals = {name: _normalise(doc) for name, doc in self.docs.items()}
        self.dangling: list[str] = []
        normals = {name: self._drop_dangling(normals, name, normal) for name, normal in normals.items()}
        resources = []
        for name, normal in normals.items():
            resource = Resource(contents=normal, specification=DRAFT202012)
            resources += [(f"https://raw.githubusercontent.com/Zohocorp-Pvt-Ltd/crm-oas/refs/heads/main/v8.0/{name}",
                           resource), (name, resource)]
        for missing in ("tags.json", "layouts.json", "profiles.json", "custom_views.json", "related_lists.json"):
            empty = Resource(contents={"components": {"schemas": _AnySchemas()}}, specification=DRAFT202012)
            resources.append((f"https://raw.githubusercontent.com/Zohocorp-Pvt-Ltd/crm-oas/refs/heads/main/v8.0/{missing}",
                              empty))
        self.registry = Registry().with_resources(resources)
        self.routes = []
        for name, doc in self.docs.items():
            for template, item in doc.get("paths", {}).items():
                pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
                literal = len(re.sub(r"\{[^}]+\}", "", template))
                self.routes.append((literal, re.compile(pattern), name, template, item))
        self.routes.sort(key=lambda r: -r[0])  # the most literal template wins (/upsert before /{id})

    def _drop_dangling(self, normals: dict[str, Any], name: str, node: Any) -> Any:
        """A ``$ref`` to a schema the spec files do not define becomes "any value" (and is listed)."""
        if isinstance(node, list):
            return [self._drop_dangling(normals, name, n) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            target, _, pointer = ref.partition("#")
            doc = normals.get(target.rsplit("/", 1)[-1] if target else name)
            if doc is not None:
                found: Any = doc
                for part in pointer.strip("/").split("/"):
                    found = found.get(part) if isinstance(found, dict) else None
                if found is None:
                    self.dangling.append(f"{name}: {ref}")
                    return {}
        return {k: self._drop_dangling(normals, name, v) for k, v in node.items()}

    def operation(self, method: str, path: str) -> tuple[str, str, dict] | None:
        for _, pattern, name, template, item in self.routes:
            if pattern.match(path) and method.lower() in item:
                return name, template, item[method.lower()]
        return None

    def resolve(self, name: str, node: dict) -> dict:
        while "$ref" in node:
            ref = node["$ref"]
            base = name if ref.startswith("#") else ref.split("#")[0]
            resolved = self.registry.resolver(base_uri=base).lookup(ref if not ref.startswith("#") else f"{base}{ref}")
            node = resolved.contents
            name = base.rsplit("/", 1)[-1]
        return node

    def validate(self, name: str, schema: dict, instance: Any, what: str) -> list[str]:
        schema = _rebase(_normalise(schema), name)
        validator = _validator_class()(schema, registry=self.registry)
        from jsonschema.exceptions import best_match

        problems = []
        for error in validator.iter_errors(instance):
            error = best_match(error.context) if error.context else error
            where = "/".join(map(str, error.absolute_path)) or "(root)"
            problems.append(f"{what}: {where}: {error.message[:200]}")
        return problems


def _validator_class():
    """Draft 2020-12 where an ``anyOf`` alternative counts only if it declares a key the object has.

    Zoho's error objects require no key, so without this rule any answer would pass as an "error"
    alternative and the contract could not catch anything.
    """
    from jsonschema import Draft202012Validator, validators
    from jsonschema._keywords import anyOf

    def declared(validator, subschema) -> set[str]:
        seen = 0
        while isinstance(subschema, dict) and "$ref" in subschema and seen < 20:
            subschema = validator._resolver.lookup(subschema["$ref"]).contents
            seen += 1
        keys = set((subschema or {}).get("properties") or {})
        for branch in (subschema or {}).get("anyOf") or []:
            keys |= declared(validator, branch)
        return keys

    def any_of_by_keys(validator, alternatives, instance, schema):
        if validator.is_type(instance, "object") and instance:
            keyed = [alt for alt in alternatives if declared(validator, alt) & set(instance)]
            if keyed:
                alternatives = keyed
        yield from anyOf(validator, alternatives, instance, schema)

    return validators.extend(Draft202012Validator, {"anyOf": any_of_by_keys})


class _AnySchemas(dict):
    """``#/components/schemas/<anything>`` of a spec file the folder does not ship: any value."""

    def __missing__(self, key):
        return {}


def _absolute(name: str, ref: str) -> str:
    return f"{name}{ref}" if ref.startswith("#") else ref


def _rebase(node: Any, name: str) -> Any:
    """An operation's inline schema, with its local ``#/…`` references pointed at its spec file."""
    if isinstance(node, list):
        return [_rebase(n, name) for n in node]
    if not isinstance(node, dict):
        return node
    return {k: (_absolute(name, v) if k == "$ref" else _rebase(v, name)) for k, v in node.items()}


def _media_schema(contract: Contract, name: str, holder: dict) -> dict | None:
    holder = contract.resolve(name, holder)
    content = holder.get("content") or {}
    for media in ("application/json", "multipart/form-data", "application/octet-stream"):
        if media in content:
            return content[media].get("schema")
    return None


def check_exchange(contract: Contract, exchange: dict[str, Any]) -> list[str]:
    """Problems of one recorded request/answer pair with the spec (empty = it fits)."""
    found = contract.operation(exchange["method"], exchange["path"])
    what = f"{exchange['method']} {exchange['path']}"
    if found is None:
        return [f"{what}: not in the spec files"]
    name, _, op = found
    problems: list[str] = []
    declared = {}
    for param in op.get("parameters") or []:
        param = contract.resolve(name, param)
        declared[param["name"]] = param
    query = dict(p.split("=", 1) for p in exchange["query"].split("&") if "=" in p)
    for key in query:
        if key not in declared:
            problems.append(f"{what}: query parameter {key!r} is not in the spec")
    if exchange["request"] and exchange["request_type"].startswith("application/json") and op.get("requestBody"):
        schema = _media_schema(contract, name, op["requestBody"])
        if schema is not None:
            body = json.loads(exchange["request"])
            problems += contract.validate(name, _request_schema(contract, name, schema), body, f"{what} request")
    status = exchange["status"]
    if status == 429:
        return problems
    responses = op.get("responses") or {}
    answer = responses.get(str(status))
    if answer is not None:
        schema = _media_schema(contract, name, answer)
    else:
        # Zoho's files list one answer per write (200) though the API answers 201/207/400 with the
        # same per-record items: an unlisted status must fit one of the documented answers.
        alternatives = [s for s in (_media_schema(contract, name, a) for c, a in responses.items() if c != "204") if s]
        if not alternatives:
            return problems + [f"{what}: answered {status}, which the spec does not list ({sorted(responses)})"]
        schema = {"anyOf": alternatives}
        body = json.loads(exchange["response"]) if exchange["response"] else None
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            # A mixed answer (207) cannot fit an answer documented as all-success or all-error:
            # each per-record result must fit one of them.
            for i, item in enumerate(body["data"]):
                problems += contract.validate(name, schema, {"data": [item]}, f"{what} answer {status} item {i}")
            return problems
    if schema is not None and exchange["response"] and exchange["response_type"].startswith("application/json"):
        problems += contract.validate(name, schema, json.loads(exchange["response"]), f"{what} answer {status}")
    return problems


def _request_schema(contract: Contract, name: str, schema: dict) -> dict:
    """Requests reuse the response models, whose ``required`` lists describe answers: drop them."""

    def strip(node: Any, current: str, depth: int = 0) -> Any:
        if depth > 12:
            return {}
        if isinstance(node, list):
            return [strip(n, current, depth) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            target = current if ref.startswith("#") else ref.split("#")[0].rsplit("/", 1)[-1]
            try:
                resolved = contract.resolve(current, {"$ref": _absolute(current, ref) if ref.startswith("#") else ref})
            except Exception:  # noqa: BLE001 - a reference the spec files leave dangling: any value
                return {}
            return strip(resolved, target, depth + 1)
        return {k: strip(v, current, depth) for k, v in node.items() if k != "required"}

    return strip(schema, name)


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(SPEC_DIR)


def test_contract_catches_a_drifting_emulator(contract):
    """The validator itself fails on answers that break the published shapes."""
    good = {"method": "POST", "path": "/crm/v8/Accounts/upsert", "query": "", "request_type": "application/json",
            "request": json.dumps({"data": [{"Account_Name": "A"}], "duplicate_check_fields": ["Ascora_ID"]}),
            "status": 200, "response_type": "application/json",
            "response": json.dumps({"data": [{"code": "SUCCESS", "status": "success", "message": "record added",
                                              "action": "insert", "details": {
                                                  "id": "1", "Created_Time": "2024-01-01T00:00:00+00:00",
                                                  "Modified_Time": "2024-01-01T00:00:00+00:00",
                                                  "Created_By": {"name": "a", "id": "1"},
                                                  "Modified_By": {"name": "a", "id": "1"}}}]})}
    assert check_exchange(contract, good) == []
    wrong_status = {**good, "response": json.dumps({"data": [{"code": "SUCCESS", "status": "ok",
                                                              "message": "record added", "details": {}}]})}
    assert check_exchange(contract, wrong_status)
    wrong_type = {**good, "request": json.dumps({"data": [{}], "duplicate_check_fields": "Ascora_ID"})}
    assert any("duplicate_check_fields" in p for p in check_exchange(contract, wrong_type))
    unknown_param = {**good, "method": "GET", "path": "/crm/v8/Accounts", "query": "fields=id&bogus=1",
                     "request": b"", "response": json.dumps({"data": []})}
    assert any("bogus" in p for p in check_exchange(contract, unknown_param))


def test_every_exchange_of_a_migration_fits_the_spec(contract, tmp_path):
    """Drive every call the plugin makes (metadata, writes with refusals, reads, COQL, notes, tasks,
    products and quotes with their Quoted_Items, files, users, deletes, Bulk Write) and validate each
    recorded request and answer."""
    from airflow_ascora_provider.hooks.zoho import ZohoApiError, ZohoHook
    from tests.integration.test_zoho_emulator import client_kwargs, served_zoho

    with served_zoho(record_exchanges=True) as zoho:
        hook = ZohoHook(**client_kwargs(zoho))
        hook.org()
        hook.modules()
        hook.fields("Accounts")
        hook.create_fields("Accounts", [{"field_label": "Ascora ID", "api_name": "Ascora_ID", "data_type": "text",
                                         "unique": {"casesensitive": "false"}}])
        hook.create_fields("Deals", [{"field_label": "Job Status", "api_name": "Job_Status", "data_type": "picklist",
                                      "pick_list_values": [{"display_value": "Booked", "actual_value": "Booked"}],
                                      "tooltip": {"name": "static_text", "value": "Ascora job status"}},
                                     {"field_label": "Ascora ID", "api_name": "Ascora_ID", "data_type": "text",
                                      "unique": {"casesensitive": "false"}}])
        field = next(f for f in hook.fields("Deals") if f["api_name"] == "Job_Status")
        hook.set_picklist_values("Deals", field, ["Completed"])
        with pytest.raises(ZohoApiError):
            hook.create_fields("Notes", [{"field_label": "X", "data_type": "text"}])
        hook.create_module("Service_Sites", "Service Site", "Service Sites")
        hook.users()
        accounts = hook.upsert("Accounts", [{"Account_Name": "Acme", "Ascora_ID": "c1"},
                                            {"Account_Name": "Beta", "Ascora_ID": "c2", "Phone": 12},
                                            {"Ascora_ID": "c3"}], ["Ascora_ID"])
        account_id = accounts[0]["details"]["id"]
        hook.upsert("Accounts", [{"Account_Name": "Acme Pty", "Ascora_ID": "c1"}], ["Ascora_ID"])
        hook.insert("Accounts", [{"Account_Name": "Dup", "Ascora_ID": "c1"}])
        hook.update("Accounts", [{"id": account_id, "Account_Name": "Acme Pty Ltd"}])
        deal = hook.upsert("Deals", [{"Deal_Name": "J1", "Stage": "Qualification", "Closing_Date": "2024-05-01",
                                      "Account_Name": {"id": account_id}, "Job_Status": "Booked",
                                      "Ascora_ID": "j1"}], ["Ascora_ID"])[0]["details"]["id"]
        hook.insert("Tasks", [{"Subject": "1. J1 Site visit", "What_Id": {"id": deal}, "$se_module": "Deals",
                               "Status": "Not Started"}])
        note = hook.insert("Notes", [{"Note_Title": "Site visit", "Note_Content": "All good",
                                      "Parent_Id": {"module": {"api_name": "Deals"}, "id": deal}},
                                     {"Parent_Id": {"module": {"api_name": "Deals"}, "id": deal}}])
        product = hook.upsert("Products", [{"Product_Name": "SUPPLY GPO-2", "Unit_Price": 24.5,
                                            "Description": "Double power point"}], ["Product_Name"])[0]
        quote = hook.insert("Quotes", [{"Subject": "Quote Q1", "Deal_Name": {"id": deal}, "Quote_Stage": "Draft",
                                        "Valid_Till": "2024-06-01", "Quoted_Items": [
                                            {"Product_Name": {"id": product["details"]["id"]}, "Quantity": 2,
                                             "List_Price": 24.5, "Discount": 0, "Description": "Kitchen"}]},
                                       {"Subject": "Quote without lines"}])[0]["details"]["id"]
        rows = next(hook.get_records("Quotes", ["Quoted_Items"], ids=[quote]))["Quoted_Items"]
        hook.update("Quotes", [{"id": quote, "Quoted_Items": [
            {"id": rows[0]["id"], "_delete": None},
            {"Product_Name": {"id": product["details"]["id"]}, "Quantity": 3, "List_Price": 24.5}]}])
        hook.delete("Quotes", [quote])
        hook.delete("Products", [product["details"]["id"]])
        list(hook.get_records("Accounts", ["Account_Name", "Ascora_ID", "Parent_Account"]))
        list(hook.get_records("Deals", ["Deal_Name", "Account_Name"], ids=[deal]))
        list(hook.get_records("Notes", ["Note_Content", "Parent_Id"]))
        hook.coql("select id, Ascora_ID from Accounts where Ascora_ID in ('c1', 'c2') limit 200")
        hook.coql("select id from Accounts where Ascora_ID = 'none' limit 200")
        with pytest.raises(ZohoApiError):
            hook.coql("select nope from Accounts where id is not null")
        attachment = hook.upload_attachment("Deals", deal, "photo.jpg", b"\xff\xd8 jpeg bytes", "image/jpeg")
        hook.list_attachments("Deals", deal)
        hook.download_attachment("Deals", deal, attachment)
        hook.delete_attachment("Deals", deal, attachment)
        file_id = hook.upload_bulk_file("Accounts.csv", "Ascora_ID,Account_Name\nb1,Bulk One\nb2,\n")
        job = hook.create_bulk_write("Accounts", file_id, [{"api_name": "Ascora_ID", "index": 0},
                                                           {"api_name": "Account_Name", "index": 1}],
                                     find_by="Ascora_ID")
        import time

        deadline = time.monotonic() + 10
        while (status := hook.bulk_write_status(job))["status"] != "COMPLETED" and time.monotonic() < deadline:
            time.sleep(0.1)
        hook.download(status["result"]["download_url"])
        hook.delete("Notes", [note[0]["details"]["id"]])
        hook.delete("Accounts", [account_id, "1234567890123456789"])
        exchanges = [e for e in zoho.app.state.zoho.exchanges
                     if not e["path"].startswith(("/crm/v8/settings/profiles", "/crm/v8/org"))
                     and not e["path"].endswith("/result")]
    # profiles and org have no spec file in the folder; the result download is a zip (checked by content)
    assert {e["status"] for e in exchanges} >= {200, 201, 204, 207, 400}
    problems = [p for e in exchanges for p in check_exchange(contract, e)]
    assert not problems, "\n".join(problems[:40])
