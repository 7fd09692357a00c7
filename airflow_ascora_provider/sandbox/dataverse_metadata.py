"""Table, column, relationship and key definitions of the Dataverse emulator.

A Dataverse environment is described by metadata that clients must *read* rather than guess: the
entity set name in URLs (``accounts``, never a naive plural), the single-valued navigation property
an ``@odata.bind`` must use (``parentcustomerid_account``, ``regardingobjectid_asc_job_task``, the
case-sensitive ``asc_AccountId`` of a custom lookup), the option values behind a choice column, and
whether an alternate key's index is Active yet. This module holds that metadata, seeds the standard
tables a Dynamics 365 Sales migration touches, and implements the metadata *create* messages
(``EntityDefinitions``, ``.../Attributes``, ``RelationshipDefinitions``, ``.../Keys``,
``InsertOptionValue``) with the validation the documented API applies.

Facts come from ``shared/reference/salesforce-and-dataverse-api.md`` (part B). Where it is silent the
emulator picks the stricter behaviour and says so in a ``STRICTER:`` comment.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

LANGUAGE = 1033
STRING_TYPES = {"String", "Memo"}
KEYABLE_TYPES = {"String", "Integer", "Decimal", "DateTime", "Lookup", "Picklist"}
MAX_KEYS_PER_TABLE = 10
# STRICTER: the real index job takes seconds to minutes; a short, non-zero delay still forces a client
# to poll EntityKeyIndexStatus before using the key.
DEFAULT_KEY_ACTIVATION_SECONDS = 0.3

# @odata.type of each attribute metadata class -> AttributeType
ATTRIBUTE_CLASSES = {
    "Microsoft.Dynamics.CRM.StringAttributeMetadata": "String",
    "Microsoft.Dynamics.CRM.MemoAttributeMetadata": "Memo",
    "Microsoft.Dynamics.CRM.IntegerAttributeMetadata": "Integer",
    "Microsoft.Dynamics.CRM.DecimalAttributeMetadata": "Decimal",
    "Microsoft.Dynamics.CRM.DoubleAttributeMetadata": "Double",
    "Microsoft.Dynamics.CRM.MoneyAttributeMetadata": "Money",
    "Microsoft.Dynamics.CRM.BooleanAttributeMetadata": "Boolean",
    "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata": "DateTime",
    "Microsoft.Dynamics.CRM.PicklistAttributeMetadata": "Picklist",
    "Microsoft.Dynamics.CRM.MultiSelectPicklistAttributeMetadata": "Virtual",
    "Microsoft.Dynamics.CRM.BigIntAttributeMetadata": "BigInt",
}
CLASS_OF_TYPE = {v: k for k, v in ATTRIBUTE_CLASSES.items()}
CLASS_OF_TYPE.update({"Lookup": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                      "Customer": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                      "Owner": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                      "Uniqueidentifier": "Microsoft.Dynamics.CRM.AttributeMetadata",
                      "State": "Microsoft.Dynamics.CRM.StateAttributeMetadata",
                      "Status": "Microsoft.Dynamics.CRM.StatusAttributeMetadata"})


class DataverseError(Exception):
    """An error answer in Dataverse's shape: ``{"error": {"code": "0x8004...", "message": "..."}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def label(text: str) -> dict[str, Any]:
    return {"@odata.type": "Microsoft.Dynamics.CRM.Label",
            "LocalizedLabels": [{"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text,
                                 "LanguageCode": LANGUAGE}],
            "UserLocalizedLabel": {"Label": text, "LanguageCode": LANGUAGE}}


def label_text(value: Any) -> str:
    if isinstance(value, dict):
        for item in value.get("LocalizedLabels") or ():
            if item.get("Label"):
                return str(item["Label"])
        user = value.get("UserLocalizedLabel") or {}
        return str(user.get("Label") or "")
    return ""


