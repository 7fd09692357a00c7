"""How alike two field names are: Ascora's vocabulary against a CRM's, with no network and no model.

CRMs spell the same idea many ways (``postcode``, ``BillingPostalCode``, ``address1_postalcode``,
``Billing_Code``, ``zipcode``), so plain string distance is not enough. A name is split into words
(``snake_case``, ``camelCase``, ``__c``/``cf_``/``new_`` wrappers, run-together words such as
``emailaddress1`` are segmented with the vocabulary below), the words are folded onto *concepts*
(``suburb`` and ``city`` are one concept) and the concepts are compared. RapidFuzz covers what the
vocabulary does not know. Address words also carry a *role* (the main address versus the postal or
shipping one) so ``postal_suburb`` prefers ``ShippingCity`` and ``suburb`` prefers ``BillingCity``.

The vocabulary is generic trade/CRM language, written once for every destination; nothing in it
names a particular CRM's field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz import fuzz

# concept -> phrases that express it, with how strongly (1.0 = the phrase *is* the concept).
CONCEPTS: dict[str, dict[str, float]] = {
    "first_name": {"first name": 1, "given name": 1, "firstname": 1, "fname": 0.8},
    "last_name": {"last name": 1, "surname": 1, "family name": 1, "lastname": 1, "lname": 0.8},
    "full_name": {"full name": 1, "contact name": 0.8, "person name": 0.8},
    "name": {"name": 1, "title": 0.6, "subject": 0.7, "label": 0.5, "display name": 0.9},
    "company": {"company": 1, "company name": 1, "organisation": 1, "organization": 1, "business name": 1,
                "account name": 0.9, "business": 0.7, "employer": 0.7},
    "email": {"email": 1, "e mail": 1, "email address": 1, "mail": 0.6},
    "phone": {"phone": 1, "telephone": 1, "tel": 0.8, "work phone": 1, "work number": 1, "phone number": 1,
              "landline": 1, "business phone": 1, "office phone": 1},
    "mobile": {"mobile": 1, "mobile phone": 1, "mobile number": 1, "cell": 1, "cell phone": 1, "mobilephone": 1},
    "fax": {"fax": 1, "facsimile": 1},
    "website": {"website": 1, "web site": 1, "url": 0.8, "homepage": 1, "domain": 0.7, "web": 0.7},
    "street": {"street": 1, "address line 1": 1, "line 1": 0.9, "address": 0.7, "street address": 1},
    "street2": {"address line 2": 1, "line 2": 0.9, "street 2": 1},
    "city": {"city": 1, "suburb": 1, "town": 1, "locality": 1},
    "state": {"state": 1, "province": 1, "region": 0.8, "state or province": 1, "county": 0.7},
    "postcode": {"postcode": 1, "post code": 1, "postal code": 1, "zip": 1, "zipcode": 1, "zip code": 1,
                 "postalcode": 1},
    "country": {"country": 1, "nation": 0.8},
    "latitude": {"latitude": 1, "lat": 0.8},
    "longitude": {"longitude": 1, "lng": 0.8, "lon": 0.8},
    "description": {"description": 1, "notes": 0.8, "note": 0.7, "details": 0.8, "comments": 0.7, "body": 0.7,
                    "content": 0.7, "summary": 0.6, "work undertaken": 0.6},
    "amount": {"amount": 1, "total": 0.9, "value": 0.7, "price": 0.6, "revenue": 0.6, "sum": 0.6, "grand total": 1},
    "net": {"ex tax": 0.3, "excluding tax": 0.3, "net": 0.3, "ex gst": 0.3},
    "gross": {"inc tax": 0.3, "including tax": 0.3, "gross": 0.3, "inc gst": 0.3},
    "tax": {"tax": 1, "gst": 1, "vat": 1},
    "close_date": {"close date": 1, "closing date": 1, "closed date": 1, "completed date": 1, "completion date": 1,
                   "expected close": 0.8, "date completed": 1, "closed": 0.6, "completed": 0.7},
    "start_date": {"start date": 1, "booking date": 0.9, "scheduled date": 1, "booked": 0.7, "start": 0.7},
    "expected_date": {"expected date": 1, "expected": 0.6, "target date": 0.8},
    "created": {"date created": 1, "created date": 1, "created at": 1, "created on": 1, "created": 0.8,
                "created time": 1, "creation date": 1},
    "updated": {"updated at": 1, "modified": 1, "last modified": 1, "modified on": 1, "updated": 1,
                "last update": 1, "modified time": 1, "modified date": 1},
    "deleted": {"deleted at": 1, "deleted": 1, "deleted on": 1},
    "due_date": {"due date": 1, "due": 0.8, "valid until": 0.9, "expiry": 0.8, "expiration date": 0.9,
                 "expires": 0.8, "valid till": 0.9},
    "status": {"status": 1, "stage": 0.8, "state of": 0.5, "phase": 0.6},
    "number": {"number": 1, "no": 0.8, "num": 0.8, "nbr": 0.8, "reference": 0.6, "ref": 0.6, "identifier": 0.5},
    "lead_source": {"lead source": 1, "source": 0.6, "referral source": 0.9, "origin": 0.6, "channel": 0.5},
    "type": {"type": 1, "category": 0.9, "kind": 0.8, "class": 0.6, "classification": 0.8},
    "role": {"role": 1, "job title": 1, "title": 0.6, "position": 0.9, "designation": 0.9, "job role": 1},
    "serial": {"serial": 1, "serial number": 1, "serial no": 1, "sn": 0.7},
    "make": {"make": 1, "brand": 1, "manufacturer": 1},
    "model": {"model": 1, "model number": 1},
    "install_date": {"install date": 1, "installation date": 1, "installed": 0.9, "installed on": 1,
                     "install": 0.8},
    "warranty": {"warranty": 1, "warranty expiry": 1, "warranty end": 1, "usage end": 0.8, "warranty until": 1},
    "quantity": {"quantity": 1, "qty": 1, "units": 0.7, "count": 0.6},
    "unit_price": {"unit price": 1, "price per unit": 1, "unit sell": 1, "sell price": 1, "list price": 0.8, "sales price": 0.9,
                   "rate": 0.6},
    "unit_cost": {"unit cost": 1, "cost": 0.9, "cost price": 1, "buy price": 1},
    "priority": {"priority": 1, "urgency": 0.9, "importance": 0.8},
    "duration": {"duration": 1, "hours": 0.8, "effort": 0.7, "time estimate": 0.8},
    "on_hold": {"on hold": 1, "hold": 0.8, "suspended": 0.7},
    "purchase_order": {"purchase order": 1, "po": 0.8, "po number": 1, "order number": 0.7, "customer po": 1},
    "team": {"team": 1, "department": 0.8, "group": 0.7, "crew": 0.9},
    "owner": {"owner": 1, "assigned user": 1, "assignee": 1, "assigned to": 1, "technician": 0.8},
    "location": {"location": 1, "place": 0.7},
    "paid": {"paid": 1, "amount paid": 1, "payments": 0.8},
    "outstanding": {"outstanding": 1, "balance": 1, "balance due": 1, "amount due": 1, "owing": 1},
    "invoice_date": {"invoice date": 1, "issue date": 1, "issued": 0.8, "date issued": 1, "billing date": 0.8},
    "quote_date": {"quote date": 1, "quoted": 0.7, "proposal date": 0.9},
    "discount": {"discount": 1, "rebate": 0.8},
    "pricing": {"pricing method": 1, "pricing": 0.9, "billing method": 0.8, "price type": 0.7},
    "reason_lost": {"reason for loss": 1, "loss reason": 1, "lost reason": 1, "reason lost": 1},
    "account_code": {"account code": 1, "ledger code": 0.9, "gl code": 0.9},
    "tax_code": {"tax code": 1, "tax rate": 0.7},
    "measure": {"unit of measure": 1, "uom": 1, "unit": 0.6},
    "labour": {"labour": 1, "labor": 1, "labour role": 1},
    "activity": {"activity type": 1, "activity": 0.8, "call type": 0.6},
    "author": {"author": 1, "created by": 0.9, "written by": 0.9},
    "file": {"file": 1, "file name": 1, "filename": 1, "document": 0.7, "attachment": 0.7},
    "customer": {"customer": 1, "client": 1, "account": 0.6, "contact": 0.4},
    "accounting": {"accounting system": 1, "accounting": 0.8, "xero": 0.8, "myob": 0.8, "quickbooks": 0.8},
}
# Words that say which address a field belongs to, never what it holds.
PRIMARY_ROLE = {"billing", "primary", "main", "physical"}
SECONDARY_ROLE = {"postal", "shipping", "mailing", "other", "delivery", "secondary"}
ADDRESS_CONCEPTS = {"street", "street2", "city", "state", "postcode", "country", "latitude", "longitude"}
# Wrappers and noise: Salesforce/Zoho ``__c``, Freshsales ``cf_``, Dataverse publisher prefixes, ours.
NOISE = {"c", "cf", "new", "ascora", "the", "of", "custom", "field", "fld", "x"}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_DIGITS = re.compile(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])")


def _vocabulary() -> frozenset[str]:
    words = {w for phrases in CONCEPTS.values() for p in phrases for w in p.split()}
    extra = {"address", "billing", "shipping", "mailing", "postal", "other", "primary", "or", "id", "date",
             "line", "job", "quote", "invoice", "site", "deal", "account", "contact", "lead", "opportunity",
             "customer", "work", "mobile", "home", "url", "item", "section", "order", "expected", "close",
             "sales", "product", "annual", "employees", "industry", "owner", "asset", "equipment", "estimated",
             "per", "actual", "scheduled", "end", "code"}
    return frozenset(words | extra | PRIMARY_ROLE | SECONDARY_ROLE)


VOCABULARY = _vocabulary()


def _segment(word: str) -> list[str]:
    """Split a run-together word ("emailaddress", "stateorprovince") into known words, if it can be."""
    if word in VOCABULARY or len(word) < 6:
        return [word]
    best: list[str] | None = None

    def walk(rest: str, parts: list[str]) -> None:
        nonlocal best
        if best is not None:
            return
        if not rest:
            best = parts
            return
        for end in range(len(rest), 1, -1):  # longest known prefix first
            if rest[:end] in VOCABULARY:
                walk(rest[end:], [*parts, rest[:end]])

    walk(word, [])
    return best or [word]


@lru_cache(maxsize=8192)
def tokens(name: str) -> tuple[str, ...]:
    """``BillingPostalCode`` -> (billing, postal, code); ``address1_line1`` -> (address, 1, line, 1)."""
    spaced = _CAMEL.sub(" ", name)
    words: list[str] = []
    for raw in _NON_WORD.sub(" ", spaced).lower().split():
        for piece in _DIGITS.sub(" ", raw).split():
            for word in _segment(piece):
                if len(word) > 3 and word.endswith("s") and word[:-1] in VOCABULARY:
                    word = word[:-1]  # emails -> email, phones -> phone
                words.append(word)
    return tuple(words)


@dataclass(frozen=True)
class NameProfile:
    """A field name reduced to what it means."""

    text: str  # cleaned words, for fuzzy matching
    concepts: dict[str, float]
    mass: float  # how much the name says: matched phrases at their weight, other words a little
    role: str | None  # "primary" or "secondary" for address parts, else None


def profile(name: str, context: tuple[str, ...] = ()) -> NameProfile:
    """``context``: words of the object the field sits on (``Deal_Name`` on Deals is just "name")."""
    words = [w for w in tokens(name) if w not in NOISE]
    role = None
    # Dataverse numbers its addresses: "address1_city", "address2_line1".
    for i in range(len(words) - 1):
        if words[i] == "address" and words[i + 1] in ("1", "2"):
            role = "primary" if words[i + 1] == "1" else "secondary"
            words[i] = words[i + 1] = ""
    words = [w for w in words if w]
    stripped = [w for w in words if w not in context] or words
    concepts, mass, free = _concepts(stripped)
    roles = set(free)
    if "code" in free and roles & (PRIMARY_ROLE | SECONDARY_ROLE) and not concepts:
        concepts, mass = {"postcode": 1.0}, mass + 0.7  # Zoho's "Billing_Code" is the postcode
    if roles & SECONDARY_ROLE:
        role = "secondary"
    elif roles & PRIMARY_ROLE:
        role = role or "primary"
    mass -= 0.3 * len(roles & (SECONDARY_ROLE | PRIMARY_ROLE))  # role words say where, not what
    text = " ".join(w for w in stripped if w not in PRIMARY_ROLE and w not in SECONDARY_ROLE
                    and not w.isdigit()) or " ".join(stripped)
    return NameProfile(text, concepts, max(mass, 0.0), role)


def _concepts(words: list[str]) -> tuple[dict[str, float], float, list[str]]:
    """Concepts found (longest phrases first; a word inside a longer phrase is not counted again on its
    own), the name's mass, and the words no phrase explained."""
    found: dict[str, float] = {}
    used = [False] * len(words)
    mass = 0.0
    for size in (3, 2, 1):
        for i in range(len(words) - size + 1):
            if any(used[i:i + size]):
                continue
            phrase = " ".join(words[i:i + size])
            hits = {c: w for c, phrases in CONCEPTS.items() if (w := phrases.get(phrase))}
            if hits:
                for concept, weight in hits.items():
                    found[concept] = max(found.get(concept, 0.0), weight)
                mass += max(hits.values())
                for j in range(i, i + size):
                    used[j] = True
    free = [w for w, u in zip(words, used) if not u and not w.isdigit()]
    return found, mass + 0.3 * len(free), free


