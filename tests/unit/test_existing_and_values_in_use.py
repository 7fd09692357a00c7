"""Two mapping rules behind "staff roles as a pick-list on the User" (Salesforce seed) and "equipment type
as a dropdown" (Freshsales seed): maps that only update records the destination already has
(``existing: users``), and pick-lists whose values are the ones the audit found in use
(``create: {values_in_use: true}``)."""

from __future__ import annotations

import pytest

from airflow_ascora_provider.destinations.spec import DestField, DestObject
from airflow_ascora_provider.engine.schema import plan_schema
from airflow_ascora_provider.mapping.complete import complete_mapping
from airflow_ascora_provider.mapping.spec import MappingError, load_mapping

ROLE_MAP = {"destination": "salesforce", "key_field": "Ascora_Id__c", "maps": {
    "staff_role": {"source": "staff_user", "target": "User", "existing": "users", "fields": {
        "Staff_Role__c": {"from": "labour_role", "create": {"type": "picklist", "label": "Staff Role",
                                                            "options": ["Apprentice"], "values_in_use": True}}}}}}


def _doc(**changes):
    doc = {**ROLE_MAP, "maps": {"staff_role": {**ROLE_MAP["maps"]["staff_role"], **changes}}}
    return doc


def test_a_map_of_existing_users_has_no_key_field_and_must_read_staff():
    om = load_mapping(_doc()).maps["staff_role"]
    assert om.existing == "users" and om.key_field is None  # the user is the key, no Ascora id is written
    with pytest.raises(MappingError, match=r"maps\.staff_role\.existing: must be one of \['users'\]"):
        load_mapping(_doc(existing="accounts"))
    with pytest.raises(MappingError, match="the source must be staff_user, not customer"):
        load_mapping(_doc(source="customer", fields={"Description": {"from": "name"}}))


def test_completion_adds_the_values_in_use_after_the_listed_ones_and_never_drops_one():
    audit = {"picklists": {"staff_user": {"labour_role": {"in_use": {"Plumber": 3, "Electrician": 5},
                                                          "not_in_ascora_list": []}}}}
    done = complete_mapping(load_mapping(_doc()), audit)
    spec = done.maps["staff_role"].fields[0].create
    assert spec.options == ("Apprentice", "Electrician", "Plumber") and spec.values_in_use
    # A later audit (delta snapshot) where Plumber is no longer used adds Gasfitter and keeps Plumber.
    later = {"picklists": {"staff_user": {"labour_role": {"in_use": {"Gasfitter": 1}}}}}
    assert complete_mapping(done, later).maps["staff_role"].fields[0].create.options == (
        "Apprentice", "Electrician", "Plumber", "Gasfitter")


def _user(options=()):
    fields = {"Id": DestField("Id", "system")}
    if options is not None:
        fields["Staff_Role__c"] = DestField("Staff_Role__c", "picklist", custom=True, options=tuple(options))
    return {"User": DestObject("User", "User", fields=fields)}


def test_the_schema_plan_creates_the_pick_list_with_its_values_or_adds_the_missing_ones():
    audit = {"picklists": {"staff_user": {"labour_role": {"in_use": {"Plumber": 3}}}}}
    mapping = complete_mapping(load_mapping(_doc()), audit)
    created = plan_schema(mapping, _user(options=None), frozenset({"custom_field", "picklist_option"}))
    assert [(c.kind, c.field, c.spec.options) for c in created.changes] == [
        ("custom_field", "Staff_Role__c", ("Apprentice", "Plumber"))]
    grown = plan_schema(mapping, _user(options=("Apprentice",)), frozenset({"custom_field", "picklist_option"}))
    assert [(c.kind, c.spec) for c in grown.changes] == [("picklist_option", ("Plumber",))]
    assert not plan_schema(mapping, _user(options=("Plumber", "Apprentice")), frozenset()).changes


def test_a_new_pick_list_with_no_value_in_use_is_a_plan_problem_not_a_failed_api_call():
    doc = _doc()
    doc["maps"]["staff_role"]["fields"]["Staff_Role__c"]["create"].pop("options")
    mapping = complete_mapping(load_mapping(doc), {"picklists": {}})
    plan = plan_schema(mapping, _user(options=None), frozenset({"custom_field"}))
    assert plan.problems == ["maps.staff_role.fields.Staff_Role__c: no value of staff_user.labour_role is in use, "
                             "so the new pick-list would have no values; complete the mapping from the audit, list "
                             "'options', or remove the field"]


def test_the_audit_counts_an_open_list_without_calling_its_values_foreign(tmp_path):
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.sandbox.ascora import create_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.generate import generate_tenant
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    generate_tenant(tmp_path / "tenant", size=300, seed=3)
    snapshot = Snapshot(tmp_path / "staging", "s1")
    with ServedApp(create_app(tmp_path / "tenant")) as ascora:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                           enable_extensions=True)), snapshot)
    picklists = audit_snapshot(snapshot)["picklists"]
    kinds = picklists["equipment"]["name"]
    assert kinds["in_use"] and kinds["not_in_ascora_list"] == []
    assert sum(kinds["in_use"].values()) == snapshot.count("equipment")
    assert picklists["staff_user"]["labour_role"]["not_in_ascora_list"] == []