def entity_set_name(logical: str) -> str:
    """Dataverse's collection name: ``account``→``accounts``, ``asc_property``→``asc_properties``.

    Deliberately not "add an s": a client that pluralises by itself gets 404s here as it would live.
    """
    if logical.endswith("y") and logical[-2:-1] not in "aeiou":
        return logical[:-1] + "ies"
    if logical.endswith(("s", "x", "ch", "sh")):
        return logical + "es"
    return logical + "s"


@dataclass
class Attribute:
    logical: str
    type: str  # String Memo Integer Decimal Double Money Boolean DateTime Picklist Virtual Lookup Customer Owner ...
    schema: str = ""
    label: str = ""
    max_length: int | None = None
    format: str | None = None  # DateOnly / DateAndTime for DateTime; Email/Phone/Url/Text for String
    options: dict[int, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()  # lookups
    required: str = "None"  # None / ApplicationRequired / SystemRequired
    custom: bool = False
    valid_for_create: bool = True
    valid_for_update: bool = True
    min_value: float | None = None
    max_value: float | None = None
    precision: int | None = None
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    published: bool = True

    def __post_init__(self) -> None:
        self.schema = self.schema or self.logical
        self.label = self.label or self.logical

    @property
    def is_lookup(self) -> bool:
        return self.type in ("Lookup", "Customer", "Owner")

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@odata.type": f"#{CLASS_OF_TYPE.get(self.type, 'Microsoft.Dynamics.CRM.AttributeMetadata')}",
            "MetadataId": self.metadata_id, "LogicalName": self.logical, "SchemaName": self.schema,
            "AttributeType": self.type, "AttributeTypeName": {"Value": _type_name(self.type)},
            "DisplayName": label(self.label), "IsCustomAttribute": self.custom,
            "IsValidForCreate": self.valid_for_create, "IsValidForUpdate": self.valid_for_update,
            "IsValidForRead": True, "RequiredLevel": {"Value": self.required},
        }
        if self.max_length is not None:
            out["MaxLength"] = self.max_length
        if self.type == "DateTime":
            out["Format"] = self.format or "DateAndTime"
        if self.type == "String":
            out["FormatName"] = {"Value": self.format or "Text"}
        if self.is_lookup:
            out["Targets"] = list(self.targets)
        if self.precision is not None:
            out["Precision"] = self.precision
        return out

    def render_option_set(self) -> dict[str, Any]:
        return {"@odata.type": "#Microsoft.Dynamics.CRM.OptionSetMetadata", "IsGlobal": False,
                "OptionSetType": "Picklist",
                "Options": [{"Value": v, "Label": label(t)} for v, t in sorted(self.options.items())]}


def _type_name(kind: str) -> str:
    return {"Virtual": "MultiSelectPicklistType"}.get(kind, f"{kind}Type")


@dataclass
class Relationship:
    """A 1:N relationship; the referencing side holds ``attribute`` and navigates through ``navigation``."""

    schema: str
    referenced: str
    referencing: str
    attribute: str
    navigation: str
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def render(self, referenced_pk: str) -> dict[str, Any]:
        return {"@odata.type": "#Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
                "MetadataId": self.metadata_id, "SchemaName": self.schema, "ReferencedEntity": self.referenced,
                "ReferencedAttribute": referenced_pk, "ReferencingEntity": self.referencing,
                "ReferencingAttribute": self.attribute,
                "ReferencingEntityNavigationPropertyName": self.navigation,
                "ReferencedEntityNavigationPropertyName": self.schema}


@dataclass
class Key:
    logical: str
    schema: str
    attributes: tuple[str, ...]
    created_at: float
    activation_seconds: float
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    failed: bool = False

    @property
    def status(self) -> str:
        if self.failed:
            return "Failed"
        return "Active" if time.monotonic() - self.created_at >= self.activation_seconds else "Pending"

    def render(self) -> dict[str, Any]:
        return {"MetadataId": self.metadata_id, "LogicalName": self.logical, "SchemaName": self.schema,
                "KeyAttributes": list(self.attributes), "EntityKeyIndexStatus": self.status,
                "AsyncJob": None}