def concept_score(a: NameProfile, b: NameProfile) -> float:
    """Weighted Dice overlap of two names' concepts (0 when either has none)."""
    if not a.concepts or not b.concepts:
        return 0.0
    common = sum(min(a.concepts[c], b.concepts[c]) for c in a.concepts.keys() & b.concepts.keys())
    return min(1.0, 2 * common / (a.mass + b.mass)) if common else 0.0


def name_similarity(source: NameProfile, dest: NameProfile) -> tuple[float, str]:
    """Similarity in [0, 1] and a short reason."""
    concepts = concept_score(source, dest)
    fuzzy = max(fuzz.token_sort_ratio(source.text, dest.text),
                fuzz.ratio(source.text.replace(" ", ""), dest.text.replace(" ", ""))) / 100.0
    if concepts >= 0.9 * fuzzy:
        score = concepts
        shared = sorted(source.concepts.keys() & dest.concepts.keys())
        reason = f"same meaning ({', '.join(c.replace('_', ' ') for c in shared)})"
    else:
        score = 0.9 * fuzzy
        reason = f"similar name ({fuzzy:.0%})"
    if source.role and dest.role and source.role != dest.role and ADDRESS_CONCEPTS & source.concepts.keys():
        score *= 0.6
        reason += f"; but {source.role} vs {dest.role} address"
    elif source.role and dest.role == source.role:
        score = min(1.0, score + 0.05)
    elif not source.role and dest.role == "secondary" and ADDRESS_CONCEPTS & source.concepts.keys():
        score *= 0.8  # the main address belongs in the main address fields
    return score, reason


def humanise(name: str) -> str:
    """Words of a field name for display and for the embedding model ("BillingPostalCode" -> "billing postal code")."""
    return " ".join(w for w in tokens(name) if w not in NOISE) or name
