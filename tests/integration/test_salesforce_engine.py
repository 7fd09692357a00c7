"""The engine with the Salesforce plugin against the emulators, without Airflow in the way.

* A worker killed after Salesforce accepted a batch but before the ledger heard of it, and a network
  that loses replies and cuts batches short: the retries adopt or upsert what was written, nothing is
  duplicated, reconciliation finds nothing missing and rollback leaves the org as it was.
* The admin's alternatives to the default map (docs/destinations/salesforce.md): invoices as Orders,
  quote lines as Opportunity Products, sites as the Account's shipping address, and record types per
  job type. Each loads, reconciles and rolls back.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from airflow_ascora_provider.sandbox.emulator import FaultPlan
from tests.conftest import tenant_members
from tests.integration.test_salesforce_plugin import serve_org

def _default_mapping() -> dict:
    from airflow_ascora_provider.destinations.salesforce.plugin import SalesforceDestination

    return yaml.safe_load(SalesforceDestination.default_mapping.read_text())


def _setup(tenant, tmp_path, monkeypatch, mapping=None, admin=None, **org_options):
    """Extract, complete the mapping, let the "admin" prepare the org, apply the schema, approve, resolve users.

    ``mapping``: a mapping document, or a function of the org's state returning one (for ids the admin
    looks up in the org, such as a price book entry).
    """
    from airflow_ascora_provider.destinations.salesforce.plugin import SalesforceDestination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for, require_schema_ready
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    ascora = ServedApp(ascora_app(tenant)).start()
    salesforce = serve_org(tmp_path, monkeypatch, users=tenant_members(tenant), **org_options)
    if admin:
        admin(salesforce.app.state.salesforce)
    if callable(mapping):
        mapping = mapping(salesforce.app.state.salesforce)
    snapshot = Snapshot(tmp_path / "staging", "s1")
    extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key", enable_extensions=True)),
            snapshot)
    audit = audit_snapshot(snapshot)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.migrate()
    dest = SalesforceDestination()
    described = dest.describe_schema()
    mapping = complete_mapping(load_mapping(mapping or _default_mapping()), audit, dest.custom_field_name,
                               {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()})
    apply_schema(dest, plan_for(mapping, dest))
    require_schema_ready(mapping, dest)
    ledger.approve_mapping("salesforce", mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                           approved_by="test", source="cli")
    ctx = MigrationContext("run-1", "salesforce", ledger, str(tmp_path / "staging"), "s1", mapping,
                           fallback_owner_email="owner@example.com")
    ctx.use_destination(dest)
    resolve_users(ctx)
    ledger.start_run("run-1", destination="salesforce", kind="full", mapping_hash=mapping.hash)
    return ctx, ascora, salesforce


class _DiesAfterWrite:
    """Wraps the ledger: the Nth record_writes call raises, as if the worker was killed right then."""

    def __init__(self, ledger, die_on_call: int):
        self._ledger = ledger
        self._calls = 0
        self._die = die_on_call

    def record_writes(self, *args, **kwargs):
        self._calls += 1
        if self._calls == self._die:
            raise SystemExit("worker killed between the Salesforce write and the ledger write")
        return self._ledger.record_writes(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ledger, name)


def _data(org) -> dict[str, list[dict]]:
    return org.app.state.salesforce.snapshot()["records"]


def _assert_no_duplicates(org) -> None:
    for name, rows in _data(org).items():
        keys = [r["Ascora_Id__c"].lower() for r in rows if r.get("Ascora_Id__c")]
        assert len(keys) == len(set(keys)), f"{name} holds an Ascora record twice"


def _load_reconcile_rollback(ctx, org, before, while_loaded=None) -> dict:
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    load_everything(ctx)
    result = reconcile(ctx, verify="all")
    assert result["totals"]["missing"] == 0, result["objects"]
    assert result["ok"], {m: c for m, c in result["content"].items() if c["mismatch"] or c["missing"]}
    again = load_everything(ctx)
    assert all(s.created == s.updated == 0 for s in again.values()), "a re-run wrote again"
    if while_loaded:
        while_loaded(_data(org))
    summary = rollback_run(ctx.ledger, ctx.destination, "salesforce", "run-1", "run-1__rollback")
    assert summary["complete"], summary["failures"]
    assert _data(org) == before
    return result


def test_killed_worker_and_lossy_network_leave_no_duplicates_and_roll_back_exactly(small_tenant, tmp_path,
                                                                                   monkeypatch):
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, org = _setup(small_tenant, tmp_path, monkeypatch)
    try:
        before = _data(org)
        real = ctx.ledger
        for die_on in (2, 7):  # two crashes at different points of the load
            ctx.ledger = _DiesAfterWrite(real, die_on)
            with pytest.raises(SystemExit):
                load_everything(ctx)
        ctx.ledger = real
        assert real.pending_intents("salesforce"), "the crash must leave intents behind"
        # The retry runs on a network that loses replies after the write and cuts batches short.
        org.control.set_faults(FaultPlan(rate_lost_reply=0.2, rate_partial=0.3, rate_5xx=0.05, seed=1,
                                         retry_after="0", paths=["/services/data/v62.0/composite"]))
        load_everything(ctx)
        org.control.set_faults(FaultPlan())
        counters = org.control.counters
        assert counters["lost_reply"] and counters["partial"], counters
        assert not real.pending_intents("salesforce")
        _assert_no_duplicates(org)
        _load_reconcile_rollback(ctx, org, before)
    finally:
        ctx.close()
        ascora.stop()
        org.stop()


def _rows(tenant, resource: str) -> list[dict]:
    return [json.loads(line) for line in (tenant / "api" / f"{resource}.jsonl").read_text().splitlines() if line]


def _job_types(tenant) -> list[str]:
    return sorted({(r.get("jobType") or {}).get("name") for r in _rows(tenant, "jobs")} - {None})


def _developer_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def _alternative_mapping(tenant, entry_id: str) -> dict:
    """The default map with every alternative of docs/destinations/salesforce.md switched on."""
    doc = copy.deepcopy(_default_mapping())
    maps = doc["maps"]
    # Invoices → Order in an org that uses Orders without CPQ or FSC: the invoice_order map is chosen
    # whenever the org has Order (completion drops the Invoice__c map and its place in lookups).
    maps["invoice"]["unless_object"] = "Order"
    maps["invoice_order"]["requires_object"] = "Order"
    # Quote lines → Opportunity Products under one price book entry the admin chose.
    maps["quote_line_item"] = {
        "source": "quote_line_item", "target": "OpportunityLineItem", "unmapped": "skip", "fields": {
            "OpportunityId": {"transform": "lookup", "from": "quote_id", "map": "quote", "required": True},
            "PricebookEntryId": {"transform": "constant", "value": entry_id},
            "Quantity": {"transform": "number", "from": "quantity", "required": True},
            "UnitPrice": {"transform": "currency", "from": "unit_sell_ex_tax"},
            "Description": {"transform": "template", "template": "{part_number}"},
            "Ascora_Id__c": {"from": "id", "create": {"type": "text", "label": "Ascora ID", "unique": True}}}}
    doc["custom_objects"] = {}
    # Sites → the customer Account's shipping address (the first site) and a list of all sites.
    del maps["site"]
    doc["not_migrated"]["site"] = "the first site is the Account's shipping address; all are in Ascora_Sites__c"
    account = maps["account"]["fields"]
    del account["ShippingAddress"]
    for part, source in (("Street", "address_line1"), ("City", "suburb"), ("State", "state"),
                         ("PostalCode", "postcode"), ("Country", "country")):
        account[f"Shipping{part}"] = {"transform": "related", "object": "site", "by": "billing_customer_id",
                                      "field": source, "aggregate": "first"}
    account["Ascora_Sites__c"] = {"transform": "related", "object": "site", "by": "billing_customer_id",
                                  "field": "name", "aggregate": "join",
                                  "create": {"type": "long_text", "label": "Sites"}}
    maps["account"]["skip"].update({k: "in the shipping address" for k in (
        "address_line1", "address_line2", "suburb", "state", "postcode", "country")})
    maps["contact"]["fields"]["AccountId"]["map"] = "account"
    for name in ("opportunity", "quote", "equipment"):
        maps[name]["fields"].pop("Site__c")
        maps[name].setdefault("skip", {})["site_id"] = "sites are addresses on the Account"
    for name, field in (("note", "RelatedTo"), ("attachment", "FirstPublishLocationId")):
        maps[name]["fields"][field]["by_type"]["maps"]["Site"] = []
    # Record types per job type (the admin created them), chosen by the job's type.
    maps["opportunity"]["fields"]["RecordTypeId"] = {
        "transform": "value_map", "from": "job_type_name", "default": "Other",
        "values": {t: _developer_name(t) for t in _job_types(tenant)}}
    return doc


def test_the_admins_alternative_maps_load_and_roll_back(small_tenant, tmp_path, monkeypatch):
    def admin(state):  # what the admin prepared in Setup for these choices
        for job_type in [*_job_types(small_tenant), "Other"]:
            state.add_record_type("Opportunity", _developer_name(job_type), job_type)

    def mapping(state):  # the admin picks the price book entry the quote lines go under
        return _alternative_mapping(small_tenant, next(iter(state.records["PricebookEntry"])))

    ctx, ascora, org = _setup(small_tenant, tmp_path, monkeypatch, mapping=mapping, admin=admin, custom_objects=[])
    try:
        def loaded(data):
            jobs = [o for o in data["Opportunity"] if o["Ascora_Record_Type__c"] == "Job"]
            assert jobs and all(o["RecordTypeId"] for o in jobs)
            assert data["Order"] and all(o["Status"] == "Draft" for o in data["Order"])
            assert data["OpportunityLineItem"] and not data.get("Quote_Line_Item__c")
            assert not any(a["Ascora_Record_Type__c"] == "Site" for a in data["Account"]), "a site became an Account"
            assert any(a["Ascora_Sites__c"] for a in data["Account"])

        result = _load_reconcile_rollback(ctx, org, _data(org), while_loaded=loaded)
        invoices = result["objects"]["invoice"]
        assert invoices["loaded"] == invoices["read"]  # every invoice is an Order
    finally:
        ctx.close()
        ascora.stop()
        org.stop()


def test_maintenance_history_is_a_task_on_each_asset_at_a_site(small_tenant, tmp_path, monkeypatch):
    """Ascora links jobs to sites, so an Asset's history is the jobs at its site, oldest first."""
    ctx, ascora, org = _setup(small_tenant, tmp_path, monkeypatch)
    before = _data(org)

    def check(records):
        equipment = _rows(small_tenant, "equipment")
        jobs_at = {}
        for job in sorted(_rows(small_tenant, "jobs"), key=lambda j: j.get("createdDate") or j.get("dateCreated") or ""):
            site = (job.get("siteCustomer") or {}).get("id")
            if site and "." not in job["jobNumber"]:  # child jobs are sections of their parent job
                jobs_at.setdefault(site, []).append(job["jobNumber"])
        assets = {a["Ascora_Id__c"].lower(): a for a in records["Asset"]}
        tasks = {t["WhatId"]: t for t in records["Task"] if t.get("Subject", "").startswith("Maintenance history")}
        sited = [e for e in equipment if e.get("siteCustomerId")]
        assert sited and len(tasks) == len(sited)
        with_jobs = 0
        for item in sited:
            task = tasks[assets[item["equipmentId"].lower()]["Id"]]
            assert task["Status"] == "Completed" and item["name"] in task["Subject"]
            numbers = [line.split()[1] if line[:1].isdigit() else line.split()[0]
                       for line in task["Description"].splitlines()]
            expected = jobs_at.get(item["siteCustomerId"], [])
            if expected:
                with_jobs += 1
                assert sorted(numbers) == sorted(expected), (item["equipmentId"], numbers, expected)
            else:
                assert task["Description"] == "No jobs recorded at this site in Ascora."
        assert with_jobs

    try:
        _load_reconcile_rollback(ctx, org, before, while_loaded=check)
    finally:
        ctx.close()
        ascora.stop()
        org.stop()


