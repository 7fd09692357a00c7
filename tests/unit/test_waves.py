"""Load waves: parents first, and one map a wave per destination object (a deterministic winner)."""

from __future__ import annotations

import pytest

from airflow_ascora_provider.destinations.manager import destinations
from airflow_ascora_provider.engine.runner import waves
from airflow_ascora_provider.mapping.spec import load_mapping
from airflow_ascora_provider.operators.migration import MAX_WAVES

NAMES = sorted(destinations())


def _mapping(maps: str):
    return load_mapping(f"destination: twenty\nkey_field: ascoraId\nmaps:\n{maps}")


def test_same_target_maps_take_successive_waves_in_mapping_order():
    mapping = _mapping("""
  company: {source: customer, target: company, when: {field: is_company, equals: true}, fields: {name: name}}
  person: {source: customer, target: person, when: {field: is_company, equals: false}, fields: {jobTitle: name}}
  enquiry: {source: enquiry, target: person, fields: {jobTitle: description}}
  contact:
    source: contact
    target: person
    fields: {companyId: {transform: lookup, from: customer_id, map: company}}
""")
    assert waves(mapping) == [["company", "person"], ["enquiry"], ["contact"]]


def test_a_bumped_map_takes_its_children_with_it():
    mapping = _mapping("""
  company: {source: customer, target: company, fields: {name: name}}
  site: {source: site, target: company, fields: {name: name}}
  note:
    source: note
    target: note
    fields: {siteId: {transform: lookup, from: entity_id, map: site}}
""")
    assert waves(mapping) == [["company"], ["site"], ["note"]]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_mappings_fit_the_dag_and_keep_parents_first(name):
    mapping = load_mapping(destinations()[name].default_mapping)
    plan = waves(mapping)
    assert 0 < len(plan) <= MAX_WAVES
    seen: set[str] = set()
    for wave in plan:
        targets = [mapping.maps[m].target for m in wave]
        assert len(targets) == len(set(targets)), (name, wave)
        for m in wave:
            assert mapping.maps[m].lookups() - {m} <= seen, (name, m)
        seen.update(wave)
    assert seen == set(mapping.maps)
