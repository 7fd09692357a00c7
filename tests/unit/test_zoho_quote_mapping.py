"""The mapping features behind Zoho's native quotes: ``requires_object`` / ``unless_object`` decided
when the mapping is completed against the described destination, and the ``related_rows`` transform
(a quote's line items as rows, products looked up through the crosswalk)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from airflow_ascora_provider.mapping.complete import complete_mapping, mapping_summary, summary_markdown
from airflow_ascora_provider.mapping.spec import MappingError, load_mapping
from airflow_ascora_provider.mapping.transforms import TRANSFORMS, TransformError, related_row_lookups
from airflow_ascora_provider.mapping.values import DestRef

ZOHO_MAPPING = Path(__file__).resolve().parents[2] / "airflow_ascora_provider/destinations/zoho/mapping.yaml"
NO_AUDIT: dict = {"custom_fields": {}}


def _base(**quote_map) -> dict:
    return {"destination": "x", "maps": {
        "account": {"source": "customer", "target": "Accounts", "fields": {"Name": "name"}},
        "line_product": {"source": "quote_line_item", "target": "Products", "requires_object": "Quotes",
                         "fields": {"Name": "description"}},
        "line_note": {"source": "quote_line_item", "target": "Notes", "unless_object": "Quotes",
                      "fields": {"Body": "description"}},
        "quote": {"source": "quote", "target": "Quotes", "requires_object": "Quotes",
                  "fields": {"Subject": "name", "Items": {
                      "transform": "related_rows", "object": "quote_line_item", "by": "quote_id",
                      "order_by": "line_number", "label_by": "line_number",
                      "columns": {"Product": {"transform": "lookup", "from": "id", "map": "line_product",
                                             "required": True},
                                  "Quantity": {"transform": "number", "from": ["quantity", "hours"], "default": 1},
                                  "Note": {"from": "description"}}}, **quote_map}},
    }}


def test_the_destination_objects_decide_which_maps_stay_and_the_dropped_ones_are_listed():
    mapping = load_mapping(_base())
    assert mapping.order().index("line_product") < mapping.order().index("quote")  # rows' lookups order maps

    with_quotes = complete_mapping(mapping, NO_AUDIT, existing_fields={"Accounts": set(), "Quotes": set(),
                                                                      "Products": set(), "Notes": set()})
    assert set(with_quotes.maps) == {"account", "line_product", "quote"}
    assert with_quotes.document["dropped_maps"] == {
        "line_note": "quote_line_item → Notes: the destination has Quotes, another map is used"}

    without = complete_mapping(mapping, NO_AUDIT, existing_fields={"Accounts": set(), "Notes": set()})
    assert set(without.maps) == {"account", "line_note"}
    assert set(without.document["dropped_maps"]) == {"line_product", "quote"}
    summary = mapping_summary(without)
    assert summary["dropped_maps"]["quote"] == "quote → Quotes: the destination has no Quotes"
    assert "~~quote~~" in summary_markdown(summary)
    # Completing the approved (completed) file again keeps the record of what was dropped.
    again = complete_mapping(load_mapping(without.document), NO_AUDIT, existing_fields={"Accounts": set()})
    assert set(again.document["dropped_maps"]) == {"line_product", "quote"}

    # No described destination: nothing to decide on, every map stays.
    assert set(complete_mapping(mapping, NO_AUDIT).maps) == set(mapping.maps)


def test_the_zoho_default_mapping_by_edition():
    mapping = load_mapping(ZOHO_MAPPING)
    professional = complete_mapping(mapping, NO_AUDIT, existing_fields={"Quotes": set(), "Products": set()})
    assert {"native_quote", "quote_product"} <= set(professional.maps) and "quote_line" not in professional.maps
    standard = complete_mapping(mapping, NO_AUDIT, existing_fields={"Products": set()})
    assert "quote_line" in standard.maps and not {"native_quote", "quote_product"} & set(standard.maps)


def test_any_of_several_objects_decides_and_a_dropped_map_leaves_the_lookup_lists():
    document = {"destination": "x", "maps": {
        "account": {"source": "customer", "target": "Account", "fields": {"Name": "name"}},
        "invoice": {"source": "invoice", "target": "Invoice__c", "unless_object": ["SBQQ__Quote__c", "FinServ__X__c"],
                    "fields": {"Name": "invoice_number"}},
        "invoice_order": {"source": "invoice", "target": "Order", "requires_object": ["SBQQ__Quote__c", "FinServ__X__c"],
                          "fields": {"OrderReferenceNumber": "invoice_number"}},
        "note": {"source": "note", "target": "Task", "fields": {"WhatId": {
            "transform": "attach", "from": ["entity_id"], "by_type": {"field": "entity_type", "maps": {
                "Customer": "account", "Invoice": ["invoice", "invoice_order"]}}}}},
    }}
    fsc = complete_mapping(load_mapping(document), NO_AUDIT, existing_fields={"Account": set(), "FinServ__X__c": set()})
    assert "invoice" not in fsc.maps and "invoice_order" in fsc.maps
    assert fsc.document["dropped_maps"]["invoice"] == "invoice → Invoice__c: the destination has FinServ__X__c, another map is used"
    assert fsc.maps["note"].fields[0].options["by_type"]["maps"]["Invoice"] == ["invoice_order"]
    plain = complete_mapping(load_mapping(document), NO_AUDIT, existing_fields={"Account": set(), "Invoice__c": set()})
    assert plain.document["dropped_maps"]["invoice_order"] == (
        "invoice → Order: the destination has no SBQQ__Quote__c or FinServ__X__c")
    assert plain.maps["note"].fields[0].options["by_type"]["maps"]["Invoice"] == ["invoice"]
    # A lookup naming only a dropped map is a mapping error, not a silently unlinked record.
    document["maps"]["note"]["fields"]["WhatId"]["by_type"]["maps"]["Invoice"] = "invoice_order"
    with pytest.raises(MappingError, match="unknown map 'invoice_order'"):
        complete_mapping(load_mapping(document), NO_AUDIT, existing_fields={"Account": set()})


@pytest.mark.parametrize("change, problem", [
    ({"requires_object": []}, "requires_object: must name a destination object or a list of them"),
    ({"requires_object": ["Quotes", 3]}, "requires_object: must name a destination object or a list of them"),
    ({"unless_object": ""}, "unless_object: must name a destination object or a list of them"),
])
def test_object_keys_must_name_objects(change, problem):
    document = _base()
    document["maps"]["quote"].update(change)
    with pytest.raises(MappingError, match=problem):
        load_mapping(document)


@pytest.mark.parametrize("items, problem", [
    ({"by": "nope"}, "related_rows needs 'by'"),
    ({"columns": {}}, "related_rows needs 'columns'"),
    ({"columns": {"Q": {"from": "no_such_field"}}}, "quote_line_item has no field 'no_such_field'"),
    ({"columns": {"P": {"transform": "lookup", "from": "id", "map": "ghost"}}}, "unknown map 'ghost'"),
    ({"order_by": "colour"}, "quote_line_item has no field 'colour' \\(order_by\\)"),
])
def test_related_rows_is_checked_when_the_mapping_loads(items, problem):
    document = _base()
    document["maps"]["quote"]["fields"]["Items"].update(items)
    with pytest.raises(MappingError, match=problem):
        load_mapping(document)


class _Ctx:
    currency = "AUD"

    def __init__(self, rows, refs):
        self.rows = rows
        self.refs = refs

    def related(self, object_name, key_field, key):
        return [r for r in self.rows if r.get(key_field) == key]

    def resolve(self, maps, source_id):
        return next((self.refs[(m, source_id)] for m in maps if (m, source_id) in self.refs), None)

    def parents(self, map_name):
        return {sid: ref for (name, sid), ref in self.refs.items() if name == map_name}

    def owner(self, name):
        return None


LINES = [{"id": "l2", "quote_id": "q1", "line_number": 2, "quantity": None, "hours": Decimal("1.5"),
          "description": None},
         {"id": "l1", "quote_id": "q1", "line_number": 1, "quantity": Decimal("3"), "hours": None,
          "description": "GPO"},
         {"id": "x", "quote_id": "q2", "line_number": 1, "quantity": Decimal("1"), "description": "other"}]


def test_related_rows_turns_each_related_row_into_columns_in_order():
    fm = next(f for f in load_mapping(_base()).maps["quote"].fields if f.dest_field == "Items")
    refs = {("line_product", "l1"): DestRef("Products", "p1"), ("line_product", "l2"): DestRef("Products", "p2")}
    ctx = _Ctx(LINES, refs)
    assert sorted(related_row_lookups({"id": "q1"}, fm, ctx.related)) == [("line_product", "l1"),
                                                                          ("line_product", "l2")]
    rows = TRANSFORMS["related_rows"].apply({"id": "q1"}, fm, ctx)
    assert rows == ({"Product": DestRef("Products", "p1"), "Quantity": Decimal("3"), "Note": "GPO"},
                    {"Product": DestRef("Products", "p2"), "Quantity": Decimal("1.5")})  # empty Note left out
    assert TRANSFORMS["related_rows"].apply({"id": "q9"}, fm, ctx) is None

    del refs[("line_product", "l2")]  # that line's product was not loaded (quarantined)
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["related_rows"].apply({"id": "q1"}, fm, ctx)
    assert caught.value.field == "Items[2].Product"
    assert "quote_line_item l2" in caught.value.reason and "was not loaded" in caught.value.reason


def test_the_proposal_decides_nothing_for_dropped_maps_and_lists_them():
    from airflow_ascora_provider.destinations.spec import DestField, DestObject
    from airflow_ascora_provider.mapping.propose import propose_mapping, proposal_markdown

    described = {name: DestObject(name, name, fields={"Name": DestField("Name", "text")})
                 for name in ("Accounts", "Notes")}
    proposal = propose_mapping(load_mapping(_base()), NO_AUDIT, described, embedder=None)
    assert set(proposal.mapping.maps) == {"account", "line_note"}
    assert {d.map for d in proposal.decisions} <= {"account", "line_note"}
    assert "~~quote~~" in proposal_markdown(proposal)
