"""Mapping files: validation with located errors, content hashing, completion, transforms."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest
import yaml

from airflow_ascora_provider.destinations.twenty.plugin import TwentyDestination
from airflow_ascora_provider.mapping.complete import complete_mapping, mapping_summary, summary_markdown
from airflow_ascora_provider.mapping.spec import MappingError, load_mapping, mapping_hash
from airflow_ascora_provider.mapping.transforms import TRANSFORMS, TransformError
from airflow_ascora_provider.mapping.values import FullName, Money


@pytest.fixture
def twenty_doc():
    return yaml.safe_load(TwentyDestination.default_mapping.read_text())


def test_default_twenty_map_covers_every_seed_row(twenty_doc):
    mapping = load_mapping(twenty_doc)
    pairs = {(m.source, m.target) for m in mapping.maps.values()}
    # Seed rows: customer → people, company-type customer → company, site → custom Site, job → opportunity
    # (+ job status pick-list, quote and invoice fields), form fields → opportunity fields, notes → notes,
    # attachments → files, owners → workspace members.
    assert {("customer", "person"), ("customer", "company"), ("site", "site"), ("job", "opportunity"),
            ("note", "note"), ("attachment", "attachment"), ("job_section", "task")} <= pairs
    opportunity = mapping.maps["opportunity"]
    fields = {f.dest_field for f in opportunity.fields}
    assert {"jobStatus", "quoteAmount", "quoteStatus", "quoteNumber", "invoiceNumber", "invoiceAmount",
            "invoiceStatus", "ownerId", "siteId"} <= fields
    assert "form_fields" in opportunity.expand
    order = mapping.order()
    assert order.index("company") < order.index("person") < order.index("opportunity") < order.index("note")


def test_errors_name_the_place(twenty_doc):
    doc = copy.deepcopy(twenty_doc)
    doc["maps"]["company"]["fields"]["name"] = {"from": "nme"}
    doc["maps"]["person"]["source"] = "customr"
    doc["maps"]["opportunity"]["fields"]["jobStatus"]["transform"] = "magic"
    with pytest.raises(MappingError) as err:
        load_mapping(doc)
    text = str(err.value)
    assert "maps.company.fields.name: customer has no field 'nme'" in text
    assert "maps.person.source: unknown Ascora object 'customr'" in text
    assert "maps.opportunity.fields.jobStatus: unknown transform 'magic'" in text


def test_lookup_to_unknown_map_and_cycles_are_rejected(twenty_doc):
    doc = copy.deepcopy(twenty_doc)
    doc["maps"]["site"]["fields"]["companyId"]["map"] = "nowhere"
    with pytest.raises(MappingError, match="unknown map 'nowhere'"):
        load_mapping(doc)


def test_hash_depends_on_content_not_formatting(twenty_doc):
    text = TwentyDestination.default_mapping.read_text()
    reordered = dict(reversed(list(twenty_doc.items())))
    assert load_mapping(text).hash == load_mapping(reordered).hash == mapping_hash(twenty_doc)
    changed = copy.deepcopy(twenty_doc)
    changed["currency"] = "NZD"
    assert load_mapping(changed).hash != load_mapping(text).hash


def test_completion_adds_custom_and_form_fields_deterministically(twenty_doc):
    audit = {"custom_fields": {
        "job": {"Switchboard Type": {"inferred_type": "text", "samples": ["3 phase"]},
                "Roof Pitch": {"inferred_type": "number", "samples": ["22.5"]}},
        "form_response": {"SiteHazards": {"inferred_type": "text", "samples": ["dog"]}},
    }}
    base = load_mapping(twenty_doc)
    done = complete_mapping(base, audit, TwentyDestination.custom_field_name.__get__(object()))
    again = complete_mapping(base, audit, TwentyDestination.custom_field_name.__get__(object()))
    assert done.hash == again.hash
    # Completing the completed (approved) map again adds nothing: re-proposals keep the approval valid.
    assert complete_mapping(done, audit, TwentyDestination.custom_field_name.__get__(object())).hash == done.hash
    fields = {f.dest_field: f for f in done.maps["opportunity"].fields}
    assert fields["ascoraSwitchboardType"].options["key"] == "Switchboard Type"
    assert fields["ascoraRoofPitch"].create.type == "number"
    assert fields["formSitehazards"].create.help_text == "Ascora custom form field code {SiteHazards}"
    summary = mapping_summary(done)
    assert "opportunity" in summary_markdown(summary)


class _Ctx:
    currency = "AUD"

    def resolve(self, maps, source_id):
        return None

    def parents(self, map_name):
        return {}

    def owner(self, name):
        return None

    def related(self, object_name, key_field, key):
        return []


def _field(mapping, map_name, dest):
    return next(f for f in mapping.maps[map_name].fields if f.dest_field == dest)


def test_transforms(twenty_doc):
    mapping = load_mapping(twenty_doc)
    ctx = _Ctx()
    name = _field(mapping, "person", "name")
    assert TRANSFORMS["full_name"].apply({"first_name": None, "last_name": None, "name": "Jane Q Citizen"}, name, ctx) \
        == FullName("Jane Q", "Citizen")
    amount = _field(mapping, "opportunity", "amount")
    assert TRANSFORMS["currency"].apply({"total_ex_tax": Decimal("10.5")}, amount, ctx) == Money(Decimal("10.5"), "AUD")
    status = _field(mapping, "opportunity", "jobStatus")
    assert TRANSFORMS["value_map"].apply({"status": "Completed"}, status, ctx) == "COMPLETED"
    with pytest.raises(TransformError, match="no value-map entry for 'On Hold - Parts'"):
        TRANSFORMS["value_map"].apply({"status": "On Hold - Parts"}, status, ctx)
    parent = _field(mapping, "quote_line_item", "quoteId")
    with pytest.raises(TransformError, match="was not loaded"):
        TRANSFORMS["lookup"].apply({"quote_id": "q1"}, parent, ctx)
