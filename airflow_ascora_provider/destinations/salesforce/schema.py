"""Schema setup in a Salesforce org: custom fields through the Tooling API, then field-level security.

Three Salesforce rules shape this module:

* A custom field created through ``tooling/sobjects/CustomField`` is invisible to the integration user
  until ``FieldPermissions`` grants it (REST, on a permission set assigned to that user). The plugin
  keeps its own permission set (``Ascora_Migration`` unless the connection says otherwise), creates
  and assigns it when missing, and grants Read + Edit on every field it creates. ``FieldPermissions``
  is an ordinary sObject, so the grants of a whole schema step go out as sObject Collections of 200
  after the last field is created, not one call per field.
* Custom fields of Tasks live on ``Activity`` (``FullName: Activity.Ascora_Id__c``); their field
  permissions are still granted per object (``Task.Ascora_Id__c``).
* Custom objects and record types cannot be created through REST (the Metadata API's SOAP
  ``createMetadata`` can, but that is an admin decision): they are listed for an admin, and fields on
  an object that does not exist yet are refused with a message saying so.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from simple_salesforce.exceptions import SalesforceMalformedRequest

from airflow_ascora_provider.destinations.salesforce.encoding import CUSTOM_FIELD_TYPES, YES_NO

log = logging.getLogger(__name__)

MAX_LABEL = 40
MAX_NAME = 40  # characters before the __c suffix
ACTIVITY_OBJECTS = ("Task", "Event")
COLLECTION_CAP = 200  # records in one sObject Collections call


class UnsupportedFieldType(ValueError):
    """The mapping asks for a custom field type Salesforce does not have: a person must review it."""


def field_api_name(label: str) -> str:
    """``"ascora Panel kW"`` → ``Ascora_Panel_kW__c`` (letters, digits, single underscores, ≤ 40)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", label) if w]
    if not words:
        return "Field__c"
    words = [w[:1].upper() + w[1:] for w in words]
    name = "_".join(words)
    if not name[0].isalpha():
        name = "X" + name
    return name[:MAX_NAME].rstrip("_") + "__c"


def table_of(sobject: str) -> str:
    return "Activity" if sobject in ACTIVITY_OBJECTS else sobject


def field_metadata(sobject: str, field: str, spec) -> dict[str, Any]:
    """The Tooling ``CustomField`` body for a mapping ``create`` spec (``FieldCreate``)."""
    template = CUSTOM_FIELD_TYPES.get(spec.type)
    if template is None:
        raise UnsupportedFieldType(
            f"{sobject}.{field}: Salesforce has no custom field type for '{spec.type}'; this field needs manual "
            f"review (map it to text fields, or create it by hand and change the mapping)")
    metadata: dict[str, Any] = {"label": (spec.label or field)[:MAX_LABEL], **template}
    if spec.help_text:
        metadata["inlineHelpText"] = spec.help_text[:510]
        metadata["description"] = spec.help_text[:1000]
    if spec.unique:
        if spec.type not in ("text", "number", "email"):
            raise UnsupportedFieldType(f"{sobject}.{field}: only text, number and e-mail fields can be unique")
        # Unique + External ID: what an upsert matches on, and a second insert of the same Ascora id fails.
        metadata.update({"unique": True, "externalId": True, "caseSensitive": False})
    if spec.type == "boolean":
        metadata["valueSet"] = {"restricted": True, "valueSetDefinition": {"sorted": False, "value": [
            {"fullName": v, "label": v, "default": False} for v in YES_NO]}}
    if spec.type in ("picklist", "multi_picklist"):
        values = list(dict.fromkeys(str(v) for v in spec.options))
        if not values:
            raise UnsupportedFieldType(f"{sobject}.{field}: a Salesforce pick-list needs at least one value; list "
                                       "them under create.options")
        metadata["valueSet"] = {"restricted": False, "valueSetDefinition": {
            "sorted": False, "value": [{"fullName": v, "label": v, "default": False} for v in values]}}
    if spec.type == "lookup":
        if not spec.lookup_target:
            raise UnsupportedFieldType(f"{sobject}.{field}: a lookup needs create.target (the object it points at)")
        base = field[:-3] if field.endswith("__c") else field
        metadata.update({"referenceTo": spec.lookup_target,
                         "relationshipName": re.sub(r"_+", "_", f"{sobject}_{base}")[:MAX_NAME].strip("_"),
                         "relationshipLabel": f"{sobject} ({spec.label or base})"[:MAX_LABEL]})
    return metadata