USER_STAMPS = ("LastModifiedDate", "SystemModstamp", "LastModifiedById")


def _users(org, like: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every User as the migration could change it (the modification stamps of a restored User move on).

    With ``like`` (an earlier reading), fields created since then are left out where they are empty: the
    schema step adds Staff_Role__c to every User, and rollback empties it again.
    """
    users = {u["Id"]: {k: v for k, v in u.items() if k not in USER_STAMPS} for u in org.app.state.salesforce.users()}
    if like is not None:
        users = {i: {k: v for k, v in u.items() if k in like.get(i, {}) or v is not None} for i, u in users.items()}
    return users


def test_staff_roles_go_on_matched_users_only_and_roll_back_to_their_old_values(small_tenant, tmp_path, monkeypatch):
    """The seed's "staff roles migrate as a custom pick-list field on the User record": matched Users get
    their labour role, nobody else is touched, and rollback restores what each User held (here, a role
    an admin had already typed in for one of them). Files keep their uploader as owner."""
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, org = _setup(small_tenant, tmp_path, monkeypatch)
    state = org.app.state.salesforce
    try:
        staff = _rows(small_tenant, "users")
        roles = {s["emailAddress"].lower(): (s.get("labourRole") or {}).get("name") for s in staff}
        users = {u["Email"].lower(): u for u in state.users() if u.get("Email")}
        matched = [email for email in roles if email in users]
        unmatched = [email for email in roles if email not in users]
        assert unmatched and len(matched) >= 3 and any(roles[e] for e in matched) and any(not roles[e] for e in matched)
        picklist = {v["value"] for v in org_field(state, "User", "Staff_Role__c")["picklistValues"]}
        assert picklist == {r for r in roles.values() if r}, "the pick-list holds the roles in use"
        by_hand = users[matched[0]]["Id"]  # the admin set a role on one User before the migration
        state.update("User", by_hand, {"Staff_Role__c": "Apprentice"})
        before_users = _users(org)

        stats = load_everything(ctx)
        after = {u["Email"].lower(): u for u in state.users() if u.get("Email")}
        for email in matched:
            assert after[email]["Staff_Role__c"] == roles[email], email
        untouched = [u for email, u in after.items() if email not in matched]
        assert untouched and all(_users(org)[u["Id"]] == before_users[u["Id"]] for u in untouched), \
            "the fallback owner and the integration user are not staff: never written"
        assert stats["staff_role"].created == 0 and stats["staff_role"].not_for_this_map == len(unmatched)

        result = reconcile(ctx, verify="all")
        row = result["objects"]["staff_user"]
        assert result["ok"] and row["missing"] == 0 and row["loaded"] == len(matched), row
        assert sum(v for k, v in row["skip_rules"].items() if "e-mail" in k) == len(unmatched), row
        assert result["content"]["staff_role"]["mismatch"] == 0

        # Each File is owned by the staff member who uploaded it in Ascora (the fallback owner otherwise).
        uploaders = {a["attachmentId"].lower(): (a.get("createdByName") or "") for a in _rows(small_tenant, "attachments")}
        user_by_name = {u["Name"].casefold(): u["Id"] for u in after.values()}
        by_staff_name = {s["fullName"].casefold(): user_by_name.get(f"{s['firstName']} {s['lastName']}".casefold())
                         if s["emailAddress"].lower() in users else None for s in staff}
        fallback = after["owner@example.com"]["Id"]
        files = [v for v in _data(org)["ContentVersion"] if v.get("Ascora_Id__c")]
        assert files
        owners_seen = set()
        for version in files:
            expected = by_staff_name.get(uploaders[version["Ascora_Id__c"].lower()].casefold()) or fallback
            assert version["OwnerId"] == expected, version["Ascora_Id__c"]
            owners_seen.add(expected)
        assert len(owners_seen) > 1

        summary = rollback_run(ctx.ledger, ctx.destination, "salesforce", "run-1", "run-1__rollback")
        assert summary["complete"], summary["failures"]
        restored = _users(org)
        assert restored[by_hand]["Staff_Role__c"] == "Apprentice"
        for user_id, values in before_users.items():
            assert restored[user_id] == values, user_id
    finally:
        ctx.close()
        ascora.stop()
        org.stop()


def org_field(state, sobject: str, name: str) -> dict:
    return next(f for f in state.describe(sobject)["fields"] if f["name"] == name)


def _with_invoice_pdfs(small_tenant, tmp_path, count: int = 3):
    """A copy of the tenant where the first ``count`` invoices carry their PDF, as Ascora keeps a tax
    invoice: an attachment on the invoice (the small tenant has none)."""
    import shutil
    import uuid

    from airflow_ascora_provider.sandbox.generate import _pdf

    tenant = tmp_path / "tenant"
    shutil.copytree(small_tenant, tenant)
    added = {}
    with (tenant / "api" / "attachments.jsonl").open("a") as out:
        for invoice in _rows(tenant, "invoices")[:count]:
            ident = str(uuid.uuid4())
            name = f"Tax Invoice {invoice['invoiceNumber']}.pdf"
            data = _pdf(f"Tax Invoice {invoice['invoiceNumber']}", ("Ascora sandbox",))
            (tenant / "files" / ident).mkdir(parents=True)
            (tenant / "files" / ident / name).write_bytes(data)
            out.write(json.dumps({"attachmentId": ident, "entityType": "Invoice", "entityId": invoice["invoiceId"],
                                  "fileName": name, "contentType": "application/pdf", "sizeBytes": len(data),
                                  "dateCreated": invoice["invoiceDate"], "category": "Document",
                                  "createdByName": None}) + "\n")
            added[ident] = invoice["invoiceId"]
    return tenant, added


@pytest.mark.parametrize("package, target", [(None, "Invoice__c"), ("SBQQ__Quote__c", "Order"),
                                             ("FinServ__FinancialAccount__c", "Order")],
                         ids=["sales-cloud", "cpq", "financial-services-cloud"])
def test_invoices_are_orders_with_cpq_or_fsc_else_invoice_records_with_their_pdfs(small_tenant, tmp_path, monkeypatch,
                                                                                  package, target):
    """Seed: "Invoices map to Salesforce Orders when Salesforce CPQ or Financial Services Cloud is in use;
    without those products, a custom Invoice__c object ... Original invoice PDF files are re-uploaded to
    Salesforce Files attached to the Invoice record". Completion tells the orgs apart by the package's
    objects, keeps the map that applies and lists the other as dropped."""
    tenant, pdfs = _with_invoice_pdfs(small_tenant, tmp_path)
    objects = [{"name": "Quote_Line_Item__c", "label": "Quote Line Item"},
               {"name": package, "label": "Package object"} if package else {"name": "Invoice__c", "label": "Invoice"}]
    ctx, ascora, org = _setup(tenant, tmp_path, monkeypatch, custom_objects=objects)
    try:
        kept, dropped = ("invoice_order", "invoice") if package else ("invoice", "invoice_order")
        assert kept in ctx.mapping.maps and dropped not in ctx.mapping.maps
        assert (package or "SBQQ__Quote__c or FinServ__FinancialAccount__c") in ctx.mapping.document["dropped_maps"][dropped]
        invoices = list(ctx.snapshot.iter_records("invoice", ["id", "invoice_number"]))
        number = "OrderReferenceNumber" if package else "Name"

        def check(records):
            written = {o["Ascora_Id__c"].lower(): o for o in records[target]}
            assert len(written) == len(invoices) and {o[number] for o in written.values()} == {
                i["invoice_number"] for i in invoices}
            assert not records.get("Invoice__c" if package else "Order")
            links = {(link["ContentDocumentId"], link["LinkedEntityId"]) for link in records["ContentDocumentLink"]}
            files = {v["Ascora_Id__c"].lower(): v for v in records["ContentVersion"] if v.get("Ascora_Id__c")}
            for pdf, invoice in pdfs.items():
                assert (files[pdf]["ContentDocumentId"], written[invoice.lower()]["Id"]) in links, invoice

        result = _load_reconcile_rollback(ctx, org, _data(org), while_loaded=check)
        assert result["objects"]["invoice"]["loaded"] == result["objects"]["invoice"]["read"]
    finally:
        ctx.close()
        ascora.stop()
        org.stop()
