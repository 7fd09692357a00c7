"""The canonical Ascora model: one typed schema per object, the relations between them, and the load order.

Both ways out of Ascora (the REST API and the Excel exports) produce records in this shape, so
everything downstream (staging, audit, mapping, every destination) is written once against it.

Why a separate canonical model rather than Ascora's own JSON: the API and the exports disagree on
names (``siteCustomer.id`` vs ``SITE CUSTOMER``), on types (numbers vs text, ``Yes``/``No``), and on
what exists at all (equipment, notes, invoices, form responses are export-only). Normalising once,
at extraction, keeps that mess out of every destination plugin.

The dependency order is *derived* from :class:`Relation` declarations, never hand-written: adding a
relation is enough for parents to load before children everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache, cached_property
from graphlib import CycleError, TopologicalSorter

import pyarrow as pa

SCHEMA_VERSION = 1


class FieldType(StrEnum):
    STRING = "string"  # short text (names, numbers like "J1042")
    TEXT = "text"  # long free text
    EMAIL = "email"
    PHONE = "phone"
    INTEGER = "integer"
    DECIMAL = "decimal"  # money and quantities: exact, never float
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    JSON = "json"  # custom fields and form answers: a mapping of name -> text value


ARROW_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.TEXT: pa.string(),
    FieldType.EMAIL: pa.string(),
    FieldType.PHONE: pa.string(),
    FieldType.INTEGER: pa.int64(),
    FieldType.DECIMAL: pa.decimal128(24, 6),
    FieldType.BOOLEAN: pa.bool_(),
    FieldType.DATE: pa.date32(),
    FieldType.DATETIME: pa.timestamp("us", tz="UTC"),
    FieldType.JSON: pa.string(),  # JSON text; keeps arbitrary custom-field names out of the Arrow schema
}

# Columns every staged table carries besides the object's own fields.
HASH_COLUMN = "_hash"  # content hash of the canonical fields (delta detection, reconciliation)
ISSUES_COLUMN = "_issues"  # JSON list of {field, value, reason} found while coercing this record
ORIGIN_COLUMN = "_origin"  # where the record came from, e.g. "api:/Jobs/Jobs p3" or "jobs.xlsx:Jobs!R17"
SYSTEM_COLUMNS = (HASH_COLUMN, ISSUES_COLUMN, ORIGIN_COLUMN)


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType = FieldType.STRING
    required: bool = False
    description: str = ""
    choices: tuple[str, ...] = ()  # pick-list values the source may hold (after synonym folding)
    # A list the tenant defines for itself (labour roles, kinds of equipment): no fixed values to check
    # against, but the audit counts the values in use so a destination pick-list can be made of them.
    open_choices: bool = False


@dataclass(frozen=True)
class Relation:
    """A reference from ``field`` to the ``id`` of one of ``targets``.

    Several targets make the relation polymorphic (a note belongs to a job *or* a customer ...); the
    ``discriminator`` field then names which. ``required`` relations that do not resolve make the
    record an orphan: the audit reports it and the load quarantines it instead of guessing.
    """

    field: str
    targets: tuple[str, ...]
    required: bool = False
    discriminator: str | None = None


@dataclass(frozen=True)
class ObjectSchema:
    name: str
    label: str
    fields: tuple[Field, ...]
    relations: tuple[Relation, ...] = ()
    natural_key: tuple[str, ...] = ()  # used when a source gives no id (exports keyed by number or name)
    description: str = ""

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def fields_by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @cached_property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required and f.name != "id")

    def field(self, name: str) -> Field:
        try:
            return self.fields_by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no field {name!r}") from None

    def has_field(self, name: str) -> bool:
        return name in self.fields_by_name

    def relation_for(self, field_name: str) -> Relation | None:
        return next((r for r in self.relations if r.field == field_name), None)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        columns = [pa.field(f.name, ARROW_TYPES[f.type], nullable=f.name != "id") for f in self.fields]
        columns += [pa.field(c, pa.string()) for c in SYSTEM_COLUMNS]
        return pa.schema(columns)


S, T, E, P, I, D, B, DT, DTT, J = (
    FieldType.STRING,
    FieldType.TEXT,
    FieldType.EMAIL,
    FieldType.PHONE,
    FieldType.INTEGER,
    FieldType.DECIMAL,
    FieldType.BOOLEAN,
    FieldType.DATE,
    FieldType.DATETIME,
    FieldType.JSON,
)

JOB_STATUSES = (
    "In Progress",
    "Booked",
    "Completed",
    "Cancelled",
    "Deferred",
    "Unscheduled",
    "Ready To Invoice",
    "Closed",
)
QUOTE_STATUSES = ("In Progress", "Sent To Customer", "Won", "Lost")
INVOICE_STATUSES = ("Unpaid", "Part Paid", "Paid", "Overdue", "Void")
PRICING_METHODS = ("FIXED-PRICE", "TIME-AND-MATERIALS", "SECTIONS", "STAGES")
QUOTE_ITEM_TYPES = ("SUPPLY", "KIT", "LABOUR", "WRITE-IN")
ENTITY_TYPES = ("Customer", "Site", "Job", "Quotation", "Invoice", "Enquiry")


def _id() -> Field:
    return Field("id", S, required=True, description="Ascora GUID (or a key derived from the natural key)")


def _address(prefix: str = "") -> tuple[Field, ...]:
    return tuple(
        Field(f"{prefix}{n}", S)
        for n in ("address_line1", "address_line2", "suburb", "state", "postcode", "country")
    )


def _custom() -> Field:
    return Field("custom_fields", J, description="Ascora custom fields {fieldName: fieldValue}")


_PERSON = (
    Field("first_name", S),
    Field("last_name", S),
    Field("email", E),
    Field("phone", P),
    Field("mobile", P),
)

OBJECTS: tuple[ObjectSchema, ...] = (
    ObjectSchema(
        "staff_user",
        "Staff user",
        (
            _id(),
            Field("full_name", S, required=True),
            *_PERSON,
            Field("is_active", B),
            Field("user_type", S, choices=("Office", "Mobile", "Admin")),
            Field("labour_role", S, open_choices=True),
            Field("team", S),
        ),
        natural_key=("full_name",),
        description="Ascora users (technicians and office staff); owners are resolved by e-mail.",
    ),
    ObjectSchema(
        "job_type",
        "Job type",
        (_id(), Field("name", S, required=True), Field("is_default", B)),
        natural_key=("name",),
    ),
    ObjectSchema(
        "customer",
        "Customer",
        (
            _id(),
            Field("customer_number", S),
            Field("name", S, required=True),
            Field("company_name", S),
            Field("is_company", B, description="company-type vs individual; drives conditional maps"),
            *_PERSON,
            Field("on_hold", B),
            *_address(),
            Field("latitude", D),
            Field("longitude", D),
            *_address("postal_"),
            Field("customer_type", S),
            Field("lead_source", S),
            Field("assigned_user_name", S),
            Field("accounting_system", S, description="Xero / MYOB / QuickBooks link, documented for reconnecting"),
            Field("date_created", DTT),
            _custom(),
        ),
        natural_key=("name",),
        description="A billing customer (Ascora's customer with no billing customer of its own).",
    ),
    ObjectSchema(
        "site",
        "Site",
        (
            _id(),
            Field("customer_number", S),
            Field("name", S, required=True),
            Field("billing_customer_id", S, required=True),
            *_PERSON,
            *_address(),
            Field("latitude", D),
            Field("longitude", D),
            Field("customer_type", S),
            Field("assigned_user_name", S),
            Field("date_created", DTT),
            _custom(),
        ),
        relations=(Relation("billing_customer_id", ("customer",), required=True),),
        natural_key=("name",),
        description="A service location: an Ascora customer whose billingCustomer points at its payer.",
    ),
    ObjectSchema(
        "contact",
        "Contact",
        (
            _id(),
            Field("customer_id", S, required=True),
            *_PERSON,
            Field("fax", P),
            Field("is_default", B),
            Field("role", S),
        ),
        relations=(Relation("customer_id", ("customer", "site"), required=True),),
        natural_key=("customer_id", "first_name", "last_name"),
    ),
    ObjectSchema(
        "enquiry",
        "Enquiry",
        (
            _id(),
            Field("enquiry_number", S),
            Field("company_name", S),
            *_PERSON,
            *_address(),
            Field("description", T),
            Field("lead_source", S),
            Field("status", S, choices=("New", "Converted", "Closed")),
            Field("date_created", DTT),
            Field("converted_to_quote_number", S),
            Field("converted_to_job_number", S),
            _custom(),
        ),
        natural_key=("enquiry_number",),
    ),
    ObjectSchema(
        "quote",
        "Quote",
        (
            _id(),
            Field("quote_number", S, required=True),
            Field("name", S),
            Field("description", T),
            Field("status", S, choices=QUOTE_STATUSES),
            Field("reason_for_loss", S),
            Field("date_created", DTT),
            Field("quote_date", DT),
            Field("due_date", DT),
            Field("valid_until_date", DT),
            Field("pricing_method", S, choices=PRICING_METHODS),
            Field("total_ex_tax", D),
            Field("total_tax", D),
            Field("total_inc_tax", D),
            Field("purchase_order_number", S),
            Field("client_order_number", S),
            *_address(),
            Field("job_type_id", S),
            Field("job_type_name", S),
            Field("customer_id", S, required=True),
            Field("site_id", S),
            Field("assigned_user_name", S),
            Field("assigned_user_id", S),
            Field("team", S),
            Field("variation_for_job_number", S),
            Field("enquiry_id", S),
            _custom(),
        ),
        relations=(
            Relation("customer_id", ("customer",), required=True),
            Relation("site_id", ("site",)),
            Relation("job_type_id", ("job_type",)),
            Relation("assigned_user_id", ("staff_user",)),
            Relation("enquiry_id", ("enquiry",)),
        ),
        natural_key=("quote_number",),
    ),
    ObjectSchema(
        "quote_section",
        "Quote section",
        (
            _id(),
            Field("quote_id", S, required=True),
            Field("quote_number", S, required=True),
            Field("name", S),
            Field("display_order", I),
            Field("total_ex_tax", D),
            Field("total_inc_tax", D),
        ),
        relations=(Relation("quote_id", ("quote",), required=True),),
        natural_key=("quote_number",),
        description="A child quote (Q1234.01) of a SECTIONS/STAGES quote.",
    ),
    ObjectSchema(
        "quote_line_item",
        "Quote line item",
        (
            _id(),
            Field("quote_id", S, required=True),
            Field("section_quote_number", S),
            Field("line_number", I),
            Field("item_type", S, choices=QUOTE_ITEM_TYPES),
            Field("part_number", S),
            Field("description", T),
            Field("quantity", D),
            Field("unit_of_measure", S),
            Field("labour_role", S),
            Field("hours", D),
            Field("unit_cost_ex_tax", D),
            Field("unit_sell_ex_tax", D),
            Field("total_ex_tax", D),
            Field("total_inc_tax", D),
            Field("is_taxable", B),
        ),
        relations=(Relation("quote_id", ("quote",), required=True),),
        natural_key=("quote_id", "line_number"),
    ),
    ObjectSchema(
        "job",
        "Job",
        (
            _id(),
            Field("job_number", S, required=True),
            Field("name", S),
            Field("description", T),
            Field("work_undertaken", T),
            Field("status", S, choices=JOB_STATUSES),
            Field("date_created", DTT),
            Field("completed_date", DTT),
            Field("booking_date", DTT),
            Field("expected_date", DT),
            Field("pricing_method", S, choices=PRICING_METHODS),
            Field("total_ex_tax", D),
            Field("total_tax", D),
            Field("total_inc_tax", D),
            Field("purchase_order_number", S),
            Field("client_order_number", S),
            *_address(),
            Field("latitude", D),
            Field("longitude", D),
            Field("job_type_id", S),
            Field("job_type_name", S),
            Field("customer_id", S, required=True),
            Field("site_id", S),
            Field("site_contact_id", S),
            Field("billing_contact_id", S),
            Field("quote_id", S),
            Field("assigned_user_name", S),
            Field("assigned_user_id", S),
            Field("team", S),
            Field("priority", S),
            Field("estimated_duration_hours", D),
            Field("expected_duration_hours", D),
            Field("invoice_number", S),
            _custom(),
        ),
        relations=(
            Relation("customer_id", ("customer",), required=True),
            Relation("site_id", ("site",)),
            Relation("site_contact_id", ("contact",)),
            Relation("billing_contact_id", ("contact",)),
            Relation("quote_id", ("quote",)),
            Relation("job_type_id", ("job_type",)),
            Relation("assigned_user_id", ("staff_user",)),
        ),
        natural_key=("job_number",),
        description="A top-level job. Its sections/stages (J1042.01 ...) are job_section records.",
    ),
    ObjectSchema(
        "job_section",
        "Job section / phase",
        (
            _id(),
            Field("job_id", S, required=True),
            Field("job_number", S, required=True),
            Field("name", S),
            Field("description", T),
            Field("status", S, choices=JOB_STATUSES),
            Field("display_order", I),
            Field("date_created", DTT),
            Field("completed_date", DTT),
            Field("total_ex_tax", D),
            Field("total_inc_tax", D),
            Field("assigned_user_name", S),
            Field("assigned_user_id", S),
        ),
        relations=(
            Relation("job_id", ("job",), required=True),
            Relation("assigned_user_id", ("staff_user",)),
        ),
        natural_key=("job_number",),
    ),
    ObjectSchema(
        "invoice",
        "Invoice",
        (
            _id(),
            Field("invoice_number", S, required=True),
            Field("invoice_date", DT),
            Field("due_date", DT),
            Field("status", S, choices=INVOICE_STATUSES),
            Field("job_id", S),
            Field("job_number", S),
            Field("customer_id", S, required=True),
            Field("reference", S),
            Field("total_ex_tax", D),
            Field("total_tax", D),
            Field("total_inc_tax", D),
            Field("amount_paid", D),
            Field("amount_outstanding", D),
            Field("sent_to_accounts", B),
            Field("accounting_system", S),
            Field("pdf_attachment_id", S),
            _custom(),
        ),
        relations=(
            Relation("customer_id", ("customer",), required=True),
            Relation("job_id", ("job",)),
        ),
        natural_key=("invoice_number",),
    ),
    ObjectSchema(
        "invoice_line",
        "Invoice line",
        (
            _id(),
            Field("invoice_id", S, required=True),
            Field("line_number", I),
            Field("description", T),
            Field("part_number", S),
            Field("quantity", D),
            Field("unit_price_ex_tax", D),
            Field("account_code", S),
            Field("tax_code", S),
            Field("total_ex_tax", D),
            Field("tax", D),
        ),
        relations=(Relation("invoice_id", ("invoice",), required=True),),
        natural_key=("invoice_id", "line_number"),
    ),
    ObjectSchema(
        "equipment",
        "Equipment",
        (
            _id(),
            Field("customer_id", S, required=True),
            Field("site_id", S),
            Field("name", S, required=True, open_choices=True,
                  description="what it is (\"Hot water system\"): Ascora names equipment by its kind"),
            Field("make", S),
            Field("model", S),
            Field("serial_number", S),
            Field("location", S),
            Field("install_date", DT),
            Field("warranty_expiry", DT),
            Field("notes", T),
            _custom(),
        ),
        relations=(
            Relation("customer_id", ("customer",), required=True),
            Relation("site_id", ("site",)),
        ),
        natural_key=("customer_id", "serial_number"),
    ),
    ObjectSchema(
        "form_response",
        "Custom form response",
        (
            _id(),
            Field("form_name", S, required=True),
            Field("job_id", S, required=True),
            Field("job_number", S),
            Field("completed_by", S),
            Field("date_completed", DTT),
            Field("answers", J, description="{fieldCode: value} from the Word template's brace codes"),
            Field("attachment_id", S),
        ),
        relations=(Relation("job_id", ("job",), required=True),),
    ),
    ObjectSchema(
        "note",
        "Note",
        (
            _id(),
            Field("entity_type", S, required=True, choices=ENTITY_TYPES),
            Field("entity_id", S, required=True),
            Field("content", T, required=True),
            Field("activity_type", S),
            Field("created_by_name", S),
            Field("date_created", DTT),
        ),
        relations=(
            Relation(
                "entity_id",
                ("customer", "site", "job", "quote", "invoice", "enquiry"),
                required=True,
                discriminator="entity_type",
            ),
        ),
    ),
    ObjectSchema(
        "attachment",
        "Attachment",
        (
            _id(),
            Field("entity_type", S, required=True, choices=ENTITY_TYPES),
            Field("entity_id", S, required=True),
            Field("file_name", S, required=True),
            Field("content_type", S),
            Field("size_bytes", I),
            Field("sha256", S),
            Field("category", S, choices=("Photo", "Document", "Form")),
            Field("date_created", DTT),
            Field("created_by_name", S, description="staff name of who uploaded it (a note's author for "
                  "an image moved out of the note)"),
            Field("file_uri", S, description="where the staged bytes are (under the staging folder)"),
        ),
        relations=(
            Relation(
                "entity_id",
                ("customer", "site", "job", "quote", "invoice", "enquiry"),
                required=True,
                discriminator="entity_type",
            ),
        ),
    ),
    ObjectSchema(
        "supplier",
        "Supplier",
        (
            _id(),
            Field("supplier_number", S),
            Field("name", S, required=True),
            Field("business_number", S),
            *_PERSON,
            Field("fax", P),
            Field("notes", T),
            Field("expense_account", S),
            *_address(),
        ),
        natural_key=("name",),
    ),
    ObjectSchema(
        "supplier_bill",
        "Supplier bill",
        (
            _id(),
            Field("supplier_id", S, required=True),
            Field("tracking_number", S),
            Field("reference", S),
            Field("type", S, choices=("INVOICE", "CREDIT")),
            Field("invoice_date", DT),
            Field("due_date", DT),
            Field("created_on", DTT),
            Field("accepted", B),
            Field("account_code", S),
            Field("is_expense", B),
            Field("sent_to_accounts", B),
            Field("total_ex_tax", D),
            Field("total_inc_tax", D),
            Field("job_id", S),
        ),
        relations=(
            Relation("supplier_id", ("supplier",), required=True),
            Relation("job_id", ("job",)),
        ),
        natural_key=("supplier_id", "tracking_number"),
    ),
    ObjectSchema(
        "supplier_bill_line",
        "Supplier bill line",
        (
            _id(),
            Field("supplier_bill_id", S, required=True),
            Field("line_number", I),
            Field("description", T),
            Field("part_number", S),
            Field("quantity", D),
            Field("unit_cost_ex_tax", D),
            Field("total_ex_tax", D),
            Field("total_inc_tax", D),
            Field("account_code", S),
            Field("reference", S),
            Field("is_taxable", B),
        ),
        relations=(Relation("supplier_bill_id", ("supplier_bill",), required=True),),
        natural_key=("supplier_bill_id", "line_number"),
    ),
)

MODEL: dict[str, ObjectSchema] = {o.name: o for o in OBJECTS}


def get_object(name: str) -> ObjectSchema:
    try:
        return MODEL[name]
    except KeyError:
        raise KeyError(f"unknown Ascora object {name!r}; known: {', '.join(sorted(MODEL))}") from None


@cache
def dependency_order(names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Objects ordered so every relation target comes before the objects pointing at it.

    Self-references are ignored (they never block a load). Ties are broken by name so the order is
    stable from run to run. A cycle between different objects is a modelling error and raises.
    """
    selected = tuple(sorted(names)) if names is not None else tuple(sorted(MODEL))
    wanted = set(selected)
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in selected:
        deps = {
            target
            for rel in MODEL[name].relations
            for target in rel.targets
            if target != name and target in wanted
        }
        sorter.add(name, *sorted(deps))
    try:
        sorter.prepare()
    except CycleError as exc:  # pragma: no cover - guarded by a unit test on the shipped model
        raise ValueError(f"relation cycle in the Ascora model: {exc.args[1]}") from exc
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return tuple(order)


def children_of(name: str) -> tuple[tuple[str, Relation], ...]:
    """Every (object, relation) that points at ``name``: what a sample must bring along or a delete must remove first."""
    return tuple(
        (obj.name, rel) for obj in OBJECTS for rel in obj.relations if name in rel.targets and obj.name != name
    )
