"""The sObjects and fields the Salesforce emulator's org is born with, and how they describe themselves.

Only what a Sales Cloud org has out of the box and what the migration touches: Account, Contact,
Lead, Opportunity (+ OpportunityLineItem and the price book objects), Order, Asset, Task, Files
(ContentVersion / ContentDocument / ContentDocumentLink), User, RecordType and the permission objects.
Field names, types, lengths and required flags follow the Salesforce object reference; what could
not be confirmed is marked in a comment, with the stricter choice made.

Audit fields (``CreatedDate`` …) are writable on insert only, only when the org has "Set Audit Fields
upon Record Creation", and only on the objects Salesforce lists for it (knowledge article 000176484:
Account, Contact, Lead, Opportunity, Task, ContentVersion and every custom object, among others not
emulated; **not** Asset or Order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

AUDIT_FIELDS = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
AUDIT_OBJECTS = frozenset({"Account", "Contact", "Lead", "Opportunity", "Task", "ContentVersion"})
#: Objects a Task's WhatId may point at (plus every custom object: activities are on by default here).
WHAT_OBJECTS = ("Account", "Opportunity", "Asset", "Order")

SOAP_TYPES = {
    "id": "tns:ID", "reference": "tns:ID", "string": "xsd:string", "textarea": "xsd:string",
    "email": "xsd:string", "phone": "xsd:string", "url": "xsd:string", "picklist": "xsd:string",
    "multipicklist": "xsd:string", "combobox": "xsd:string", "boolean": "xsd:boolean", "int": "xsd:int",
    "double": "xsd:double", "currency": "xsd:double", "percent": "xsd:double", "date": "xsd:date",
    "datetime": "xsd:dateTime", "base64": "xsd:base64Binary", "address": "urn:address",
}


@dataclass(frozen=True)
class SfField:
    name: str
    label: str
    type: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted: bool = False
    default: Any = None
    unique: bool = False
    external_id: bool = False
    case_sensitive: bool = False
    custom: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    audit: bool = False  # CreatedDate & co: createable only with the audit-field permission
    compound_of: tuple[str, ...] = ()  # BillingAddress → BillingStreet … (read-only compound)
    visible: bool = True  # field-level security for the integration user
    html: bool = False
    help_text: str | None = None

    @property
    def required_on_create(self) -> bool:
        return self.createable and not self.nillable and not self.defaulted and not self.audit

    def describe(self, org_allows_audit: bool, object_allows_audit: bool) -> dict[str, Any]:
        createable = self.createable
        if self.audit:
            createable = org_allows_audit and object_allows_audit
        return {
            "name": self.name, "label": self.label, "type": self.type, "length": self.length,
            "byteLength": self.length * 3, "digits": 0, "precision": self.precision, "scale": self.scale,
            "createable": createable, "updateable": self.updateable, "nillable": self.nillable,
            "defaultedOnCreate": self.defaulted or self.audit or self.type == "id",
            "defaultValue": self.default, "unique": self.unique, "externalId": self.external_id,
            "idLookup": self.type == "id" or self.external_id, "custom": self.custom,
            "calculated": False, "autoNumber": False, "caseSensitive": self.case_sensitive,
            "filterable": self.type not in ("textarea", "base64", "address"),
            "groupable": self.type not in ("textarea", "base64", "address", "double", "currency"),
            "sortable": self.type not in ("textarea", "base64", "address"),
            "nameField": self.name == "Name", "htmlFormatted": self.html,
            "picklistValues": [{"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                               for v in self.picklist],
            "restrictedPicklist": self.restricted, "dependentPicklist": False, "controllerName": None,
            "referenceTo": list(self.reference_to), "relationshipName": self.relationship_name,
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "compoundFieldName": None, "inlineHelpText": self.help_text, "encrypted": False,
            "permissionable": self.custom, "soapType": SOAP_TYPES.get(self.type, "xsd:string"),
        }


@dataclass
class SfObject:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: dict[str, SfField] = field(default_factory=dict)
    custom: bool = False
    createable: bool = True
    deletable: bool = True
    audit: bool = False  # audit fields may be set on insert (with the org permission)
    setup: bool = False  # setup objects are left out of data snapshots

    def field(self, name: str) -> SfField | None:
        """Salesforce field names are case-insensitive; the stored name is the canonical one."""
        found = self.fields.get(name)
        if found is None:
            lowered = name.lower()
            found = next((f for n, f in self.fields.items() if n.lower() == lowered), None)
        return found

    def add(self, *fields: SfField) -> SfObject:
        for f in fields:
            self.fields[f.name] = f
        return self


def text(name, label=None, length=255, **kw) -> SfField:
    return SfField(name, label or name, "string", length=length, **kw)


def area(name, label=None, length=32000, **kw) -> SfField:
    return SfField(name, label or name, "textarea", length=length, **kw)


def ref(name, label, *targets, relationship=None, **kw) -> SfField:
    return SfField(name, label, "reference", length=18, reference_to=tuple(targets),
                   relationship_name=relationship or (name[:-2] if name.endswith("Id") else None), **kw)


def pick(name, label, values, restricted=False, **kw) -> SfField:
    return SfField(name, label, "picklist", length=255, picklist=tuple(values), restricted=restricted, **kw)


def money(name, label=None, **kw) -> SfField:
    return SfField(name, label or name, "currency", precision=18, scale=2, **kw)


def typed(name, label, type_, **kw) -> SfField:
    return SfField(name, label, type_, **kw)


def _system(owner: bool = True) -> list[SfField]:
    fields = [
        SfField("Id", "Record ID", "id", length=18, nillable=False, createable=False, updateable=False),
        typed("IsDeleted", "Deleted", "boolean", nillable=False, createable=False, updateable=False, defaulted=True),
        typed("CreatedDate", "Created Date", "datetime", nillable=False, updateable=False, audit=True),
        ref("CreatedById", "Created By ID", "User", relationship="CreatedBy", nillable=False, updateable=False,
            audit=True),
        typed("LastModifiedDate", "Last Modified Date", "datetime", nillable=False, updateable=False, audit=True),
        ref("LastModifiedById", "Last Modified By ID", "User", relationship="LastModifiedBy", nillable=False,
            updateable=False, audit=True),
        typed("SystemModstamp", "System Modstamp", "datetime", nillable=False, createable=False, updateable=False),
    ]
    if owner:
        fields.append(ref("OwnerId", "Owner ID", "User", relationship="Owner", nillable=False, defaulted=True))
    return fields


def _address(prefix: str, label: str) -> list[SfField]:
    parts = (f"{prefix}Street", f"{prefix}City", f"{prefix}State", f"{prefix}PostalCode", f"{prefix}Country",
             f"{prefix}Latitude", f"{prefix}Longitude")
    return [
        area(parts[0], f"{label} Street", length=255), text(parts[1], f"{label} City", 40),
        text(parts[2], f"{label} State/Province", 80), text(parts[3], f"{label} Zip/Postal Code", 20),
        text(parts[4], f"{label} Country", 80),
        typed(parts[5], f"{label} Latitude", "double", precision=18, scale=15),
        typed(parts[6], f"{label} Longitude", "double", precision=18, scale=15),
        typed(f"{prefix}Address", f"{label} Address", "address", createable=False, updateable=False,
              compound_of=parts),
    ]


def _person_name() -> list[SfField]:
    return [text("Salutation", "Salutation", 40), text("FirstName", "First Name", 40),
            text("LastName", "Last Name", 80, nillable=False),
            text("Name", "Full Name", 121, createable=False, updateable=False)]


ACCOUNT_TYPES = ("Prospect", "Customer - Direct", "Customer - Channel", "Channel Partner / Reseller",
                 "Installation Partner", "Technology Partner", "Other")
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
          "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")
LEAD_STATUSES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")
TASK_STATUSES = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")


def standard_objects(orders: bool = True) -> dict[str, SfObject]:
    objects = [
        SfObject("User", "User", "Users", "005", createable=False, deletable=False, setup=True).add(
            *_system(owner=False), text("Username", "Username", 80, nillable=False, unique=True),
            typed("Email", "Email", "email", length=128, nillable=False), text("FirstName", "First Name", 40),
            text("LastName", "Last Name", 80, nillable=False), text("Name", "Full Name", 121, createable=False,
                                                                  updateable=False),
            text("Alias", "Alias", 8), typed("IsActive", "Active", "boolean", nillable=False, defaulted=True),
            pick("UserType", "User Type", ("Standard", "AutomatedProcess", "CsnOnly"), createable=False,
                 updateable=False)),
        SfObject("Account", "Account", "Accounts", "001", audit=True).add(
            *_system(), text("Name", "Account Name", 255, nillable=False), text("AccountNumber", "Account Number", 40),
            pick("Type", "Account Type", ACCOUNT_TYPES), ref("ParentId", "Parent Account ID", "Account",
                                                             relationship="Parent"),
            typed("Phone", "Account Phone", "phone", length=40), typed("Fax", "Account Fax", "phone", length=40),
            typed("Website", "Website", "url", length=255), pick("Industry", "Industry", (
                "Construction", "Energy", "Engineering", "Utilities", "Other")),
            area("Description", "Account Description"), *_address("Billing", "Billing"),
            *_address("Shipping", "Shipping"), typed("NumberOfEmployees", "Employees", "int"),
            money("AnnualRevenue", "Annual Revenue")),
        SfObject("Contact", "Contact", "Contacts", "003", audit=True).add(
            *_system(), *_person_name(), ref("AccountId", "Account ID", "Account"),
            typed("Email", "Email", "email", length=80), typed("Phone", "Business Phone", "phone", length=40),
            typed("MobilePhone", "Mobile Phone", "phone", length=40), typed("Fax", "Business Fax", "phone", length=40),
            text("Title", "Title", 128), text("Department", "Department", 80), pick("LeadSource", "Lead Source", SOURCES),
            typed("Birthdate", "Birthdate", "date"), area("Description", "Contact Description"),
            *_address("Mailing", "Mailing")),
        SfObject("Lead", "Lead", "Leads", "00Q", audit=True).add(
            *_system(), *_person_name(), text("Company", "Company", 255, nillable=False),
            typed("Email", "Email", "email", length=80), typed("Phone", "Phone", "phone", length=40),
            typed("MobilePhone", "Mobile Phone", "phone", length=40), text("Title", "Title", 128),
            pick("Status", "Status", LEAD_STATUSES, restricted=True, nillable=False, defaulted=True,
                 default="Open - Not Contacted"),
            pick("LeadSource", "Lead Source", SOURCES), area("Description", "Description"), *_address("", "")),
        SfObject("Product2", "Product", "Products", "01t").add(
            *_system(owner=False), text("Name", "Product Name", 255, nillable=False),
            text("ProductCode", "Product Code", 255), typed("IsActive", "Active", "boolean", nillable=False,
                                                            defaulted=True),
            area("Description", "Product Description", 4000), pick("Family", "Product Family", ("None",))),
        SfObject("Pricebook2", "Price Book", "Price Books", "01s").add(
            *_system(owner=False), text("Name", "Price Book Name", 255, nillable=False),
            typed("IsActive", "Active", "boolean", nillable=False, defaulted=True),
            typed("IsStandard", "Is Standard Price Book", "boolean", nillable=False, createable=False,
                  updateable=False, defaulted=True)),
        SfObject("PricebookEntry", "Price Book Entry", "Price Book Entries", "01u").add(
            *_system(owner=False), ref("Pricebook2Id", "Price Book ID", "Pricebook2", nillable=False, updateable=False),
            ref("Product2Id", "Product ID", "Product2", nillable=False, updateable=False),
            money("UnitPrice", "List Price", nillable=False), typed("IsActive", "Active", "boolean", nillable=False,
                                                                    defaulted=True),
            typed("UseStandardPrice", "Use Standard Price", "boolean", nillable=False, defaulted=True)),
        SfObject("Opportunity", "Opportunity", "Opportunities", "006", audit=True).add(
            *_system(), text("Name", "Name", 120, nillable=False), ref("AccountId", "Account ID", "Account"),
            ref("RecordTypeId", "Record Type ID", "RecordType"),
            pick("StageName", "Stage", STAGES, restricted=True, nillable=False),
            typed("CloseDate", "Close Date", "date", nillable=False), money("Amount", "Amount"),
            typed("Probability", "Probability (%)", "percent", precision=3), pick("Type", "Opportunity Type", (
                "Existing Customer - Upgrade", "Existing Customer - Replacement", "Existing Customer - Downgrade",
                "New Customer")), pick("LeadSource", "Lead Source", SOURCES), text("NextStep", "Next Step", 255),
            area("Description", "Description"), ref("Pricebook2Id", "Price Book ID", "Pricebook2"),
            typed("IsClosed", "Closed", "boolean", nillable=False, createable=False, updateable=False, defaulted=True),
            typed("IsWon", "Won", "boolean", nillable=False, createable=False, updateable=False, defaulted=True)),
        SfObject("OpportunityLineItem", "Opportunity Product", "Opportunity Product", "00k").add(
            *_system(owner=False), ref("OpportunityId", "Opportunity ID", "Opportunity", nillable=False,
                                       updateable=False),
            ref("PricebookEntryId", "Price Book Entry ID", "PricebookEntry", nillable=False, updateable=False),
            ref("Product2Id", "Product ID", "Product2", createable=False, updateable=False),
            text("Name", "Opportunity Product Name", 376, createable=False, updateable=False),
            typed("Quantity", "Quantity", "double", precision=12, scale=2, nillable=False),
            money("UnitPrice", "Sales Price"), money("TotalPrice", "Total Price"),
            text("Description", "Line Description", 255), typed("ServiceDate", "Date", "date")),
        SfObject("Asset", "Asset", "Assets", "02i").add(
            *_system(), text("Name", "Asset Name", 255, nillable=False), ref("AccountId", "Account ID", "Account"),
            ref("ContactId", "Contact ID", "Contact"), ref("ParentId", "Parent Asset ID", "Asset",
                                                          relationship="Parent"),
            ref("Product2Id", "Product ID", "Product2"), text("SerialNumber", "Serial Number", 80),
            typed("InstallDate", "Install Date", "date"), typed("PurchaseDate", "Purchase Date", "date"),
            typed("UsageEndDate", "Usage End Date", "date"), pick("Status", "Status", (
                "Purchased", "Shipped", "Installed", "Registered", "Obsolete")),
            typed("Quantity", "Quantity", "double", precision=18, scale=2), money("Price", "Price"),
            area("Description", "Description")),
        SfObject("Task", "Task", "Tasks", "00T", audit=True).add(
            *_system(), text("Subject", "Subject", 255),
            ref("WhatId", "Related To ID", *WHAT_OBJECTS, relationship="What"),
            ref("WhoId", "Name ID", "Contact", "Lead", relationship="Who"),
            typed("ActivityDate", "Due Date Only", "date"),
            pick("Status", "Status", TASK_STATUSES, restricted=True, nillable=False, defaulted=True,
                 default="Not Started"),
            pick("Priority", "Priority", ("High", "Normal", "Low"), restricted=True, nillable=False, defaulted=True,
                 default="Normal"),
            pick("Type", "Type", ("Call", "Email", "Meeting", "Other")),
            # Settable on insert only (Salesforce: not updateable).
            pick("TaskSubtype", "Task Subtype", ("Task", "Email", "Call"), restricted=True, defaulted=True,
                 default="Task", updateable=False),
            area("Description", "Description"),
            typed("IsClosed", "Closed", "boolean", nillable=False, createable=False, updateable=False, defaulted=True)),
        SfObject("ContentDocument", "Content Document", "Content Documents", "069", createable=False).add(
            *_system(), text("Title", "Title", 255), ref("LatestPublishedVersionId", "Latest Published Version ID",
                                                          "ContentVersion", createable=False, updateable=False),
            text("FileType", "File Type", 20, createable=False, updateable=False),
            typed("ContentSize", "Size", "int", createable=False, updateable=False)),
        SfObject("ContentVersion", "Content Version", "Content Versions", "068", deletable=False, audit=True).add(
            *_system(), text("Title", "Title", 255, defaulted=True),
            text("PathOnClient", "Path On Client", 500, nillable=False, updateable=False),
            typed("VersionData", "Version Data", "base64", nillable=False, updateable=False),
            ref("ContentDocumentId", "ContentDocument ID", "ContentDocument", updateable=False, defaulted=True),
            ref("FirstPublishLocationId", "First Publish Location ID", *WHAT_OBJECTS, "Contact", "Lead", "User",
                relationship="FirstPublishLocation", updateable=False),
            area("Description", "Description", 1000), area("ReasonForChange", "Reason For Change", 1000),
            pick("ContentLocation", "Content Location", ("S", "E", "L"), restricted=True, defaulted=True,
                 default="S", updateable=False),
            typed("ContentSize", "Size", "int", createable=False, updateable=False),
            text("Checksum", "Checksum", 50, createable=False, updateable=False),
            text("FileExtension", "File Extension", 40, createable=False, updateable=False),
            text("FileType", "File Type", 20, createable=False, updateable=False),
            text("VersionNumber", "Version Number", 20, createable=False, updateable=False),
            typed("IsLatest", "Is Latest", "boolean", nillable=False, createable=False, updateable=False,
                  defaulted=True)),
        SfObject("ContentDocumentLink", "Content Document Link", "Content Document Links", "06A").add(
            SfField("Id", "Record ID", "id", length=18, nillable=False, createable=False, updateable=False),
            typed("IsDeleted", "Deleted", "boolean", nillable=False, createable=False, updateable=False, defaulted=True),
            typed("SystemModstamp", "System Modstamp", "datetime", nillable=False, createable=False, updateable=False),
            ref("ContentDocumentId", "ContentDocument ID", "ContentDocument", nillable=False, updateable=False),
            ref("LinkedEntityId", "Linked Entity ID", *WHAT_OBJECTS, "Contact", "Lead", "User", nillable=False,
                updateable=False, relationship="LinkedEntity"),
            pick("ShareType", "Share Type", ("V", "C", "I"), restricted=True, defaulted=True, default="V"),
            pick("Visibility", "Visibility", ("AllUsers", "InternalUsers", "SharedUsers"), restricted=True,
                 defaulted=True, default="AllUsers")),
        SfObject("RecordType", "Record Type", "Record Types", "012", createable=False, deletable=False,
                 setup=True).add(
            *_system(owner=False), text("Name", "Record Type Label", 80, nillable=False),
            text("DeveloperName", "Record Type Name", 80, nillable=False), text("SobjectType", "SObject Type Name", 40),
            typed("IsActive", "Active", "boolean", nillable=False, defaulted=True),
            text("BusinessProcessId", "Business Process ID", 18), area("Description", "Description", 255)),
        SfObject("PermissionSet", "Permission Set", "Permission Sets", "0PS", setup=True).add(
            *_system(owner=False), text("Name", "Name", 80, nillable=False, unique=True),
            text("Label", "Label", 80, nillable=False), area("Description", "Description", 255),
            typed("IsOwnedByProfile", "Is Owned By Profile", "boolean", nillable=False, createable=False,
                  updateable=False, defaulted=True)),
        SfObject("PermissionSetAssignment", "Permission Set Assignment", "Permission Set Assignments", "0Pa",
                 setup=True).add(
            *_system(owner=False), ref("AssigneeId", "Assignee ID", "User", nillable=False, updateable=False),
            ref("PermissionSetId", "Permission Set ID", "PermissionSet", nillable=False, updateable=False)),
        SfObject("FieldPermissions", "Field Permissions", "Field Permissions", "01k", setup=True).add(
            *_system(owner=False), ref("ParentId", "Parent ID", "PermissionSet", nillable=False, updateable=False),
            text("SobjectType", "Sobject Type Name", 40, nillable=False, updateable=False),
            text("Field", "Field Name", 80, nillable=False, updateable=False),
            typed("PermissionsRead", "Read Access", "boolean", nillable=False, defaulted=True),
            typed("PermissionsEdit", "Edit Access", "boolean", nillable=False, defaulted=True)),
    ]
    if orders:
        objects.append(SfObject("Order", "Order", "Orders", "801").add(
            *_system(), ref("AccountId", "Account ID", "Account", nillable=False),
            ref("OpportunityId", "Opportunity ID", "Opportunity"), ref("Pricebook2Id", "Price Book ID", "Pricebook2"),
            typed("EffectiveDate", "Order Start Date", "date", nillable=False), typed("EndDate", "Order End Date", "date"),
            pick("Status", "Status", ("Draft", "Activated"), restricted=True, nillable=False),
            text("OrderReferenceNumber", "Order Reference Number", 80), text("PoNumber", "PO Number", 80),
            text("OrderNumber", "Order Number", 30, createable=False, updateable=False),
            money("TotalAmount", "Order Amount", createable=False, updateable=False),
            pick("Type", "Order Type", ("New", "Renewal")), area("Description", "Description")))
    return {o.name: o for o in objects}


def custom_object(api_name: str, label: str, plural: str, prefix: str) -> SfObject:
    """A custom object as an admin creates it in Setup: a text Name field, owner, system fields."""
    return SfObject(api_name, label, plural, prefix, custom=True, audit=True).add(
        *_system(), text("Name", f"{label} Name", 80, nillable=False))


def visible(obj: SfObject, name: str) -> SfField | None:
    found = obj.field(name)
    return found if found is not None and found.visible else None


def with_picklist(f: SfField, values: list[str]) -> SfField:
    return replace(f, picklist=tuple(values))