@dataclass
class Entity:
    logical: str
    set_name: str
    primary_id: str
    primary_name: str | None
    label: str
    custom: bool = False
    customizable: bool = True
    has_notes: bool = False
    has_activities: bool = False
    is_activity: bool = False
    ownership: str = "UserOwned"
    schema: str = ""
    attributes: dict[str, Attribute] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    published: bool = True

    def __post_init__(self) -> None:
        self.schema = self.schema or self.logical

    def add(self, *attributes: Attribute) -> Entity:
        for attribute in attributes:
            self.attributes[attribute.logical] = attribute
        return self

    def render(self) -> dict[str, Any]:
        return {"@odata.type": "#Microsoft.Dynamics.CRM.EntityMetadata", "MetadataId": self.metadata_id,
                "LogicalName": self.logical, "SchemaName": self.schema, "EntitySetName": self.set_name,
                "LogicalCollectionName": self.set_name, "PrimaryIdAttribute": self.primary_id,
                "PrimaryNameAttribute": self.primary_name, "DisplayName": label(self.label),
                "IsCustomEntity": self.custom, "IsCustomizable": {"Value": self.customizable},
                "HasNotes": self.has_notes, "HasActivities": self.has_activities,
                "IsActivity": self.is_activity, "OwnershipType": self.ownership,
                "IsOptimisticConcurrencyEnabled": True}


def _s(logical: str, max_length: int = 100, **kw: Any) -> Attribute:
    return Attribute(logical, "String", max_length=max_length, **kw)


def _address(prefix: str) -> list[Attribute]:
    return [_s(f"{prefix}line1", 250), _s(f"{prefix}line2", 250), _s(f"{prefix}line3", 250),
            _s(f"{prefix}city", 80), _s(f"{prefix}stateorprovince", 50), _s(f"{prefix}postalcode", 20),
            _s(f"{prefix}country", 80), Attribute(f"{prefix}latitude", "Double", min_value=-90, max_value=90),
            Attribute(f"{prefix}longitude", "Double", min_value=-180, max_value=180)]


def system_attributes(entity: Entity, *, owned: bool = True) -> None:
    """Columns every table has: key, audit dates, state, owner."""
    entity.add(
        Attribute(entity.primary_id, "Uniqueidentifier", valid_for_update=False),
        Attribute("createdon", "DateTime", valid_for_create=False, valid_for_update=False),
        Attribute("modifiedon", "DateTime", valid_for_create=False, valid_for_update=False),
        # Written on create only; afterwards it holds the import time and createdon the supplied date.
        Attribute("overriddencreatedon", "DateTime", valid_for_update=False),
        Attribute("statecode", "State", options={0: "Active", 1: "Inactive"}, valid_for_create=False),
        Attribute("statuscode", "Status", options={1: "Active", 2: "Inactive"}),
    )
    if owned:
        entity.add(Attribute("ownerid", "Owner", targets=("systemuser", "team")))