class FieldSecurity:
    """Grants the integration user Read + Edit on new fields through one permission set."""

    def __init__(self, sf, permission_set: str):
        self.sf = sf
        self.name = permission_set
        self._id: str | None = None
        self._queued: list[tuple[str, str, str]] = []  # (field's object, object granted on, field)

    def permission_set_id(self) -> str:
        if self._id:
            return self._id
        found = self._find()
        if not found:
            try:
                self.sf.PermissionSet.create({"Name": self.name, "Label": self.name.replace("_", " ")})
            except SalesforceMalformedRequest as exc:
                if "DUPLICATE_VALUE" not in _codes(exc):  # made by an attempt whose reply was lost
                    raise
            found = self._find()
            log.info("created permission set %s (%s) for the migration's fields", self.name, found[0]["Id"])
        self._id = found[0]["Id"]
        user_id = self.sf.oauth2("userinfo")["user_id"]
        assigned = self.sf.query(f"SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = '{user_id}' "
                                 f"AND PermissionSetId = '{self._id}'")["records"]
        if not assigned:
            self.sf.PermissionSetAssignment.create({"AssigneeId": user_id, "PermissionSetId": self._id})
        return self._id

    def _find(self) -> list[dict[str, Any]]:
        return self.sf.query(f"SELECT Id FROM PermissionSet WHERE Name = '{self.name}'")["records"]

    def grant(self, sobject: str, field: str) -> None:
        """Queue Read + Edit on ``sobject.field`` (and on ``Event`` for a Task field); :meth:`flush` sends them."""
        for target in ACTIVITY_OBJECTS if sobject in ACTIVITY_OBJECTS else (sobject,):
            self._queued.append((sobject, target, field))

    def flush(self) -> None:
        """Send the queued grants, 200 to a call; raise naming every field whose grant was refused.

        ``allOrNone`` is off: a grant written by an attempt whose answer was lost comes back as
        ``DUPLICATE_VALUE`` on the resend, which means it is in place; an ``Event`` grant the org
        refuses (it has no Event object) is skipped, since the field lives on Task's ``Activity``.
        """
        queued, self._queued = self._queued, []
        if not queued:
            return
        parent = self.permission_set_id()
        refused = []
        for start in range(0, len(queued), COLLECTION_CAP):
            chunk = queued[start:start + COLLECTION_CAP]
            records = [{"attributes": {"type": "FieldPermissions"}, "ParentId": parent, "SobjectType": target,
                        "Field": f"{target}.{field}", "PermissionsRead": True, "PermissionsEdit": True}
                       for _, target, field in chunk]
            results = self.sf.restful("composite/sobjects", method="POST",
                                      json={"allOrNone": False, "records": records})
            for (sobject, target, field), result in zip(chunk, results, strict=True):
                codes = {e.get("statusCode") for e in result.get("errors") or ()}
                if result.get("success") or "DUPLICATE_VALUE" in codes:
                    continue  # granted now, or by an earlier attempt
                if target != sobject and codes & {"INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "INVALID_TYPE"}:
                    continue  # the org has no Event object
                messages = "; ".join(f"{e.get('statusCode')}: {e.get('message')}" for e in result.get("errors") or ())
                refused.append(f"{target}.{field} ({messages})")
        if refused:
            raise RuntimeError(f"Salesforce refused field-level access to {len(refused)} new field(s) on permission "
                               f"set {self.name}: {', '.join(refused)}")


def _codes(exc) -> set[str]:
    return {e.get("errorCode") for e in exc.content or () if isinstance(e, dict)}


def create_custom_field(sf, sobject: str, field: str, spec) -> str | None:
    if not field.endswith("__c"):
        raise UnsupportedFieldType(f"{sobject}.{field}: custom field API names end in __c")
    metadata = field_metadata(sobject, field, spec)
    try:
        result = sf.toolingexecute("sobjects/CustomField", method="POST",
                                   data={"FullName": f"{table_of(sobject)}.{field}", "Metadata": metadata})
    except SalesforceMalformedRequest as exc:
        if "DUPLICATE_DEVELOPER_NAME" in _codes(exc):
            # Created by an attempt whose reply was lost (or by hand): field-level security still
            # has to be granted, which the caller does next.
            log.warning("%s.%s exists already; granting access to it", sobject, field)
            return None
        raise
    if not isinstance(result, dict) or not result.get("success"):
        raise RuntimeError(f"Salesforce did not create {sobject}.{field}: {result}")
    return result["id"]


def add_picklist_values(sf, sobject: str, field: str, values: tuple[str, ...]) -> None:
    """Append values to a custom pick-list's value set (Tooling: read the metadata, PATCH it back)."""
    developer_name = field[:-3]
    rows = sf.toolingexecute("query/", params={
        "q": f"SELECT Id, TableEnumOrId FROM CustomField WHERE DeveloperName = '{developer_name}'"})["records"]
    candidates = [r for r in rows if r["TableEnumOrId"] == table_of(sobject)] or (rows if len(rows) == 1 else [])
    if not candidates:
        raise RuntimeError(f"Salesforce has no custom field {sobject}.{field} to add pick-list values to")
    tooling_id = candidates[0]["Id"]
    current = sf.toolingexecute(f"sobjects/CustomField/{tooling_id}")
    metadata = dict(current["Metadata"])
    value_set = dict(metadata.get("valueSet") or {})
    definition = dict(value_set.get("valueSetDefinition") or {})
    existing = list(definition.get("value") or [])
    have = {(v.get("fullName") or v.get("valueName") or "").lower() for v in existing}
    existing += [{"fullName": v, "label": v, "default": False} for v in values if v.lower() not in have]
    definition["value"] = existing
    value_set["valueSetDefinition"] = definition
    metadata["valueSet"] = value_set
    sf.toolingexecute(f"sobjects/CustomField/{tooling_id}", method="PATCH", data={"Metadata": metadata})
