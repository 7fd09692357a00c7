"""The mapping proposer: names, types, values, value maps, composites, and never overriding a human."""

from __future__ import annotations

import pytest

from airflow_ascora_provider.destinations.spec import DestField, DestObject
from airflow_ascora_provider.mapping.evidence import ValueProfile, type_evidence
from airflow_ascora_provider.mapping.picklists import choose_option, option_value
from airflow_ascora_provider.mapping.propose import proposal_markdown, propose_mapping
from airflow_ascora_provider.mapping.similarity import name_similarity, profile, tokens
from airflow_ascora_provider.mapping.spec import load_mapping

SF_STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Proposal/Price Quote", "Negotiation/Review",
             "Closed Won", "Closed Lost")


def _obj(object_name: str, **fields) -> DestObject:
    out = {}
    for fname, spec in fields.items():
        spec = {"type": spec} if isinstance(spec, str) else spec
        out[fname] = DestField(fname, spec["type"], options=tuple(spec.get("options", ())),
                               read_only=spec.get("read_only", False), custom=spec.get("custom", False))
    return DestObject(object_name, object_name, fields=out)


def _base(source: str, target: str, fields: dict | None = None, **extra) -> object:
    return load_mapping({"destination": "crm", "maps": {"m": {"source": source, "target": target,
                                                              "unmapped": "custom_field", "fields": fields or {},
                                                              **extra}}})


AUDIT = {
    "custom_fields": {
        "customer": {
            "Contact Email": {"inferred_type": "email", "non_empty": 40, "distinct_values": None,
                              "samples": ["a@x.example", "b@y.example"]},
            "Site Size Sqm": {"inferred_type": "number", "non_empty": 40, "distinct_values": None,
                              "samples": ["120", "85.5"]},
            "Payment Terms": {"inferred_type": "picklist", "non_empty": 40,
                              "distinct_values": ["14 days", "30 days EOM", "COD"], "samples": ["COD"]},
        },
    },
    "picklists": {"job": {"status": {"in_use": {"Booked": 3, "Completed": 5, "On Hold - Parts": 2},
                                     "not_in_ascora_list": ["On Hold - Parts"]}}},
}


# -- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("BillingPostalCode", ("billing", "postal", "code")),
    ("address1_stateorprovince", ("address", "1", "state", "or", "province")),
    ("emailaddress1", ("email", "address", "1")),
    ("cf_site_type", ("cf", "site", "type")),
    ("Job_Status__c", ("job", "status", "c")),
])
def test_names_are_split_into_words(name, words):
    assert tokens(name) == words


def test_address_roles_pair_main_with_billing_and_postal_with_shipping():
    main, postal = profile("postcode", ("customer",)), profile("postal_postcode", ("customer",))
    billing, shipping = profile("BillingPostalCode", ("account",)), profile("ShippingPostalCode", ("account",))
    assert name_similarity(main, billing)[0] > name_similarity(main, shipping)[0]
    assert name_similarity(postal, shipping)[0] > name_similarity(postal, billing)[0]
    assert name_similarity(main, profile("Billing_Code", ("accounts",)))[0] >= 0.8  # Zoho's postcode
    assert name_similarity(profile("suburb"), profile("address1_city"))[0] == 1.0


# -- values ---------------------------------------------------------------------------------------

def test_value_evidence_judges_each_destination_type():
    emails = ValueProfile(["a@x.example", "b@y.example", "not an e-mail"])
    assert type_evidence(emails, "email") == pytest.approx(2 / 3)
    assert type_evidence(ValueProfile(["2026-01-02", "03/04/2025"]), "date") == 1.0
    assert type_evidence(ValueProfile(["12.50", "abc"]), "currency") == 0.5
    assert type_evidence(ValueProfile([]), "email") is None


@pytest.mark.parametrize("value, options, expected", [
    ("In Progress", ("NEW", "IN_PROGRESS", "DONE"), "IN_PROGRESS"),
    ("Completed", SF_STAGES, "Closed Won"),
    ("Sent To Customer", SF_STAGES, "Proposal/Price Quote"),
    ("Lost", SF_STAGES, "Closed Lost"),
    ("On Hold - Parts", ("BOOKED", "DEFERRED", "COMPLETED"), "DEFERRED"),
    ("Zebra", SF_STAGES, None),
])
def test_pick_list_values_find_the_option_that_means_the_same(value, options, expected):
    assert choose_option(value, options).option == expected


def test_new_options_use_api_safe_values():
    assert option_value("Fixed-Price") == "FIXED_PRICE" and option_value("30 days EOM") == "30_DAYS_EOM"


# -- the proposer ---------------------------------------------------------------------------------