def standard_entities() -> dict[str, Entity]:
    """The standard tables of Dynamics 365 Sales that an Ascora migration reads or writes."""
    account = Entity("account", "accounts", "accountid", "name", "Account", has_notes=True, has_activities=True)
    system_attributes(account)
    account.add(_s("name", 160, required="ApplicationRequired"), _s("accountnumber", 20),
                _s("emailaddress1", 100, format="Email"), _s("telephone1", 50, format="Phone"),
                _s("telephone2", 50, format="Phone"), _s("fax", 50), _s("websiteurl", 200, format="Url"),
                Attribute("description", "Memo", max_length=2000), *_address("address1_"), *_address("address2_"),
                Attribute("parentaccountid", "Lookup", targets=("account",)),
                Attribute("primarycontactid", "Lookup", targets=("contact",)))
    contact = Entity("contact", "contacts", "contactid", "fullname", "Contact", has_notes=True,
                     has_activities=True)
    system_attributes(contact)
    contact.add(_s("fullname", 160, valid_for_create=False, valid_for_update=False), _s("firstname", 50),
                _s("lastname", 50, required="ApplicationRequired"), _s("emailaddress1", 100, format="Email"),
                _s("telephone1", 50, format="Phone"), _s("mobilephone", 50, format="Phone"), _s("fax", 50),
                _s("jobtitle", 100), Attribute("description", "Memo", max_length=2000), *_address("address1_"),
                Attribute("parentcustomerid", "Customer", targets=("account", "contact")))
    lead = Entity("lead", "leads", "leadid", "fullname", "Lead", has_notes=True, has_activities=True)
    system_attributes(lead)
    lead.add(_s("fullname", 160, valid_for_create=False, valid_for_update=False), _s("subject", 300),
             _s("firstname", 50), _s("lastname", 50, required="ApplicationRequired"), _s("companyname", 100),
             _s("emailaddress1", 100, format="Email"), _s("telephone1", 50, format="Phone"),
             _s("mobilephone", 50, format="Phone"), Attribute("description", "Memo", max_length=2000),
             *_address("address1_"))
    opportunity = Entity("opportunity", "opportunities", "opportunityid", "name", "Opportunity",
                         has_notes=True, has_activities=True)
    system_attributes(opportunity)
    opportunity.add(_s("name", 300, required="ApplicationRequired"),
                    Attribute("customerid", "Customer", targets=("account", "contact")),
                    Attribute("parentaccountid", "Lookup", targets=("account",)),
                    Attribute("estimatedvalue", "Money", min_value=-922337203685477, max_value=922337203685477),
                    Attribute("estimatedclosedate", "DateTime", format="DateOnly"),
                    Attribute("description", "Memo", max_length=2000))
    product = Entity("opportunityproduct", "opportunityproducts", "opportunityproductid", "opportunityproductname",
                     "Opportunity Product", ownership="ParentOwned")
    system_attributes(product, owned=False)
    product.add(_s("opportunityproductname", 500, valid_for_create=False, valid_for_update=False),
                Attribute("opportunityid", "Lookup", targets=("opportunity",), required="SystemRequired"),
                Attribute("productdescription", "String", max_length=500),
                Attribute("isproductoverridden", "Boolean", options={0: "Existing", 1: "Write-In"}),
                Attribute("quantity", "Decimal", precision=5, min_value=-1e9, max_value=1e9),
                Attribute("priceperunit", "Money"), Attribute("manualdiscountamount", "Money"),
                Attribute("baseamount", "Money", valid_for_create=False, valid_for_update=False),
                Attribute("extendedamount", "Money", valid_for_create=False, valid_for_update=False),
                Attribute("description", "Memo", max_length=2000))
    task = Entity("task", "tasks", "activityid", "subject", "Task", is_activity=True)
    system_attributes(task)
    task.add(_s("subject", 200, required="ApplicationRequired"), Attribute("description", "Memo", max_length=2000),
             Attribute("scheduledstart", "DateTime"), Attribute("scheduledend", "DateTime"),
             Attribute("actualdurationminutes", "Integer", min_value=0, max_value=2147483647),
             Attribute("regardingobjectid", "Lookup", targets=()))
    annotation = Entity("annotation", "annotations", "annotationid", "subject", "Note", customizable=False)
    system_attributes(annotation)
    annotation.add(_s("subject", 500), Attribute("notetext", "Memo", max_length=100000), _s("filename", 255),
                   _s("mimetype", 256), Attribute("documentbody", "Memo", max_length=None),
                   Attribute("isdocument", "Boolean", options={0: "No", 1: "Yes"}),
                   Attribute("filesize", "Integer", valid_for_create=False, valid_for_update=False),
                   Attribute("objectid", "Lookup", targets=()))
    address = Entity("customeraddress", "customeraddresses", "customeraddressid", "name", "Address",
                     ownership="ParentOwned")
    system_attributes(address, owned=False)
    address.add(_s("name", 200), _s("line1", 250), _s("line2", 250), _s("city", 80), _s("stateorprovince", 50),
                _s("postalcode", 20), _s("country", 80), Attribute("latitude", "Double"),
                Attribute("longitude", "Double"),
                Attribute("addressnumber", "Integer", valid_for_create=False, valid_for_update=False),
                Attribute("parentid", "Lookup", targets=("account", "contact"), required="SystemRequired"))
    user = Entity("systemuser", "systemusers", "systemuserid", "fullname", "User", customizable=False,
                  ownership="BusinessOwned")
    system_attributes(user, owned=False)
    user.add(_s("fullname", 200), _s("internalemailaddress", 100, format="Email"), _s("domainname", 1024),
             Attribute("isdisabled", "Boolean"), Attribute("accessmode", "Picklist",
                                                            options={0: "Read-Write", 4: "Non-interactive"}),
             Attribute("applicationid", "Uniqueidentifier"))
    team = Entity("team", "teams", "teamid", "name", "Team", customizable=False, ownership="BusinessOwned")
    system_attributes(team, owned=False)
    team.add(_s("name", 160))
    organization = Entity("organization", "organizations", "organizationid", "name", "Organization",
                          customizable=False, ownership="None")
    organization.add(Attribute("organizationid", "Uniqueidentifier"), _s("name", 160),
                     Attribute("maxuploadfilesize", "Integer"))
    publisher = Entity("publisher", "publishers", "publisherid", "friendlyname", "Publisher", customizable=False,
                       ownership="OrganizationOwned")
    publisher.add(Attribute("publisherid", "Uniqueidentifier"), _s("friendlyname", 256), _s("uniquename", 256),
                  _s("customizationprefix", 8), Attribute("customizationoptionvalueprefix", "Integer"))
    return {e.logical: e for e in (account, contact, lead, opportunity, product, task, annotation, address, user,
                                   team, organization, publisher)}


