"""The mapping approval gate: accept the proposal, approve an edit (pasted or uploaded), or reject.

The ledger keeps what was approved, by whom, when, its hash and whether it was edited in review.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from airflow_ascora_provider.mapping.spec import load_mapping

PROPOSAL = {"destination": "twenty", "maps": {"company": {"source": "customer", "target": "company",
                                                          "fields": {"name": "name"}}}}


@pytest.fixture
def gate(tmp_path, monkeypatch):
    from airflow_ascora_provider.hooks.ledger import LedgerHook, dispose_engines
    from airflow_ascora_provider.operators.migration import PROPOSED_MAPPING, MappingApprovalOperator

    monkeypatch.setenv("ASCORA_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    dispose_engines()
    ledger = LedgerHook().get_ledger()
    ledger.set_watermark("twenty", PROPOSED_MAPPING, load_mapping(PROPOSAL).to_yaml())
    yield MappingApprovalOperator(task_id="approve_mapping", destination="twenty", migration_run_id="run-7"), ledger
    dispose_engines()


def _edited(currency: str = "NZD") -> str:
    return load_mapping({**PROPOSAL, "currency": currency}).to_yaml()


def test_the_form_offers_a_pasted_or_an_uploaded_edit():
    from airflow_ascora_provider.operators.migration import MappingApprovalOperator

    op = MappingApprovalOperator(task_id="approve_mapping", destination="twenty")
    params = op.serialized_params
    assert set(params) == {"edited_mapping", "edited_mapping_uri"}
    assert params["edited_mapping"]["schema"]["format"] == "multiline"
    assert "propose_mapping" in op.body and "markdown" in op.body


def test_accepting_the_proposal_records_who_when_and_the_hash(gate):
    op, ledger = gate
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    op.on_approve({}, approved_by="Priya (ops)", params_input={"edited_mapping": "", "edited_mapping_uri": ""})
    record = ledger.approved_mapping("twenty")
    proposal = load_mapping(PROPOSAL)
    assert record["mapping_hash"] == proposal.hash and record["mapping_text"] == proposal.to_yaml()
    assert record["approved_by"] == "Priya (ops)" and record["source"] == "hitl"
    assert record["approved_at"].replace(tzinfo=None) >= before - dt.timedelta(seconds=1)
    assert record["note"] == f"proposal {proposal.hash[:12]} accepted"


def test_an_uploaded_edit_is_read_validated_and_noted(gate, tmp_path):
    op, ledger = gate
    upload = tmp_path / "edited.yaml"
    upload.write_text(_edited())
    op.on_approve({}, approved_by="Priya (ops)", params_input={"edited_mapping": "", "edited_mapping_uri": str(upload)})
    record = ledger.approved_mapping("twenty")
    assert record["mapping_hash"] == load_mapping(_edited()).hash
    assert record["note"] == f"edited in review (from {upload}); proposal was {load_mapping(PROPOSAL).hash[:12]}"


def test_a_pasted_edit_wins_over_the_proposal(gate):
    op, ledger = gate
    op.on_approve({}, approved_by="Sam", params_input={"edited_mapping": _edited("USD"), "edited_mapping_uri": ""})
    record = ledger.approved_mapping("twenty")
    assert record["mapping_hash"] == load_mapping(_edited("USD")).hash and record["note"].startswith("edited in review")


@pytest.mark.parametrize("params, error", [
    ({"edited_mapping": "x: [", "edited_mapping_uri": ""}, "YAML syntax"),
    ({"edited_mapping": "", "edited_mapping_uri": "/nowhere/edited.yaml"}, "does not exist"),
    ({"edited_mapping": "a", "edited_mapping_uri": "/tmp/b.yaml"}, "not both"),
])
def test_bad_edits_are_refused_before_anything_is_approved(gate, params, error):
    op, ledger = gate
    with pytest.raises(Exception, match=error):
        op.on_approve({}, approved_by="Sam", params_input=params)
    assert ledger.approved_mapping("twenty") is None


def test_an_edit_for_another_destination_is_refused(gate):
    op, ledger = gate
    other = load_mapping({**PROPOSAL, "destination": "salesforce"}).to_yaml()
    with pytest.raises(ValueError, match="is for 'salesforce', not 'twenty'"):
        op.on_approve({}, approved_by="Sam", params_input={"edited_mapping": other, "edited_mapping_uri": ""})
    assert ledger.approved_mapping("twenty") is None


def test_rejecting_records_who_and_stops_the_run(gate):
    from airflow.providers.standard.exceptions import HITLRejectException

    from airflow_ascora_provider.operators.migration import MAPPING_REJECTED

    op, ledger = gate
    event = {"chosen_options": ["Reject"], "params_input": {"edited_mapping": "", "edited_mapping_uri": ""},
             "responded_at": dt.datetime.now(dt.UTC), "responded_by_user": {"id": "3", "name": "Priya (ops)"}}
    with pytest.raises(HITLRejectException):
        op.execute_complete({"ti": None, "task": op}, event)
    rejection = json.loads(ledger.get_watermark("twenty", MAPPING_REJECTED))
    assert rejection["rejected_by"] == "Priya (ops)" and rejection["run_id"] == "run-7"
    assert ledger.approved_mapping("twenty") is None


def test_auto_approve_still_approves_without_asking(gate):
    op, ledger = gate
    result = op.execute({"params": {"auto_approve": True}})
    assert result["auto"] is True
    record = ledger.approved_mapping("twenty")
    assert record["approved_by"] == "auto_approve" and record["source"] == "auto_approve"