def test_matches_by_name_type_and_values_with_reasons():
    described = {"Contact": _obj("Contact", FirstName="text", LastName="text", Email="email", Phone="phone",
                                 MobilePhone="phone", Fax="phone", CreatedDate="datetime",
                                 Birthdate="date", Description="long_text")}
    proposal = propose_mapping(_base("contact", "Contact"), {}, described, embedder=None)
    matches = {d.source: d for d in proposal.by_action("match")}
    assert {s: d.dest for s, d in matches.items()} == {
        "first_name": "FirstName", "last_name": "LastName", "email": "Email", "phone": "Phone",
        "mobile": "MobilePhone", "fax": "Fax"}
    assert matches["email"].transform == "email" and matches["phone"].transform == "phone"
    assert all(d.confidence >= 0.75 and "same meaning" in d.reason for d in matches.values())
    fields = proposal.mapping.maps["m"].fields
    assert {f.dest_field for f in fields} >= {"FirstName", "Email"}
    assert not any(f.dest_field == "CreatedDate" for f in fields)  # audit timestamps are the CRM's


def test_composites_full_name_address_and_a_plural_phones_field():
    described = {"person": _obj("person", name="full_name", emails="email", phones="phone", address="address",
                                city="text")}
    proposal = propose_mapping(_base("customer", "person"), {}, described, embedder=None)
    fields = {f.dest_field: f for f in proposal.mapping.maps["m"].fields}
    assert fields["name"].transform == "full_name" and fields["name"].sources == ("first_name", "last_name")
    assert fields["address"].transform == "address"
    assert fields["address"].sources[:4] == ("address_line1", "address_line2", "suburb", "state")
    assert fields["phones"].transform == "phone" and set(fields["phones"].sources) == {"phone", "mobile"}
    assert "fax" not in fields["phones"].sources  # contact has a fax; customer does not, but never a fax
    assert fields["emails"].sources == ("email",)


def test_custom_fields_go_through_json_key_only_where_the_values_fit():
    described = {"Account": _obj("Account", Website="url", SiteSizeSqm="number", ContactEmail="text",
                                 PaymentTerms={"type": "picklist", "options": ["COD", "14 days"]})}
    proposal = propose_mapping(_base("customer", "Account", expand=["custom_fields"]), AUDIT, described,
                               embedder=None)
    matches = {d.source: d for d in proposal.by_action("match")}
    size = next(f for f in proposal.mapping.maps["m"].fields if f.dest_field == "SiteSizeSqm")
    assert size.transform == "json_key" and size.options == {"key": "Site Size Sqm", "as": "number"}
    assert matches["custom_fields[Contact Email]"].dest == "ContactEmail"
    # "30 days EOM" is not an option: a json_key value cannot be mapped, so no match into the pick-list
    assert "custom_fields[Payment Terms]" not in matches
    created = {d.source: d for d in proposal.by_action("create")}
    assert created["custom_fields[Payment Terms]"].dest_type == "text"


def test_pick_list_match_gets_a_value_map_and_unmatched_fields_get_typed_custom_fields():
    described = {"Opportunity": _obj("Opportunity", Name="text", Status={"type": "picklist", "options": SF_STAGES},
                                     Amount="currency", CloseDate="date")}
    base = _base("job", "Opportunity", skip={"total_tax": "x", "total_inc_tax": "x"})
    proposal = propose_mapping(base, AUDIT, described, embedder=None)
    fields = {f.dest_field: f for f in proposal.mapping.maps["m"].fields}
    assert fields["Status"].transform == "value_map"
    assert fields["Status"].options["values"]["Completed"] == "Closed Won"
    assert "On Hold - Parts" not in fields["Status"].options["values"]  # no stage of the pipeline fits
    assert fields["Amount"].transform == "currency" and fields["Amount"].sources == ("total_ex_tax",)
    assert fields["CloseDate"].sources == ("completed_date",) and fields["CloseDate"].transform == "date"
    # Ascora pick-list without a home: a pick-list of its own; unmatched money would be currency
    pricing = next(f for f in fields.values() if f.sources == ("pricing_method",))
    assert pricing.create.type == "picklist" and pricing.options["values"]["FIXED-PRICE"] == "FIXED_PRICE"
    priority = next(f for f in fields.values() if f.sources == ("priority",))
    assert priority.create.type == "text" and priority.transform == "copy"  # completion's type keeps every value
    assert any(v.value == "Completed" and v.option == "Closed Won" for v in proposal.values)