def standard_relationships(entities: dict[str, Entity]) -> list[Relationship]:
    """1:N relationships of the standard tables, with the navigation names Dataverse gives them."""
    rels = [
        Relationship("account_parent_account", "account", "account", "parentaccountid", "parentaccountid"),
        Relationship("account_primary_contact", "contact", "account", "primarycontactid", "primarycontactid"),
        Relationship("contact_customer_accounts", "account", "contact", "parentcustomerid",
                     "parentcustomerid_account"),
        Relationship("contact_customer_contacts", "contact", "contact", "parentcustomerid",
                     "parentcustomerid_contact"),
        Relationship("opportunity_customer_accounts", "account", "opportunity", "customerid", "customerid_account"),
        Relationship("opportunity_customer_contacts", "contact", "opportunity", "customerid", "customerid_contact"),
        Relationship("opportunity_parent_account", "account", "opportunity", "parentaccountid", "parentaccountid"),
        Relationship("product_opportunities", "opportunity", "opportunityproduct", "opportunityid", "opportunityid"),
        Relationship("Account_CustomerAddress", "account", "customeraddress", "parentid", "parentid_account"),
        Relationship("Contact_CustomerAddress", "contact", "customeraddress", "parentid", "parentid_contact"),
    ]
    for entity in entities.values():
        if "ownerid" in entity.attributes:
            rels.append(Relationship(f"user_{entity.logical}", "systemuser", entity.logical, "ownerid", "ownerid"))
        rels.extend(activity_and_note_relationships(entity))
    return rels


def activity_and_note_relationships(entity: Entity) -> list[Relationship]:
    """``HasActivities`` adds a task regarding relationship; ``HasNotes`` an annotation one."""
    out = []
    if entity.has_activities:
        out.append(Relationship(f"{entity.logical}_Tasks", entity.logical, "task", "regardingobjectid",
                                f"regardingobjectid_{entity.logical}_task"))
    if entity.has_notes:
        out.append(Relationship(f"{entity.logical}_Annotations", entity.logical, "annotation", "objectid",
                                f"objectid_{entity.logical}"))
    return out