def test_never_overrides_the_baseline_and_fills_only_value_map_gaps():
    described = {"Opportunity": _obj("Opportunity", Name="text", Phone="phone",
                                     JobStatus={"type": "picklist", "options": ["BOOKED", "DEFERRED", "COMPLETED"],
                                                "custom": True})}
    baseline = {"Name": {"from": "job_number"},  # a human chose the job number as the name
                "JobStatus": {"transform": "value_map", "from": "status",
                              "values": {"Booked": "BOOKED", "Completed": "COMPLETED"}},
                "Stage": {"transform": "value_map", "from": "status", "default": "COMPLETED",
                          "values": {"Booked": "BOOKED"}}}
    base = _base("job", "Opportunity", baseline)
    proposal = propose_mapping(base, AUDIT, described, embedder=None)
    doc = proposal.mapping.document["maps"]["m"]["fields"]
    assert doc["Name"] == {"from": "job_number"}
    assert doc["JobStatus"]["values"] == {"Booked": "BOOKED", "Completed": "COMPLETED", "On Hold - Parts": "DEFERRED"}
    assert doc["Stage"]["values"] == {"Booked": "BOOKED"}  # it has a default: the human's fallback stands
    # a map whose condition keeps "On Hold - Parts" out gets no entry for it
    only_done = propose_mapping(_base("job", "Opportunity", baseline, when={"field": "status", "in": ["Completed"]}),
                                AUDIT, described, embedder=None)
    assert "On Hold - Parts" not in only_done.mapping.document["maps"]["m"]["fields"]["JobStatus"]["values"]
    kept = {d.dest for d in proposal.by_action("keep")}
    assert kept == {"Name", "JobStatus", "Stage"}
    assert not any(d.dest in kept for d in proposal.by_action("match"))


def test_re_proposing_the_approved_map_changes_nothing():
    described = {"Account": _obj("Account", Name="text", Phone="phone", BillingCity="text")}
    first = propose_mapping(_base("customer", "Account", expand=["custom_fields"]), AUDIT, described, embedder=None)
    again = propose_mapping(first.mapping, AUDIT, described, embedder=None)
    assert again.mapping.hash == first.mapping.hash
    assert again.stats()["matched"] == again.stats()["created"] == 0


class _Encoder:
    """Embeds a few trade words so that "sparky" and "electrician" mean the same."""

    VOCAB = ("electric", "roof", "phone")

    def encode(self, sentences):
        out = []
        for s in sentences:
            low = s.lower()
            out.append([float(any(w in low for w in ("sparky", "electrician", "electric"))),
                        float("roof" in low), float("phone" in low), 0.1])
        return out


def test_an_embedding_model_adds_meaning_the_vocabulary_lacks():
    from airflow_ascora_provider.mapping.embeddings import EmbeddingSimilarity

    audit = {"custom_fields": {"customer": {"Sparky": {"inferred_type": "text", "non_empty": 5,
                                                       "distinct_values": None, "samples": ["Dave"]}}}}
    described = {"Account": _obj("Account", Electrician="text", Roofer="text")}
    base = _base("customer", "Account", expand=["custom_fields"])
    plain = propose_mapping(base, audit, described, embedder=None)
    assert "custom_fields[Sparky]" not in {d.source for d in plain.by_action("match")}
    model = EmbeddingSimilarity(_Encoder(), "test encoder")
    meaning = propose_mapping(base, audit, described, embedder=model)
    match = next(d for d in meaning.by_action("match") if d.source == "custom_fields[Sparky]")
    assert match.dest == "Electrician" and "language model" in match.reason
    assert meaning.embedder == "test encoder"


def test_the_packaged_model_is_optional_and_can_be_switched_off(monkeypatch):
    from airflow_ascora_provider.mapping import embeddings

    embeddings.load_packaged_model.cache_clear()
    monkeypatch.setenv(embeddings.ENV_DISABLE, "off")
    assert embeddings.load_packaged_model() is None
    embeddings.load_packaged_model.cache_clear()
    monkeypatch.delenv(embeddings.ENV_DISABLE)
    monkeypatch.setitem(__import__("sys").modules, embeddings.MODEL_PACKAGE, None)  # not installed
    assert embeddings.load_packaged_model() is None
    embeddings.load_packaged_model.cache_clear()


def test_review_markdown_is_compact_and_links_out():
    described = {"Contact": _obj("Contact", FirstName="text", LastName="text", Title="text", Fax="phone")}
    proposal = propose_mapping(_base("contact", "Contact"), {}, described, embedder=None)
    deal = propose_mapping(_base("job", "Deal"), {}, {"Deal": _obj("Deal", Value="currency")}, embedder=None)
    value = next(d for d in deal.by_action("match") if d.dest == "Value")
    assert value.source == "total_ex_tax" and value.low  # "value" only loosely means an amount
    assert any(item.startswith("m.Value ← total_ex_tax") for item in deal.low_confidence())
    assert "Low-confidence fields" in proposal_markdown(deal)
    text = proposal_markdown(proposal, "s3://bucket/reports/r1/mapping_proposal.html",
                             "http://airflow/ascora-migrations/runs/r1")
    assert "| contact.first_name" not in text  # maps are named, not dotted
    assert "| m | first_name | FirstName |" in text
    assert "Low-confidence fields" not in text
    assert "[full proposal report](s3://bucket/reports/r1/mapping_proposal.html)" in text
    assert "[migration reports page](http://airflow/ascora-migrations/runs/r1)" in text
    assert len(text) < 4000
