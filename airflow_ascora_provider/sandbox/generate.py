"""Deterministic synthetic Ascora tenants: API-shape JSONL, real attachment bytes, optional Excel/CSV exports.

Why a generator: nobody on the project has an Ascora tenant, and a migration tool is only as good as
the worst data it has met. So this writes a whole trade business (an Australian plumbing / electrical /
HVAC / solar / pest / landscaping outfit) in the exact shapes of ``/work/shared/reference/ascora-api.md``
§6.2, at any size from a few hundred records to two million, and, with ``dirty=True``, with the mess
real tenants carry, each case listed in ``dirty_manifest.json`` so tests can prove the pipeline caught it.

Layout written (the emulator in :mod:`.ascora` and the export writer read exactly this)::

    <tenant>/tenant.json                 seed, size, dirty, api_key, counts, generated_at, ...
    <tenant>/api/<resource>.jsonl        one API-shape object per line
    <tenant>/files/<attachmentId>/<fileName>   real bytes (PNG, JPEG, PDF, DOCX), a few hundred bytes to ~3 KB
    <tenant>/dirty_manifest.json         only with dirty=True: kind -> [{resource, id, field, ...}]
    <tenant>/exports/                    only when formats include "xlsx" or "csv"

Design choices, and why:

* **Determinism.** One :class:`random.Random` seeded from ``seed`` drives every clean value, in a fixed
  order, and every id is ``uuid.UUID(int=rng.getrandbits(128), version=4)``. Dirty decisions draw from a
  *second* generator, so a dirty tenant is the clean tenant of the same seed plus the mess (same ids,
  same numbers), which makes "did the pipeline catch exactly the injected problems" testable.
  ``generated_at`` is derived from the seed, never from the clock: two runs are byte-identical.
* **Streaming.** Records are produced per billing-customer "household" (the customer, its sites,
  contacts, jobs, quotes, invoices, notes ...) and written immediately. Only small indexes live for the
  whole run (staff, suppliers, supplies, job types), so two million records need no more memory than
  two thousand.
* **Size.** ``size`` is the approximate total number of records over *all* objects, counting nested
  records the canonical model stages separately (quote items and sections, invoice lines, supplier
  invoice lines). Per-object counts follow fixed ratios per household (per billing customer ~1.5 sites,
  ~2.3 contacts, ~5.7 jobs incl. sections, ~1.2 quotes with ~3.5 items, ~3 invoices lines per job
  invoiced ...); households are added until the running total reaches ``size``. Staff
  ``max(5, size/5000)`` capped at 200, 12 job types, suppliers ``size/500`` (min 5), supplies
  ``size/250`` (30..5000).
* **Realism.** Real suburb/state/postcode combinations, AU phone formats, ABNs with a valid check digit,
  GST at 10%, money in whole cents (no float drift: totals always add up), every job status, quote status
  and invoice status present (the first few records cycle through them so even a tiny tenant has all).

Shapes beyond the §6.2 contract (all *ext*, none exists in the real API as far as public material shows):

* jobs: ``bookingDate``, ``expectedDate``, ``expectedDuration``, ``estimatedDuration`` (hours) and
  ``invoiceNumber``: what Jobs-export columns Y, Z, AA, AD and AB carry; ``team`` is a ``{id, name}``
  link like every other reference;
* quotes: ``state`` (the §6.2 quote lists no state), ``assignedUser`` and ``dateCreated``;
* customers: ``accountingSystem`` is ``"Xero" | "MYOB" | "QuickBooks"`` or ``null`` (= none); invoices
  copy it; equipment ``customerId`` is the billing customer, ``siteCustomerId`` the site (or null);
* notes: ``activityType``; enquiries: ``leadSource`` is the source's name (as ``POST /Enquiry`` takes it);
* resources the emulator also serves: ``payments`` (for Paid / Part Paid invoices),
  ``standard_sections`` and ``standard_stages``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from airflow_ascora_provider.source.model import INVOICE_STATUSES, JOB_STATUSES, QUOTE_STATUSES

API_KEY = "ascora-sandbox-key"
FORMAT_VERSION = 1


RESOURCES = (
    "customers",
    "contacts",
    "jobs",
    "quotes",
    "invoices",
    "payments",
    "suppliers",
    "supplier_invoices",
    "supplies",
    "kits",
    "categories",
    "labour_roles",
    "standard_sections",
    "standard_stages",
    "job_types",
    "users",
    "equipment",
    "notes",
    "attachments",
    "enquiries",
    "form_responses",
)

# Status names in code order (0 = In Progress ...): one list, in the canonical model.
JOB_STATUS_TEXT, QUOTE_STATUS_TEXT = JOB_STATUSES, QUOTE_STATUSES

# Average records per household (nested records included), measured over large tenants; only used to
# size the creation-date jitter of one household.
_PER_HOUSEHOLD = 41.0
_FILE_BATCH = 512  # attachment files written per parallel burst

# ---------------------------------------------------------------------------------------------------
# Embedded reference data (small on purpose: realistic, not exhaustive)

# fmt: off
# (suburb, state, postcode, latitude, longitude): real combinations across every state and territory.
SUBURBS: tuple[tuple[str, str, str, float, float], ...] = (
    ("Sydney", "NSW", "2000", -33.8688, 151.2093),
    ("Parramatta", "NSW", "2150", -33.8150, 151.0011),
    ("Chatswood", "NSW", "2067", -33.7969, 151.1831),
    ("Bondi", "NSW", "2026", -33.8915, 151.2767),
    ("Manly", "NSW", "2095", -33.7969, 151.2840),
    ("Penrith", "NSW", "2750", -33.7507, 150.6877),
    ("Liverpool", "NSW", "2170", -33.9200, 150.9238),
    ("Newcastle", "NSW", "2300", -32.9283, 151.7817),
    ("Wollongong", "NSW", "2500", -34.4278, 150.8931),
    ("Hornsby", "NSW", "2077", -33.7047, 151.0990),
    ("Blacktown", "NSW", "2148", -33.7710, 150.9063),
    ("Cronulla", "NSW", "2230", -34.0553, 151.1525),
    ("Gosford", "NSW", "2250", -33.4260, 151.3420),
    ("Castle Hill", "NSW", "2154", -33.7310, 151.0050),
    ("Dubbo", "NSW", "2830", -32.2569, 148.6011),
    ("Melbourne", "VIC", "3000", -37.8136, 144.9631),
    ("Richmond", "VIC", "3121", -37.8230, 144.9980),
    ("St Kilda", "VIC", "3182", -37.8676, 144.9809),
    ("Geelong", "VIC", "3220", -38.1499, 144.3617),
    ("Ballarat Central", "VIC", "3350", -37.5622, 143.8503),
    ("Bendigo", "VIC", "3550", -36.7570, 144.2794),
    ("Box Hill", "VIC", "3128", -37.8190, 145.1220),
    ("Frankston", "VIC", "3199", -38.1440, 145.1260),
    ("Dandenong", "VIC", "3175", -37.9870, 145.2150),
    ("Footscray", "VIC", "3011", -37.8000, 144.9000),
    ("Brunswick", "VIC", "3056", -37.7670, 144.9620),
    ("Brisbane City", "QLD", "4000", -27.4698, 153.0251),
    ("Fortitude Valley", "QLD", "4006", -27.4570, 153.0340),
    ("Southport", "QLD", "4215", -27.9670, 153.4000),
    ("Surfers Paradise", "QLD", "4217", -28.0023, 153.4145),
    ("Townsville City", "QLD", "4810", -19.2590, 146.8169),
    ("Cairns City", "QLD", "4870", -16.9186, 145.7781),
    ("Toowoomba City", "QLD", "4350", -27.5606, 151.9539),
    ("Ipswich", "QLD", "4305", -27.6144, 152.7608),
    ("Maroochydore", "QLD", "4558", -26.6590, 153.0990),
    ("Chermside", "QLD", "4032", -27.3850, 153.0310),
    ("Perth", "WA", "6000", -31.9523, 115.8613),
    ("Fremantle", "WA", "6160", -32.0569, 115.7439),
    ("Cannington", "WA", "6107", -32.0170, 115.9340),
    ("Joondalup", "WA", "6027", -31.7450, 115.7660),
    ("Midland", "WA", "6056", -31.8880, 116.0100),
    ("Rockingham", "WA", "6168", -32.2770, 115.7300),
    ("Scarborough", "WA", "6019", -31.8940, 115.7560),
    ("Bunbury", "WA", "6230", -33.3270, 115.6410),
    ("Adelaide", "SA", "5000", -34.9285, 138.6007),
    ("Glenelg", "SA", "5045", -34.9800, 138.5150),
    ("Norwood", "SA", "5067", -34.9210, 138.6300),
    ("Mawson Lakes", "SA", "5095", -34.8090, 138.6100),
    ("Mount Barker", "SA", "5251", -35.0670, 138.8570),
    ("Hobart", "TAS", "7000", -42.8821, 147.3272),
    ("Sandy Bay", "TAS", "7005", -42.8940, 147.3240),
    ("Launceston", "TAS", "7250", -41.4332, 147.1441),
    ("Devonport", "TAS", "7310", -41.1800, 146.3510),
    ("Canberra", "ACT", "2601", -35.2809, 149.1300),
    ("Belconnen", "ACT", "2617", -35.2386, 149.0690),
    ("Kingston", "ACT", "2604", -35.3150, 149.1460),
    ("Tuggeranong", "ACT", "2900", -35.4244, 149.0888),
    ("Darwin City", "NT", "0800", -12.4634, 130.8456),
    ("Palmerston City", "NT", "0830", -12.4800, 130.9830),
    ("Alice Springs", "NT", "0870", -23.6980, 133.8807),
)
STATES = ("NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT")
# Landline area code and plausible first digits of the local number per state.
_AREA = {
    "NSW": ("02", "9864"),
    "ACT": ("02", "6"),
    "VIC": ("03", "9857"),
    "TAS": ("03", "6"),
    "QLD": ("07", "3754"),
    "WA": ("08", "9600"),
    "SA": ("08", "8"),
    "NT": ("08", "8"),
}

FIRST_NAMES = (
    "Jack", "Oliver", "William", "Noah", "Thomas", "James", "Lucas", "Henry", "Liam", "Ethan", "Mason",
    "Cooper", "Lachlan", "Riley", "Harrison", "Samuel", "Daniel", "Matthew", "Joshua", "Ryan", "Nathan",
    "Michael", "David", "Peter", "Mark", "Steven", "Craig", "Darren", "Wayne", "Bruce",
    "Charlotte", "Olivia", "Amelia", "Isla", "Mia", "Ava", "Grace", "Chloe", "Sophie", "Emily",
    "Ruby", "Zoe", "Matilda", "Harper", "Ella", "Sarah", "Jessica", "Emma", "Rebecca", "Michelle",
    "Karen", "Sharon", "Lisa", "Nicole", "Priya", "Mei", "Aisha", "Thi", "Hannah", "Leah",
)
LAST_NAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin", "Anderson",
    "Thompson", "Nguyen", "Thomas", "Walker", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King",
    "Davis", "Wright", "Evans", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel",
    "Khan", "Tran", "Le", "Chen", "Wang", "Singh", "Murphy", "O'Brien", "McDonald", "Campbell",
    "Stewart", "Mitchell", "Young", "Scott", "Baker", "Hughes", "Edwards", "Turner", "Hill", "Cooper",
    "Morris", "Ward", "Collins", "Bell", "Russell", "Papadopoulos", "Rossi", "Kowalski", "Haddad", "Ng",
)
STREETS = (
    "George", "Pitt", "King", "Queen", "Victoria", "Albert", "Elizabeth", "Church", "High", "Station",
    "Railway", "Park", "Beach", "Ocean", "Bay", "Hill", "Wattle", "Banksia", "Acacia", "Jacaranda",
    "Waratah", "Bottlebrush", "Kurrajong", "Boundary", "Pacific", "Main", "Bridge", "Mill", "Forest",
    "River", "Lake", "Harbour", "Cliff", "Ridge", "Gum Tree", "Illawarra", "Murray", "Darling", "Flinders",
    "Macquarie",
)
STREET_TYPES = ("St", "St", "St", "Rd", "Rd", "Ave", "Cres", "Pde", "Dr", "Ct", "Pl", "Hwy", "Lane",
                "Tce", "Way")
EMAIL_DOMAINS = ("gmail.com", "bigpond.com", "outlook.com", "icloud.com", "optusnet.com.au", "hotmail.com",
                 "yahoo.com.au", "iinet.net.au", "tpg.com.au")
BUSINESS_WORDS = (
    "Harbourside", "Southern Cross", "Coastal", "Bayside", "Red Gum", "Ironbark", "Outback", "Metro",
    "Summit", "Bluewater", "Wattle", "Kookaburra", "Eastside", "Westside", "Northern Beaches", "Sunshine",
    "Golden Wattle", "Blue Mountains", "Riverside", "Hillcrest", "Parkview", "Seaview", "Pioneer",
    "Federation", "Anzac", "Koala", "Banksia", "Granite", "Sandstone", "Silver Gull",
)
BUSINESS_KINDS = (
    "Property Management", "Real Estate", "Cafe", "Medical Centre", "Dental", "Childcare", "Motors",
    "Constructions", "Builders", "Hotel", "Bakery", "Veterinary Clinic", "Fitness", "Accountants",
    "Pharmacy", "Hardware", "Storage", "Logistics", "Plumbing", "Electrical", "Furniture", "Pub",
)
BUSINESS_SUFFIX = ("Pty Ltd", "Pty Ltd", "Pty Ltd", "Pty Ltd", "Group", "& Co", "& Sons Pty Ltd",
                   "Holdings Pty Ltd", "")
GOVERNMENT = (
    "City of {s} Council", "Department of Education - {st} Asset Management", "{st} Health - {s} Hospital",
    "Department of Housing {st}", "{s} Public School", "Police Station {s}",
)
LEAD_SOURCES = ("Google", "Facebook", "Word of Mouth", "Repeat Customer", "hipages", "Website",
                "Yellow Pages",
                "Referral - Builder", "Van Signage", "Instagram")
CUSTOMER_TYPES = ("Residential", "Commercial", "Strata", "Government")
CONTACT_ROLES = ("Owner", "Tenant", "Property Manager", "Site Manager", "Accounts Payable",
                 "Facilities Manager",
                 "Strata Manager", "Building Manager", "Office Manager")
ACCOUNTING_SYSTEMS = ("Xero", "MYOB", "QuickBooks")
TEAMS = ("North Crew", "South Crew", "Install Team", "Service Team", "Commercial Team", "Maintenance Team")
LABOUR_ROLES = (("Apprentice", 4500), ("Tradesperson", 9500), ("Senior Tradesperson", 11500),
                ("Supervisor", 13000),
                ("Labourer", 6000), ("Project Manager", 15000))
NOTE_TEXTS = (
    ("Call", "Called customer to confirm booking for {d} AM. Gate code given."),
    ("Call", "Customer rang asking for ETA, advised tech is running 30 mins late."),
    ("Call", "Left voicemail re quote follow-up."),
    ("Site Visit", "Tech on site. Isolated supply, existing unit corroded at inlet."),
    ("Site Visit", "Parts on order, return visit required. Customer happy with plan."),
    ("Site Visit", "Completed works, site left clean and tidy. Photos uploaded."),
    ("Email", "Emailed quote and compliance certificate to customer."),
    ("Email", "Sent invoice reminder, customer to pay by EFT Friday."),
    ("Internal", "Check stock of PTR valves before next booking."),
    ("Internal", "Dog on site - call ahead. Key in lockbox."),
    ("Internal", "Strata approval required before any roof work."),
)
PAYMENT_METHODS = ("EFT", "Credit Card", "Cash", "Cheque", "BPAY")

# Per trade: word used in business names, extra job types, job templates and supplies.
# Job template: (name, description, work undertaken, job type, (min cents, max cents), custom fields).
TRADES: dict[str, dict[str, Any]] = {
    "plumbing": {
        "word": "Plumbing",
        "job_types": ("Blocked Drain", "Hot Water Service", "Gas Fitting"),
        "jobs": (
            ("Blocked drain - kitchen", "Kitchen sink draining slowly, gurgling in the laundry.",
             "Cleared blockage with electric eel, CCTV inspection showed roots at junction.", "Blocked Drain",
             (18000, 65000), ("Roof Access",)),
            ("Replace hot water system", "Existing hot water unit leaking from base, approx 15 years old.",
             "Removed old unit, installed new unit, tested and commissioned, old unit disposed.",
             "Hot Water Service", (220000, 480000), ("Hot Water Unit Brand", "Gas Certificate No")),
            ("Leaking tap repair", "Bathroom basin mixer dripping constantly.",
             "Replaced cartridge and O-rings, tested, no leaks.", "Service Call", (12000, 35000), ()),
            ("Burst pipe - emergency", "Water coming through ceiling in hallway.",
             "Isolated supply, cut out and replaced 1.2m of 15mm copper, pressure tested.",
                 "Emergency Callout",
             (35000, 150000), ("Roof Access",)),
            ("Gas leak investigation", "Smell of gas near meter.",
             "Leak found at meter union, remade joint, leak tested OK, certificate issued.", "Gas Fitting",
             (25000, 90000), ("Gas Certificate No",)),
            ("Toilet cistern replacement", "Cistern cracked, running constantly.",
             "Supplied and installed new dual flush cistern.", "Installation", (45000, 120000), ()),
            ("Backflow prevention test", "Annual backflow device test due.",
             "Tested RPZ device, all readings within spec, report lodged with water authority.",
             "Compliance Inspection", (15000, 30000), ()),
        ),
        "supplies": (
            ("RHE-STL330", "Rheem Stellar 330L gas hot water unit", 165000, "ea"),
            ("RIN-B26", "Rinnai B26 continuous flow gas HWS", 98000, "ea"),
            ("PTR-15", "PTR valve 15mm 1000kPa", 3500, "ea"),
            ("CU-15-6", "Copper pipe 15mm x 6m type B", 4800, "length"),
            ("PEX-20-50", "PEX pipe 20mm x 50m coil", 12500, "roll"),
            ("TAP-CART", "Ceramic disc cartridge 35mm", 2200, "ea"),
            ("CIS-DF", "Dual flush cistern concealed", 31000, "ea"),
            ("PVC-100-BEND", "PVC DWV bend 100mm 88deg", 900, "ea"),
            ("TEF-TAPE", "Thread seal tape 12mm", 150, "roll"),
            ("FLX-300", "Braided flexible hose 300mm", 1200, "ea"),
        ),
    },
    "electrical": {
        "word": "Electrical",
        "job_types": ("Switchboard Upgrade", "Lighting", "Test & Tag"),
        "jobs": (
            ("Switchboard upgrade", "Old ceramic fuse board, customer wants safety switches.",
             "Replaced board with new 18-pole enclosure, 4 RCBOs, labelled circuits, CCEW lodged.",
             "Switchboard Upgrade", (120000, 320000), ("Switchboard Type", "Compliance Certificate No")),
            ("Install LED downlights", "Replace 12 halogen downlights with LED.",
             "Installed 12 x 10W LED downlights, tested all circuits.", "Lighting", (60000, 180000),
             ("Roof Access",)),
            ("Power point not working", "Kitchen GPO dead after storm.",
             "Found tripped RCD due to faulty appliance, reset, tested circuit.",
                 "Service Call", (12000, 30000),
             ("Switchboard Type",)),
            ("Smoke alarm compliance", "Rental property smoke alarm annual check.",
             "Tested and replaced 3 x 240V interconnected smoke alarms, certificate issued.",
             "Compliance Inspection", (15000, 45000), ("Compliance Certificate No",)),
            ("Test and tag - office", "Annual test & tag of portable appliances.",
             "Tested and tagged 86 appliances, 2 failed and removed from service.",
                 "Test & Tag", (30000, 90000), ()),
            ("Emergency power outage", "No power to half the house.",
             "Replaced failed main switch, restored supply.", "Emergency Callout", (25000, 70000),
             ("Switchboard Type",)),
        ),
        "supplies": (
            ("CLI-RCBO20", "Clipsal RCBO 20A 30mA", 7800, "ea"),
            ("CLI-2025", "Clipsal 2025 double GPO white", 1100, "ea"),
            ("LED-DL10", "LED downlight 10W tri-colour", 1900, "ea"),
            ("TPS-2.5-100", "2.5mm TPS cable 100m", 16500, "roll"),
            ("SMK-240", "240V photoelectric smoke alarm", 4500, "ea"),
            ("SWB-18P", "Switchboard enclosure 18 pole", 14500, "ea"),
            ("MCB-16", "Circuit breaker 16A 6kA", 1400, "ea"),
            ("JB-4T", "Junction box 4 terminal", 450, "ea"),
        ),
    },
    "hvac": {
        "word": "Air Conditioning",
        "job_types": ("Split System Install", "Ducted Service"),
        "jobs": (
            ("Install split system", "Supply and install 7.1kW split system to living room.",
             "Installed Daikin 7.1kW split, back to back install, commissioned, customer shown controls.",
             "Split System Install", (220000, 420000), ("Roof Access",)),
            ("Ducted aircon service", "Annual service of ducted reverse cycle system.",
             "Cleaned filters and return air grille, checked gas pressures, all OK.", "Ducted Service",
             (18000, 38000), ("Roof Access",)),
            ("Aircon not cooling", "Unit running but blowing warm air.",
             "Found refrigerant leak at flare, repaired and regassed.", "Service Call", (25000, 90000), ()),
            ("Commercial HVAC maintenance", "Quarterly maintenance of rooftop package units.",
             "Serviced 3 rooftop units, replaced belts and filters.", "Maintenance", (60000, 160000),
             ("Roof Access",)),
        ),
        "supplies": (
            ("DAI-FTXM71", "Daikin FTXM71 7.1kW split system", 215000, "ea"),
            ("MIT-MSZ35", "Mitsubishi MSZ-AP35 3.5kW split", 125000, "ea"),
            ("FLT-RA", "Return air filter 600x600", 3500, "ea"),
            ("R32-10", "R32 refrigerant 10kg", 42000, "bottle"),
            ("PC-14-38", "Pair coil 1/4 x 3/8 per m", 2200, "m"),
            ("BKT-WALL", "Outdoor unit wall bracket", 6500, "ea"),
        ),
    },
    "solar": {
        "word": "Solar",
        "job_types": ("Solar Install", "Battery Install"),
        "jobs": (
            ("6.6kW solar installation", "Supply and install 6.6kW solar PV system.",
             "Installed 16 x 415W panels, Fronius inverter, commissioned, STC paperwork lodged.",
                 "Solar Install",
             (480000, 820000), ("Roof Access", "Compliance Certificate No")),
            ("Battery installation", "Add 10kWh home battery to existing solar.",
             "Installed 10kWh battery and backup gateway, configured app.", "Battery Install",
             (900000, 1400000), ("Switchboard Type",)),
            ("Inverter fault", "Inverter showing earth fault error.",
             "Found water ingress in rooftop isolator, replaced isolator.", "Service Call", (20000, 60000),
             ("Roof Access",)),
            ("Panel clean and inspection", "Annual solar panel clean.",
             "Cleaned 20 panels, inspected mounting and cabling.",
                 "Maintenance", (18000, 35000), ("Roof Access",)),
        ),
        "supplies": (
            ("JA-415", "JA Solar 415W mono panel", 19500, "ea"),
            ("FRO-PRI5", "Fronius Primo 5.0 inverter", 185000, "ea"),
            ("BYD-10", "BYD battery box 10.2kWh", 780000, "ea"),
            ("ISO-DC", "Rooftop DC isolator", 9500, "ea"),
            ("RAIL-4", "Mounting rail 4.2m", 4800, "ea"),
        ),
    },
    "pest": {
        "word": "Pest Control",
        "job_types": ("Termite Inspection", "General Pest Treatment"),
        "jobs": (
            ("General pest treatment", "Cockroaches and spiders, internal and external spray.",
             "Treated internal skirtings and external perimeter, gel baits in kitchen.",
                 "General Pest Treatment",
             (18000, 42000), ("Pets On Site",)),
            ("Termite inspection", "Pre-purchase timber pest inspection.",
             "Inspected subfloor and roof void, no active termites, report issued.", "Termite Inspection",
             (25000, 45000), ("Roof Access", "Pets On Site")),
            ("Rodent control", "Rats in roof space.",
             "Installed 6 lockable bait stations, sealed entry points.", "Service Call", (20000, 48000),
             ("Roof Access",)),
        ),
        "supplies": (
            ("TERM-BAIT", "Termite bait station", 3500, "ea"),
            ("GEL-COCK", "Cockroach gel bait 30g", 2800, "tube"),
            ("RODENT-BOX", "Lockable rodent bait station", 2200, "ea"),
            ("BIF-5L", "Bifenthrin concentrate 5L", 16000, "bottle"),
        ),
    },
    "landscaping": {
        "word": "Landscaping",
        "job_types": ("Garden Maintenance", "Irrigation"),
        "jobs": (
            ("Monthly garden maintenance", "Mow, edge, prune and green waste removal.",
             "Mowed lawns, trimmed hedges, removed 2m3 green waste.",
                 "Garden Maintenance", (15000, 45000), ()),
            ("Irrigation repair", "Sprinkler zone 3 not working.",
             "Replaced faulty solenoid valve, tested all zones.", "Irrigation", (18000, 50000), ()),
            ("Turf installation", "Supply and lay 80m2 Sir Walter buffalo.",
             "Prepared soil, laid 80m2 turf, fertilised and watered in.",
                 "Installation", (150000, 380000), ()),
        ),
        "supplies": (
            ("TURF-SW", "Sir Walter buffalo turf m2", 1300, "m2"),
            ("SOL-24V", "Irrigation solenoid valve 24V", 4500, "ea"),
            ("MULCH-M3", "Hardwood mulch m3", 7500, "m3"),
            ("DRIP-13-50", "Drip line 13mm x 50m", 5800, "roll"),
        ),
    },
}
_GENERIC_JOB_TYPES = ("Service Call", "Maintenance", "Installation", "Emergency Callout", "Quote Visit",
                      "Warranty",
                      "Compliance Inspection")
_SPARE_JOB_TYPES = ("Project", "Preventative Maintenance", "Make Safe", "Insurance Repair", "Builder Works")

# Job custom fields (name -> value factory key) and customer/invoice/enquiry custom fields.
JOB_CUSTOM_FIELDS = ("Switchboard Type", "Roof Access", "Gas Certificate No", "Hot Water Unit Brand",
                     "Pets On Site", "Compliance Certificate No", "Access Instructions")
_CF_VALUES = {
    "Switchboard Type": ("Ceramic fuses", "Circuit breakers", "RCD protected", "Old porcelain",
                         "Meter box only"),
    "Roof Access": ("Ladder", "Internal manhole", "Scaffold required", "No access", "Tile roof - harness"),
    "Hot Water Unit Brand": ("Rheem", "Rinnai", "Dux", "Bosch", "Thermann", "Vulcan", "Stiebel Eltron"),
    "Pets On Site": ("Yes", "No"),
    "Access Instructions": ("Key in lockbox", "Call on arrival", "Side gate", "Tenant home after 3pm",
                            "Collect key from office"),
}
CUSTOMER_CUSTOM_FIELDS = ("Preferred Contact Time", "Gate Code", "Payment Terms")
_CUSTOMER_CF = {
    "Preferred Contact Time": ("Morning", "Afternoon", "After 5pm", "Any time"),
    "Payment Terms": ("COD", "7 days", "14 days", "30 days EOM"),
}
EQUIPMENT = (
    ("Hot water system", ("Rheem", "Stellar 330"), ("Rinnai", "Infinity 26"), ("Dux", "Proflo 250")),
    ("Split system air conditioner", ("Daikin", "FTXM71"), ("Mitsubishi Electric",
     "MSZ-AP35"), ("Fujitsu", "ASTG24")),
    ("Switchboard", ("Clipsal", "Max9 18P"), ("Hager", "VML918")),
    ("Solar inverter", ("Fronius", "Primo 5.0"), ("SMA", "Sunny Boy 5.0"), ("Sungrow", "SG5.0RS")),
    ("Backflow prevention device", ("Zurn Wilkins", "375 RPZ"), ("Apollo", "RPZ 25")),
    ("Smoke alarm", ("Clipsal", "755PSMA"), ("Red", "R240RC")),
    ("Irrigation controller", ("Hunter", "X-Core 6"), ("Rain Bird", "ESP-TM2")),
)
FORMS = (
    ("Job Safety Analysis", (("SiteHazards", ("Dog on site", "Asbestos sheeting", "Overhead powerlines",
     "None")),
                             ("ControlMeasures", ("Isolated power", "Barricaded area", "Harness used")),
                             ("PPEWorn", ("Yes", "No")), ("SupervisorName", None))),
    ("Electrical Test Results", (("CircuitTested", ("Lighting 1", "Power 1", "Power 2", "Hot water")),
                                 ("InsulationResistance", ("200 MOhm", ">299 MOhm", "150 MOhm")),
                                 ("EarthContinuity", ("0.2 Ohm", "0.4 Ohm")), ("RCDTripTime", ("18 ms",
                                  "22 ms")),
                                 ("TestResult", ("Pass", "Fail")))),
    ("Gas Compliance Certificate", (("ApplianceType", ("Hot water", "Cooktop", "Heater")),
                                    ("GasPressureKpa", ("2.75", "1.13")), ("LeakTestPassed", ("Yes", "No")),
                                    ("CertificateRef", None))),
    ("Customer Sign-Off", (("WorkSatisfactory", ("Yes", "No")), ("SignedBy", None),
                           ("Comments", ("Great job", "Tidy work", "Left some mess", "")))),
)
DIRTY_KINDS = (
    "duplicate_customer",
    "text_date",
    "invalid_email",
    "orphan_site",
    "job_missing_customer",
    "job_without_technician",
    "unmapped_picklist",
    "long_text",
    "non_ascii_name",
    "formula_string",
    "number_as_text",
    "blank_required_name",
    "control_characters",
    "exact_duplicate",
    "broken_inline_image",
)
# Images pasted into notes: some as data: URIs, some as URLs on the tenant. The generator cannot know
# the emulator's address, so URLs use TENANT_URL and the emulator swaps in its own when serving notes.
TENANT_URL = "https://tenant.ascora.invalid"
NOTE_IMAGES_PATH = "/Files/NoteImages"
NOTE_IMAGES_DIR = "note_images"
INLINE_IMAGE_RATE = 0.05
_TEXT_DATES = ("3rd of March", "31/02/2024", "TBC", "next Tuesday", "2024-13-45", "00/00/0000", "ASAP")
_BAD_EMAILS = ("bob@", "n/a", "none", "jane.smith@gmail", "mike at bigpond.com", "info@@example.com", "-")
_ODD_JOB_STATUS = ("On Hold - Parts", "Waiting on Customer", "Parts Ordered", "Invoice Sent")
_ODD_CUSTOMER_TYPE = ("VIP??", "Old - Do Not Use", "Residential/Commercial")
_NON_ASCII = ("Zoë Ó Briain", "株式会社サンライズ", "Café Olé Pty Ltd ☕", "Łukasz Wiśniewski",
              "Nguyễn Văn An",
              "Søren Ærø", "🔧 Fix-It Fast 🔧", "Renée Müller-Lüdenscheidt")
_FORMULAS = ('=HYPERLINK("http://evil.example/x","Click me")', "+61 cmd| /C calc!A0", "@SUM(A1:A10)", "=1+2",
             "-2+3+cmd| /C notepad!A1")
_WRITE_INS = ("Waste removal and tip fees", "Travel outside service area", "Council permit fee", "Crane hire",
              "After-hours surcharge")
_CONTROL_BITS = ("\x00", "\x07", "\x1b[31m", "\x0b", "\x1f")


# fmt: on
# ---------------------------------------------------------------------------------------------------
# Tiny real files (no PIL): PNG, JPEG, PDF, DOCX


def _png(
    width: int, height: int, rgb1: tuple[int, int, int], rgb2: tuple[int, int, int], noise: bytes
) -> bytes:
    """A valid RGB PNG: a diagonal blend of two colours plus a little noise (so sizes differ)."""
    # Colour depends only on x + y, so precompute one RGB triple per diagonal and slice rows from it.
    n = max(1, len(noise))
    steps = width + height - 1
    diagonal = b"".join(
        bytes(
            min(255, int(a + (b - a) * d / (steps - 1)) + (noise[d % n] % 24 if noise else 0))
            for a, b in zip(rgb1, rgb2, strict=True)
        )
        for d in range(steps)
    )
    rows = b"".join(b"\x00" + diagonal[3 * y : 3 * (y + width)] for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


def _huffman_codes(bits: Sequence[int], values: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes (JPEG Annex C) from the DHT bit counts: value -> (code, length)."""
    codes: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # standard luminance DC table (ITU T.81 K.3)
_DC_VALUES = tuple(range(12))
_DC_CODES = _huffman_codes(_DC_BITS, _DC_VALUES)
_AC_BITS = (1,) + (0,) * 15  # one code: "0" = EOB, all our blocks are flat
_AC_VALUES = (0x00,)


def _jpeg(levels: Sequence[int], blocks_w: int = 2, blocks_h: int = 2) -> bytes:
    """A valid baseline greyscale JPEG of flat 8x8 blocks (only DC coefficients are coded).

    Each block is one grey level; with an all-ones quantisation table the DC coefficient is
    ``8 * (level - 128)`` and every AC run is a single EOB. Small, but decodes in any viewer.
    """
    out = bytearray(b"\xff\xd8")
    out += (
        b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00" + struct.pack(">HH", 1, 1) + b"\x00\x00"
    )
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)
    out += b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, blocks_h * 8, blocks_w * 8, 1) + b"\x01\x11\x00"
    for cls_id, bits, values in ((0x00, _DC_BITS, _DC_VALUES), (0x10, _AC_BITS, _AC_VALUES)):
        out += (
            b"\xff\xc4" + struct.pack(">HB", 2 + 1 + 16 + len(values), cls_id) + bytes(bits) + bytes(values)
        )
    out += b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00"
    acc, nbits, data = 0, 0, bytearray()

    def put(code: int, length: int) -> None:
        nonlocal acc, nbits
        acc = (acc << length) | code
        nbits += length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            data.append(byte)
            if byte == 0xFF:
                data.append(0x00)  # byte stuffing
        acc &= (1 << nbits) - 1

    prev = 0
    for i in range(blocks_w * blocks_h):
        dc = 8 * (levels[i % len(levels)] - 128)
        diff = dc - prev
        prev = dc
        size = abs(diff).bit_length()
        put(*_DC_CODES[size])
        if size:
            put(diff if diff > 0 else diff + (1 << size) - 1, size)
        put(0, 1)  # EOB
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with ones
    return bytes(out + data + b"\xff\xd9")


def _pdf_text(text: str) -> str:
    text = text.encode("ascii", "replace").decode("ascii")
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _pdf(title: str, lines: Sequence[str]) -> bytes:
    """A minimal, valid one-page PDF (Helvetica text) with a correct xref table."""
    body = "BT /F1 16 Tf 50 790 Td (" + _pdf_text(title) + ") Tj /F1 10 Tf"
    for line in lines:
        body += " 0 -16 Td (" + _pdf_text(line) + ") Tj"
    body += " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
            "/Resources << /Font << /F1 5 0 R >> >> >>"
        ),
        f"<< /Length {len(body)} >>\nstream\n{body}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("ascii")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode("ascii")
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode("ascii")
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode("ascii")
    return bytes(out)


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _docx(title: str, lines: Sequence[str]) -> bytes:
    """A minimal Word document (the shape of a completed Ascora custom form); fixed zip timestamps."""
    paragraphs = "".join(
        f'<w:p><w:r><w:t xml:space="preserve">{_xml_text(t)}</w:t></w:r></w:p>' for t in (title, *lines)
    )
    parts = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="word/document.xml"/></Relationships>'
        ),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{paragraphs}</w:body></w:document>"
        ),
    }
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in parts.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, text.encode("utf-8"))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Small helpers

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ts(seconds: int, millis: int = 0) -> str:
    """Ascora's created-stamp format: ``2026-02-17T20:50:55.943Z``."""
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{millis:03d}Z"
    )


def _day(seconds: int) -> str:
    """Ascora's date-only format: ``2025-05-01T00:00:00``."""
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T00:00:00"


def _money(cents: int) -> float:
    return cents / 100


def _gst(cents: int) -> int:
    return (cents + 5) // 10  # 10% GST, rounded half up to the cent


def _abn(rng: random.Random) -> str:
    """An ABN with a valid check digit (weights 10,1,3,...,19; mod 89), formatted ``51 824 753 556``."""
    tail = [rng.randrange(10) for _ in range(9)]
    weights = (3, 5, 7, 9, 11, 13, 15, 17, 19)
    s = sum(w * d for w, d in zip(weights, tail, strict=True))
    x = (-s) % 89  # 10*(d1-1) + d2 must be congruent to -s
    digits = [x // 10 + 1, x % 10, *tail]
    text = "".join(map(str, digits))
    return f"{text[:2]} {text[2:5]} {text[5:8]} {text[8:]}"


def generated_at_for(seed: int) -> dt.datetime:
    """The tenant's "now": fixed per seed so output never depends on the clock."""
    return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=(seed * 7919) % (180 * 24 * 60))


def _write_one_file(folder: Path, file_name: str, data: bytes) -> None:
    folder.mkdir()
    with open(folder / file_name, "wb") as fh:
        fh.write(data)


class _Out:
    """One buffered JSONL writer per resource, counting lines."""

    def __init__(self, api_dir: Path):
        self._files = {
            r: (api_dir / f"{r}.jsonl").open("w", encoding="utf-8", buffering=1 << 20) for r in RESOURCES
        }
        self.counts = dict.fromkeys(RESOURCES, 0)
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def write(self, resource: str, record: dict[str, Any], times: int = 1) -> None:
        line = self._encode(record) + "\n"
        handle = self._files[resource]
        for _ in range(times):
            handle.write(line)
        self.counts[resource] += times

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


# ---------------------------------------------------------------------------------------------------
# The generator


class TenantGenerator:
    """Writes one tenant. Use :func:`generate_tenant`; the class exists to keep the state in one place."""

    def __init__(self, out_dir: Path, *, size: int, seed: int, dirty: bool):
        self.root = out_dir
        self.size = size
        self.seed = seed
        self.dirty = dirty
        self.rng = random.Random(seed)
        self.drng = random.Random(seed * 1_000_003 + 0xD1127)  # dirty decisions only
        # Inline images draw from their own stream, so adding them left every other value unchanged.
        self.irng = random.Random(seed * 7_919 + 0x1A6E)
        self.now_dt = generated_at_for(seed)
        self.now = int(self.now_dt.timestamp())
        self.start = self.now - 4 * 365 * 86400
        self.manifest: dict[str, list[dict[str, Any]]] = {k: [] for k in DIRTY_KINDS}
        self._seen = dict.fromkeys(DIRTY_KINDS, 0)
        self.nested = {"quote_items": 0, "child_quotes": 0, "invoice_lines": 0, "supplier_invoice_lines": 0}
        self.next_job = 1001
        self.next_quote = 5001
        self.next_invoice = 10001
        self.next_customer = 1
        self.next_enquiry = 1001
        self.next_bill = 100001
        self.next_receipt = 70001
        self.forced_jobs = 0
        self.forced_quotes = 0
        self.forced_invoices = 0
        self.files_bytes = 0
        self.files_written = 0
        self.dirty_extra = 0  # records that exist only because of dirt (duplicates)

    # -- primitives --------------------------------------------------------------------------------

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def duid(self) -> str:
        return str(uuid.UUID(int=self.drng.getrandbits(128), version=4))

    def link(self, ident: str, name: str) -> dict[str, str]:
        return {"id": ident, "name": name}

    def phone(self, state: str) -> str:
        r = self.rng
        area, firsts = _AREA[state]
        return f"({area}) {r.choice(firsts)}{r.randrange(100, 1000)} {r.randrange(1000, 10000)}"

    def mobile(self) -> str:
        r = self.rng
        return f"04{r.randrange(10, 100)} {r.randrange(100, 1000)} {r.randrange(100, 1000)}"

    def person(self) -> tuple[str, str]:
        return self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)

    def email(self, first: str, last: str) -> str:
        r = self.rng
        local = f"{first}.{last}".lower().replace("'", "").replace(" ", "")
        if r.random() < 0.4:
            local += str(r.randrange(1, 99))
        return f"{local}@{r.choice(EMAIL_DOMAINS)}"

    def address(self) -> tuple[str, tuple[str, str, str, float, float]]:
        r = self.rng
        suburb = (
            self.home_suburbs[r.randrange(len(self.home_suburbs))] if r.random() < 0.8 else r.choice(SUBURBS)
        )
        line1 = f"{r.randrange(1, 250)} {r.choice(STREETS)} {r.choice(STREET_TYPES)}"
        if r.random() < 0.12:
            line1 = f"Unit {r.randrange(1, 40)}/{line1}"
        return line1, suburb

    def when(self, low: int, high: int) -> int:
        """A moment between ``low`` and ``high`` (clamped to the tenant's "now")."""
        high = min(high, self.now)
        if high <= low:
            return min(low, self.now)
        return self.rng.randrange(low, high)

    def ms(self) -> int:
        return self.rng.randrange(1000)

    # -- dirty bookkeeping --------------------------------------------------------------------------

    def want(self, kind: str, rate: float) -> bool:
        """Should this eligible record get ``kind`` of mess? Guarantees each kind shows up early."""
        if not self.dirty:
            return False
        self._seen[kind] += 1
        if not self.manifest[kind] and self._seen[kind] >= 2:
            return True
        return self.drng.random() < rate

    def note_dirty(self, kind: str, resource: str, ident: str, field: str | None, **detail: Any) -> None:
        entry: dict[str, Any] = {"resource": resource, "id": ident, "field": field}
        for key, value in detail.items():
            if isinstance(value, str) and len(value) > 120:
                value = value[:120] + "..."
            entry[key] = value
        self.manifest[kind].append(entry)

    # -- global reference data ----------------------------------------------------------------------

    def make_globals(self) -> None:
        r = self.rng
        size = self.size
        trade_names = list(TRADES)
        self.primary = r.choice(trade_names)
        secondary = [t for t in trade_names if t != self.primary]
        self.trades = (self.primary, r.choice(secondary))
        home_state = r.choice(("NSW", "NSW", "VIC", "VIC", "QLD", "QLD", "WA", "SA", "TAS", "ACT", "NT"))
        self.home_state = home_state
        self.home_suburbs = [s for s in SUBURBS if s[2] and s[1] == home_state]
        word = r.choice(BUSINESS_WORDS)
        self.business_name = f"{word} {TRADES[self.primary]['word']} Pty Ltd"
        self.business_domain = (
            f"{word.lower().replace(' ', '')}{TRADES[self.primary]['word'].split()[0].lower()}.com.au"
        )
        self.accounting_system = r.choice(ACCOUNTING_SYSTEMS)
        self.job_templates = [j for t in self.trades for j in TRADES[t]["jobs"]]
        self.primary_templates = list(TRADES[self.primary]["jobs"])

        self.type_links = {name: self.link(self.uid(), name) for name in CUSTOMER_TYPES}
        self.lead_links = {name: self.link(self.uid(), name) for name in LEAD_SOURCES}

        # Labour roles and teams.
        self.labour_roles = []
        for name, rate in LABOUR_ROLES:
            row = {"labourRoleId": self.uid(), "name": name, "hourlyRateExTax": _money(rate)}
            self.labour_roles.append((row["labourRoleId"], name, rate))
            self.out.write("labour_roles", row)
        self.teams = [self.link(self.uid(), name) for name in TEAMS[: 2 + r.randrange(4)]]

        # Staff: fullName is the string every assignedUser.name uses, so it must be unique.
        n_staff = min(200, max(5, size // 5000))
        self.techs: list[dict[str, str]] = []
        self.inactive_techs: list[dict[str, str]] = []
        self.office: list[dict[str, str]] = []
        self.staff_names: list[str] = []
        used: set[str] = set()
        for i in range(n_staff):
            first, last = self.person()
            full, k = f"{first} {last}", 0
            while full in used:  # two "Jack Smith"s get a middle initial, as offices do
                k += 1
                full = f"{first} {chr(64 + k)}. {last}" if k <= 26 else f"{first} {last} {k}"
            used.add(full)
            kind = "Admin" if i == 0 else ("Office" if i % 4 == 1 else "Mobile")
            active = i < 3 or r.random() < 0.9
            role = self.labour_roles[1 + r.randrange(3)] if kind == "Mobile" else None
            local = f"{first}.{last}".lower().replace("'", "") + (str(k) if k else "")
            user = {
                "userId": self.uid(),
                "fullName": full,
                "firstName": first,
                "lastName": last,
                "emailAddress": f"{local}@{self.business_domain}",
                "mobileNumber": self.mobile(),
                "isActive": active,
                "userType": kind,
                "labourRole": self.link(role[0], role[1]) if role else None,
                "team": r.choice(self.teams) if kind == "Mobile" else None,
            }
            self.out.write("users", user)
            link = self.link(user["userId"], full)
            self.staff_names.append(full)
            if kind == "Mobile":
                (self.techs if active else self.inactive_techs).append(link)
            else:
                self.office.append(link)
        if not self.techs:  # tiny tenants: make sure someone does the work
            self.techs.append(self.office[-1])

        # Job types: generic + the tenant's trades, 12 in all.
        names = list(_GENERIC_JOB_TYPES)
        for t in self.trades:
            names += [n for n in TRADES[t]["job_types"] if n not in names]
        names += [n for n in _SPARE_JOB_TYPES if n not in names]
        self.job_types = {}
        for i, name in enumerate(names[:12]):
            row = {"id": self.uid(), "name": name, "isDefault": i == 0}
            self.job_types[name] = self.link(row["id"], name)
            self.out.write("job_types", row)
        self.job_type_names = list(self.job_types)

        for i, name in enumerate(("Rough-in", "Fit-off", "Commissioning", "Make Good")):
            self.out.write("standard_sections", {"name": name, "displayOrder": i + 1})
        for i, name in enumerate(
            ("Stage 1 - Deposit", "Stage 2 - Progress", "Stage 3 - Practical Completion")
        ):
            self.out.write("standard_stages", {"name": name, "displayOrder": i + 1})

        # Inventory categories: one level-1 per trade, a few level-2 children.
        self.categories: list[dict[str, str]] = []
        for t in self.trades:
            parent = {
                "categoryId": self.uid(),
                "name": TRADES[t]["word"],
                "categoryNumber": 1,
                "parentCategoryId": None,
            }
            self.out.write("categories", parent)
            self.categories.append(self.link(parent["categoryId"], parent["name"]))
            for child in ("Fittings", "Consumables", "Equipment"):
                self.out.write(
                    "categories",
                    {
                        "categoryId": self.uid(),
                        "name": f"{TRADES[t]['word']} {child}",
                        "categoryNumber": 2,
                        "parentCategoryId": parent["categoryId"],
                    },
                )

        # Suppliers: real trade wholesalers first, then branches to reach size/500.
        n_suppliers = min(4000, max(5, size // 500))
        base = (
            "Reece",
            "Tradelink",
            "Middys",
            "Rexel",
            "L&H",
            "CNW Electrical",
            "Haymans",
            "Actrol",
            "Beacon Lighting",
            "Bunnings Trade",
            "Metcash Trade",
            "Coolair Wholesale",
            "Solar Juice",
            "Ecotech Pest Supplies",
            "Total Landscape Supplies",
        )
        self.suppliers: list[dict[str, str]] = []
        used = set()
        for i in range(n_suppliers):
            line1, (suburb, state, postcode, _lat, _lon) = self.address()
            name = base[i] if i < len(base) else f"{base[i % len(base)]} {suburb}"
            if name in used:  # supplier names are their natural key: keep them unique
                name = f"{name} {i}"
            used.add(name)
            first, last = self.person()
            row = {
                "supplierId": self.uid(),
                "supplierNumber": f"S{i + 1:04d}",
                "name": name,
                "businessNumber": _abn(r),
                "contactFirstName": first,
                "contactLastName": last,
                "notes": r.choice(("", "", "Account 30 days", "Trade account - quote acct no on orders")),
                "phone": self.phone(state),
                "fax": "",
                "mobile": self.mobile() if r.random() < 0.3 else "",
                "emailAddress": "accounts@"
                + name.lower().replace(" ", "").replace("&", "and").replace("#", "")
                + ".com.au",
                "expenseAccount": r.choice(("310", "310", "320", "400")),
                "invoiceDueDaysType": r.randrange(3),
                "streetLine1": line1,
                "streetLine2": "",
                "streetSuburb": suburb,
                "streetState": state,
                "streetPostcode": postcode,
                "postalLine1": "",
                "postalLine2": "",
                "postalSuburb": "",
                "postalState": "",
                "postalPostcode": "",
            }
            self.out.write("suppliers", row)
            self.suppliers.append(self.link(row["supplierId"], name))

        # Supplies and kits: the trades' items, in variants, to reach roughly size/250.
        n_supplies = min(5000, max(30, size // 250))
        items = [(t, it) for t in self.trades for it in TRADES[t]["supplies"]]
        self.supplies: list[tuple[str, str, int, int, str]] = []  # (id, partNumber, cost, sell, description)
        variants = ("", " - trade pack", " (bulk)", " - premium", " - economy", " v2")
        for i in range(n_supplies):
            trade, (part, desc, cost, uom) = items[i % len(items)]
            round_no = i // len(items)
            if round_no:
                part = f"{part}-{round_no:02d}"
                desc = desc + variants[round_no % len(variants)]
                cost = max(100, int(cost * (0.8 + 0.4 * r.random())))
            sell = int(cost * (1.25 + 0.35 * r.random()))
            category = self.categories[self.trades.index(trade) * 1]
            row = {
                "supplyId": self.uid(),
                "partNumber": part,
                "description": desc,
                "annotation": "",
                "unitCostExTax": _money(cost),
                "unitSellExTax": _money(sell),
                "unitSellIncTax": _money(sell + _gst(sell)),
                "averageCost": _money(cost),
                "isTaxable": True,
                "isFavourite": r.random() < 0.15,
                "mustBeOrdered": r.random() < 0.2,
                "packOrBoxQuantity": r.choice((1, 1, 1, 5, 10, 20)),
                "location": r.choice(("Van stock", "Warehouse A", "Warehouse B", "")),
                "defaultSupplier": r.choice(self.suppliers),
                "categoryOne": category,
                "unitOfMeasure": uom,
            }
            self.out.write("supplies", row)
            self.supplies.append((row["supplyId"], part, cost, sell, desc))
        self.kits: list[tuple[str, str, int, int, str]] = []
        for i in range(max(3, n_supplies // 10)):
            parts = [r.choice(self.supplies) for _ in range(3)]
            cost = sum(p[2] for p in parts)
            sell = int(cost * 1.3)
            desc = "Kit: " + " + ".join(p[4].split(" ")[0] for p in parts) + f" #{i + 1}"
            row = {
                "kitId": self.uid(),
                "partNumber": f"KIT-{i + 1:04d}",
                "description": desc,
                "annotation": "",
                "markup": 30,
                "unitCostExTax": _money(cost),
                "unitSellExTax": _money(sell),
                "unitSellIncTax": _money(sell + _gst(sell)),
                "isTaxable": True,
                "isFavourite": False,
                "pricingMethod": "FIXED-PRICE",
                "categoryOne": self.categories[0],
                "unitOfMeasure": "ea",
            }
            self.out.write("kits", row)
            self.kits.append((row["kitId"], row["partNumber"], cost, sell, desc))

    # -- households ---------------------------------------------------------------------------------

    def customer_name(self, ctype: str, first: str, last: str, suburb: str, state: str) -> tuple[str, str]:
        """(customerName, companyName) for a customer type."""
        r = self.rng
        if ctype == "Residential":
            return f"{first} {last}", ""
        if ctype == "Strata":
            name = (
                f"SP {r.randrange(1000, 99999)} The Owners"
                if r.random() < 0.6
                else f"The Owners - Strata Plan {r.randrange(1000, 99999)}"
            )
            return name, name
        if ctype == "Government":
            name = r.choice(GOVERNMENT).format(s=suburb, st=state)
            return name, name
        suffix = r.choice(BUSINESS_SUFFIX)
        name = f"{r.choice(BUSINESS_WORDS)} {r.choice(BUSINESS_KINDS)}" + (f" {suffix}" if suffix else "")
        return name, name

    def custom_fields(self, names: Iterable[str]) -> list[dict[str, str]]:
        r = self.rng
        fields = []
        for name in names:
            values = _CF_VALUES.get(name)
            if values:
                value = r.choice(values)
            elif name == "Gas Certificate No":
                value = f"GC{r.randrange(100000, 999999)}"
            else:  # Compliance Certificate No
                value = f"CCEW-{r.randrange(1000000, 9999999)}"
            fields.append({"fieldName": name, "fieldValue": value})
        return fields

    def new_customer(self, created: int, ctype: str, billing: dict[str, Any] | None) -> dict[str, Any]:
        r = self.rng
        first, last = self.person()
        line1, (suburb, state, postcode, lat, lon) = self.address()
        if billing is None:
            name, company = self.customer_name(ctype, first, last, suburb, state)
        else:
            base = billing["customerName"]
            if ctype == "Residential":
                name = f"{base} - {line1}"
            elif ctype == "Strata":
                plan = base.split(" The Owners")[0].replace("The Owners - Strata Plan", "SP")
                name = f"{plan} - {line1} {suburb}"
            else:
                name = f"{base.replace(' Pty Ltd', '')} - {suburb}" + (
                    f" ({line1})" if r.random() < 0.5 else ""
                )
            company = ""
        number = f"C{self.next_customer:05d}"
        self.next_customer += 1
        is_billing = billing is None
        cfields = []
        if r.random() < 0.5:
            for cf in CUSTOMER_CUSTOM_FIELDS:
                if r.random() < 0.5:
                    values = _CUSTOMER_CF.get(cf)
                    cfields.append(
                        {
                            "fieldName": cf,
                            "fieldValue": r.choice(values) if values else f"{r.randrange(1000, 9999)}#",
                        }
                    )
        email = (
            self.email(first, last)
            if ctype == "Residential" or r.random() < 0.3
            else f"accounts@{(company or name).split(' ')[0].lower()}{r.randrange(10, 99)}.com.au"
        )
        postal = is_billing and r.random() < 0.3
        row = {
            "customerId": self.uid(),
            "customerNumber": number,
            "customerName": name,
            "companyName": company,
            "contactFirstName": first,
            "contactLastName": last,
            "emailAddress": email,
            "phoneNumber": self.phone(state) if r.random() < 0.6 else "",
            "mobileNumber": self.mobile(),
            "onHold": is_billing and r.random() < 0.03,
            "billingCustomerOnHold": False,
            "streetLine1": line1,
            "streetLine2": "",
            "streetSuburb": suburb,
            "streetState": state,
            "streetPostcode": postcode,
            "streetCountry": "Australia",
            "streetLatitude": round(lat + (r.random() - 0.5) * 0.02, 6),
            "streetLongitude": round(lon + (r.random() - 0.5) * 0.02, 6),
            "postalLine1": f"PO Box {r.randrange(1, 9999)}" if postal else "",
            "postalLine2": "",
            "postalSuburb": suburb if postal else "",
            "postalState": state if postal else "",
            "postalPostcode": postcode if postal else "",
            "postalCountry": "Australia",
            "customerType": self.type_links[ctype],
            "leadSource": self.lead_links[r.choice(LEAD_SOURCES)] if is_billing else None,
            "billingCustomer": None
            if is_billing
            else self.link(billing["customerId"], billing["customerName"]),
            "assignedUser": r.choice(self.office) if r.random() < 0.5 else None,
            "customFields": cfields,
            "dateCreated": _ts(created, self.ms()),
            "lastModified": _ts(self.when(created, self.now), self.ms()),
            "accountingSystem": (self.accounting_system if r.random() < 0.85 else None)
            if is_billing
            else None,
        }
        if billing is not None:
            row["billingCustomerOnHold"] = billing["onHold"]
        return row

    def total_records(self) -> int:
        """Records written so far, *not* counting the extra records dirt adds (duplicates).

        Household placement and the stop condition use this, so a dirty tenant is generated from
        exactly the same random stream as the clean tenant of its seed.
        """
        return sum(self.out.counts.values()) + sum(self.nested.values()) - self.dirty_extra

    def household(self, progress: float) -> None:
        """One billing customer and everything hanging off it; ``progress`` (0..1) places it in time."""
        r = self.rng
        out = self.out
        span = self.now - self.start
        jitter = r.random() * min(1.0, _PER_HOUSEHOLD / self.size)
        created = self.start + int(span * 0.92 * min(1.0, progress + jitter))
        roll = r.random()
        ctype = (
            "Residential"
            if roll < 0.6
            else "Commercial"
            if roll < 0.85
            else "Strata"
            if roll < 0.95
            else "Government"
        )
        billing = self.new_customer(created, ctype, None)
        self.is_company = bool(billing["companyName"])  # pre-dirt: random draws must not depend on dirt
        # Dirty mutations on the billing customer happen before anything copies its name into a link.
        self.dirty_customer(billing)
        if ctype == "Residential":
            n_sites = 1 if r.random() < 0.3 else 0
        elif ctype == "Commercial":
            n_sites = 1 + r.randrange(6)
        elif ctype == "Strata":
            n_sites = 1 + r.randrange(3)
        else:
            n_sites = 2 + r.randrange(7)
        sites = [
            self.new_customer(self.when(created, created + 400 * 86400), ctype, billing)
            for _ in range(n_sites)
        ]
        out.write("customers", billing, 2 if self.exact_dup("customers", billing["customerId"]) else 1)
        self.duplicate_customer(billing)
        for site in sites:
            if self.want("orphan_site", 0.03):
                site["billingCustomer"] = {"id": self.duid(), "name": site["billingCustomer"]["name"]}
                self.note_dirty(
                    "orphan_site",
                    "customers",
                    site["customerId"],
                    "billingCustomer",
                    value=site["billingCustomer"]["id"],
                )
            out.write("customers", site)

        # Contacts: the billing customer's people, then the sites' (site managers, tenants).
        contacts_by_customer: dict[str, list[dict[str, str]]] = {}
        for owner, count in [
            (billing, 1 + (r.random() < 0.6) + (ctype != "Residential" and r.random() < 0.5))
        ] + [(s, 1 if r.random() < 0.35 else 0) for s in sites]:
            links = []
            for k in range(count):
                if k == 0 and owner is billing:
                    first, last = billing["contactFirstName"], billing["contactLastName"]
                else:
                    first, last = self.person()
                contact = {
                    "contactId": self.uid(),
                    "customerId": owner["customerId"],
                    "firstName": first,
                    "lastName": last,
                    "emailAddress": self.email(first, last),
                    "phoneNumber": self.phone(owner["streetState"]) if r.random() < 0.4 else "",
                    "mobileNumber": self.mobile() if r.random() < 0.85 else "",
                    "faxNumber": "",
                    "defaultContact": k == 0,
                    "contactRole": "Owner" if ctype == "Residential" and k == 0 else r.choice(CONTACT_ROLES),
                    "lastModified": _ts(self.when(created, self.now), self.ms()),
                }
                self.dirty_contact(contact)
                out.write("contacts", contact, 2 if self.exact_dup("contacts", contact["contactId"]) else 1)
                links.append(
                    self.link(contact["contactId"], f"{contact['firstName']} {contact['lastName']}".strip())
                )
            contacts_by_customer[owner["customerId"]] = links

        places = sites or [billing]

        # Equipment at the places we service.
        if r.random() < 0.45:
            for _ in range(1 + (r.random() < 0.3)):
                place = r.choice(places)
                kind, *models = r.choice(EQUIPMENT)
                make, model = r.choice(models)
                installed = self.when(created - 5 * 365 * 86400, self.now)
                out.write(
                    "equipment",
                    {
                        "equipmentId": self.uid(),
                        "customerId": billing["customerId"],
                        "siteCustomerId": place["customerId"] if place is not billing else None,
                        "name": kind,
                        "make": make,
                        "model": model,
                        "serialNumber": f"{make[:2].upper()}{r.randrange(100000, 9999999)}",
                        "location": r.choice(
                            ("Roof", "Garage", "Laundry", "Plant room", "External wall", "Meter box")
                        ),
                        "installDate": _day(installed),
                        "warrantyExpiry": _day(installed + 5 * 365 * 86400),
                        "notes": r.choice(("", "", "Serviced annually", "Access via side gate")),
                        "customFields": [
                            {
                                "fieldName": "Service Interval",
                                "fieldValue": r.choice(("6 months", "12 months")),
                            }
                        ]
                        if r.random() < 0.3
                        else [],
                        "lastModified": _ts(self.when(installed, self.now), self.ms()),
                    },
                )

        jobs: list[dict[str, Any]] = []
        quotes: list[dict[str, Any]] = []
        n_jobs = 1 + int(r.expovariate(1 / 3.0))
        n_quotes = int(r.random() * 3.0 + 0.2)
        if ctype != "Residential":
            n_jobs += r.randrange(3)
        for _ in range(n_quotes):
            quotes.append(self.new_quote(billing, places, contacts_by_customer, created))
        for quote in quotes:
            if quote["quoteStatus"] == 2:  # won: the job is created from the quote
                job = self.new_job(billing, places, contacts_by_customer, created, from_quote=quote)
                jobs.append(job)
        for _ in range(n_jobs):
            jobs.append(self.new_job(billing, places, contacts_by_customer, created))

        # Enquiries: how some of this work came in.
        if r.random() < 0.45:
            self.new_enquiry(billing, quotes, jobs, created)

        for quote in quotes:
            self.dirty_quote(quote)
            out.write("quotes", quote)
            if r.random() < 0.3:
                self.new_note("Quotation", quote["quoteId"], self.stamp(quote["dateCreated"]))
            if r.random() < 0.05:
                self.new_attachment(
                    "Quotation",
                    quote["quoteId"],
                    self.stamp(quote["dateCreated"]),
                    "Document",
                    title=f"Quote {quote['quoteNumber']}",
                )

        for job in jobs:
            children = job.pop("_children", ())
            invoices = self.invoices_for(job, billing)
            if invoices:
                job["invoiceNumber"] = invoices[0]["invoiceNumber"]
            clean = (
                self.stamp(job["dateCreated"]),
                job["assignedUser"]["name"] if job["assignedUser"] else None,
            )
            self.dirty_job(job)
            out.write("jobs", job, 2 if self.exact_dup("jobs", job["jobId"]) else 1)
            for child in children:
                out.write("jobs", child)
            for invoice in invoices:
                self.write_invoice(invoice)
            self.job_extras(job, *clean)

        if r.random() < 0.3:
            self.new_note("Customer", billing["customerId"], created)
        if r.random() < 0.04:
            self.new_attachment(
                "Customer", billing["customerId"], created, "Document", title="Signed trading terms"
            )

    def stamp(self, text: Any) -> int:
        """Seconds from one of our own timestamps (dirty text dates fall back to the tenant start)."""
        try:
            return int(dt.datetime.fromisoformat(str(text)).replace(tzinfo=dt.UTC).timestamp())
        except ValueError:
            return self.start

    # -- quotes ---------------------------------------------------------------------------------------

    def quote_items(
        self, section_numbers: Sequence[str | None]
    ) -> tuple[list[dict[str, Any]], dict[Any, list[int]]]:
        r = self.rng
        items = []
        totals: dict[Any, list[int]] = {s: [0, 0] for s in section_numbers}
        for section in section_numbers:
            for _ in range(1 + r.randrange(4)):
                roll = r.random()
                labour_role = None
                hours = None
                uom = "ea"
                if roll < 0.5:
                    _sid, part, cost, sell, desc = r.choice(self.supplies)
                    kind, qty = "SUPPLY", 1 + r.randrange(6)
                elif roll < 0.6:
                    _kid, part, cost, sell, desc = r.choice(self.kits)
                    kind, qty = "KIT", 1
                elif roll < 0.9:
                    role_id, role_name, rate = self.labour_roles[1 + r.randrange(3)]
                    hours = (1 + r.randrange(16)) / 2
                    labour_role = self.link(role_id, role_name)
                    kind, part, cost, sell, desc, qty, uom = (
                        "LABOUR",
                        "",
                        rate // 2,
                        rate,
                        f"Labour - {role_name}",
                        hours,
                        "hr",
                    )
                else:
                    sell = r.randrange(5000, 80000)
                    kind, part, cost, qty = "WRITE-IN", "", int(sell * 0.7), 1
                    desc = r.choice(_WRITE_INS)
                total = round(qty * sell)
                tax = _gst(total)
                items.append(
                    {
                        "itemId": self.uid(),
                        "itemType": kind,
                        "sectionQuoteNumber": section,
                        "partNumber": part,
                        "description": desc,
                        "quantity": qty,
                        "unitOfMeasure": uom,
                        "labourRole": labour_role,
                        "hours": hours,
                        "unitCostExTax": _money(cost),
                        "unitSellExTax": _money(sell),
                        "totalExTax": _money(total),
                        "totalIncTax": _money(total + tax),
                        "isTaxable": True,
                    }
                )
                totals[section][0] += total
                totals[section][1] += total + tax
        return items, totals

    def new_quote(self, billing, places, contacts_by_customer, created) -> dict[str, Any]:
        r = self.rng
        place = r.choice(places)
        template = r.choice(self.job_templates)
        date = self.when(created, self.now)
        age = self.now - date
        if self.forced_quotes < 4:
            status = self.forced_quotes
            self.forced_quotes += 1
        elif age < 21 * 86400:
            status = 0 if r.random() < 0.45 else 1
        else:
            roll = r.random()
            status = 2 if roll < 0.5 else 3 if roll < 0.8 else 1 if roll < 0.95 else 0
        number = f"Q{self.next_quote}"
        self.next_quote += 1
        sectioned = r.random() < 0.15
        children = []
        if sectioned:
            section_numbers = [f"{number}.{k:02d}" for k in range(1, 2 + r.randrange(3))]
        else:
            section_numbers = [None]
        items, totals = self.quote_items(section_numbers)
        if sectioned:
            for k, section in enumerate(section_numbers, start=1):
                children.append(
                    {
                        "quoteId": self.uid(),
                        "quoteNumber": section,
                        "quoteName": r.choice(("Stage", "Section"))
                        + f" {k} - "
                        + ("Rough-in", "Fit-off", "Commissioning")[(k - 1) % 3],
                        "displayOrder": k,
                        "totalExTax": _money(totals[section][0]),
                        "totalIncTax": _money(totals[section][1]),
                    }
                )
            self.nested["child_quotes"] += len(children)
        self.nested["quote_items"] += len(items)
        ex = sum(t[0] for t in totals.values())
        inc = sum(t[1] for t in totals.values())
        loss = (
            r.choice(("Price", "Went with another contractor", "Customer did not proceed", "Timing"))
            if status == 3
            else None
        )
        quote = {
            "quoteId": self.uid(),
            "quoteNumber": number,
            "quoteName": template[0],
            "quoteDescription": template[1],
            "quoteStatus": status,
            "quoteStatusText": QUOTE_STATUS_TEXT[status],
            "reasonForLoss": loss,
            "quotationDate": _day(date),
            "dueDate": _day(date + 7 * 86400) if r.random() < 0.4 else None,
            "validUntilDate": _day(date + 30 * 86400),
            "pricingMethod": "SECTIONS" if sectioned else "FIXED-PRICE",
            "totalExTax": _money(ex),
            "totalIncTax": _money(inc),
            "purchaseOrderNumber": f"PO{r.randrange(10000, 99999)}"
            if place is not billing and r.random() < 0.4
            else "",
            "clientOrderNumber": "",
            "addressLine1": place["streetLine1"],
            "addressLine2": "",
            "suburb": place["streetSuburb"],
            "state": place["streetState"],
            "postcode": place["streetPostcode"],
            "country": "Australia",
            "jobType": self.job_types.get(template[3]) or self.job_types[self.job_type_names[0]],
            "siteCustomer": self.link(place["customerId"], place["customerName"]),
            "billingCustomer": self.link(billing["customerId"], billing["customerName"]),
            "childQuotes": children,
            "jobNumber": None,
            "items": items,
            "assignedUser": r.choice(self.office + self.techs[:3]),
            "dateCreated": _ts(date, self.ms()),
            "lastModified": _ts(self.when(date, date + 40 * 86400), self.ms()),
        }
        return quote

    def dirty_quote(self, quote: dict[str, Any]) -> None:
        if self.want("number_as_text", 0.01):
            quote["totalExTax"] = f"${quote['totalExTax']:,.2f}"
            self.note_dirty(
                "number_as_text", "quotes", quote["quoteId"], "totalExTax", value=quote["totalExTax"]
            )
        elif self.want("text_date", 0.01):
            quote["quotationDate"] = self.drng.choice(_TEXT_DATES)
            self.note_dirty(
                "text_date", "quotes", quote["quoteId"], "quotationDate", value=quote["quotationDate"]
            )

    # -- jobs -----------------------------------------------------------------------------------------

    def job_status(self, age: int) -> int:
        r = self.rng
        if self.forced_jobs < 8:
            self.forced_jobs += 1
            return self.forced_jobs - 1
        roll = r.random()
        if age < 10 * 86400:
            return 0 if roll < 0.3 else 1 if roll < 0.6 else 5 if roll < 0.8 else 4 if roll < 0.88 else 2
        if age < 60 * 86400:
            return (
                2
                if roll < 0.3
                else 6
                if roll < 0.5
                else 7
                if roll < 0.65
                else 0
                if roll < 0.75
                else 1
                if roll < 0.82
                else 4
                if roll < 0.9
                else 3
                if roll < 0.95
                else 5
            )
        return (
            7
            if roll < 0.6
            else 2
            if roll < 0.78
            else 3
            if roll < 0.87
            else 6
            if roll < 0.92
            else 4
            if roll < 0.96
            else 0
        )

    def new_job(self, billing, places, contacts_by_customer, created, from_quote=None) -> dict[str, Any]:
        r = self.rng
        if from_quote is not None:
            place_id = from_quote["siteCustomer"]["id"]
            place = next((p for p in places if p["customerId"] == place_id), places[0])
            template = next(
                (t for t in self.job_templates if t[0] == from_quote["quoteName"]), self.job_templates[0]
            )
            date = self.when(
                self.stamp(from_quote["dateCreated"]) + 86400,
                self.stamp(from_quote["dateCreated"]) + 40 * 86400,
            )
        else:
            place = r.choice(places)
            template = r.choice(self.primary_templates if r.random() < 0.7 else self.job_templates)
            date = self.when(created, self.now)
        status = self.job_status(self.now - date)
        if status in (0, 1, 5) and self.now - date > 120 * 86400 and r.random() < 0.85:
            date = self.when(max(created, self.now - 20 * 86400), self.now)  # most open jobs are recent
        number = f"J{self.next_job}"
        self.next_job += 1
        name, desc, work, jtype, (low, high), cf_names = template
        if from_quote is not None:
            ex = round(from_quote["totalExTax"] * 100)
        else:
            ex = r.randrange(low, high)
        done = status in (2, 6, 7)
        completed = self.when(date + 3600, date + 20 * 86400) if done else None
        booking = self.when(date, (completed or date + 10 * 86400)) if status not in (5, 3) else None
        tech = (
            r.choice(self.techs)
            if (self.now - date < 365 * 86400 or not self.inactive_techs or r.random() < 0.8)
            else r.choice(self.inactive_techs)
        )
        site_contacts = contacts_by_customer.get(place["customerId"]) or []
        billing_contacts = contacts_by_customer.get(billing["customerId"]) or []
        custom = self.custom_fields(
            sorted(
                set(cf_names)
                | ({"Access Instructions"} if r.random() < 0.3 else set())
                | ({"Pets On Site"} if r.random() < 0.2 else set())
            )
        )
        sectioned = r.random() < 0.1
        children: list[dict[str, Any]] = []
        if sectioned:
            remaining = ex
            n = 1 + r.randrange(4)
            for k in range(1, n + 1):
                part = remaining if k == n else remaining * r.randrange(20, 60) // 100
                remaining -= part
                c_status = status if status in (3, 4, 5) else (7 if status == 7 else r.choice((status, 2)))
                c_done = c_status in (2, 6, 7)
                c_number = f"{number}.{k:02d}"
                children.append(
                    {
                        "jobId": self.uid(),
                        "jobNumber": c_number,
                        "topLevelJobNumber": number,
                        "jobName": f"Section {k} - "
                        + ("Rough-in", "Fit-off", "Commissioning", "Make good")[k - 1],
                        "jobDescription": ("Rough-in", "Fit-off", "Commissioning", "Make good")[k - 1]
                        + f" for {name.lower()}",
                        "workUndertaken": work if c_done else "",
                        "jobStatus": c_status,
                        "jobStatusText": JOB_STATUS_TEXT[c_status],
                        "dateCreated": _ts(date + k, self.ms()),
                        "completedDate": _ts(completed or date, 0) if c_done else None,
                        "pricingMethod": "FIXED-PRICE",
                        "totalExTax": _money(part),
                        "totalIncTax": _money(part + _gst(part)),
                        "purchaseOrderNumber": "",
                        "clientOrderNumber": "",
                        "addressLine1": place["streetLine1"],
                        "addressLine2": "",
                        "suburb": place["streetSuburb"],
                        "state": place["streetState"],
                        "postcode": place["streetPostcode"],
                        "country": "Australia",
                        "latitude": place["streetLatitude"],
                        "longitude": place["streetLongitude"],
                        "jobType": self.job_types.get(jtype) or self.job_types[self.job_type_names[0]],
                        "siteCustomer": self.link(place["customerId"], place["customerName"]),
                        "siteContact": None,
                        "billingCustomer": self.link(billing["customerId"], billing["customerName"]),
                        "billingContact": None,
                        "displayOrder": k,
                        "customFields": None,
                        "quoteNumber": None,
                        "assignedUser": r.choice(self.techs),
                        "team": None,
                        "lastModified": _ts(completed or date + k, 0),
                    }
                )
        inc = sum(round(c["totalIncTax"] * 100) for c in children) if children else ex + _gst(ex)
        job = {
            "jobId": self.uid(),
            "jobNumber": number,
            "topLevelJobNumber": None,
            "jobName": name,
            "jobDescription": desc,
            "workUndertaken": work if done else "",
            "jobStatus": status,
            "jobStatusText": JOB_STATUS_TEXT[status],
            "dateCreated": _ts(date, self.ms()),
            "completedDate": _ts(completed, 0) if completed else None,
            "pricingMethod": "SECTIONS"
            if sectioned
            else r.choice(("FIXED-PRICE", "FIXED-PRICE", "TIME-AND-MATERIALS")),
            "totalExTax": _money(ex),
            "totalIncTax": _money(inc),
            "purchaseOrderNumber": f"PO{r.randrange(10000, 99999)}"
            if self.is_company and r.random() < 0.5
            else "",
            "clientOrderNumber": f"WO-{r.randrange(1000, 99999)}"
            if self.is_company and r.random() < 0.2
            else "",
            "addressLine1": place["streetLine1"],
            "addressLine2": "",
            "suburb": place["streetSuburb"],
            "state": place["streetState"],
            "postcode": place["streetPostcode"],
            "country": "Australia",
            "latitude": place["streetLatitude"],
            "longitude": place["streetLongitude"],
            "jobType": self.job_types.get(jtype) or self.job_types[self.job_type_names[0]],
            "siteCustomer": self.link(place["customerId"], place["customerName"]),
            "siteContact": r.choice(site_contacts) if site_contacts and r.random() < 0.7 else None,
            "billingCustomer": self.link(billing["customerId"], billing["customerName"]),
            "billingContact": r.choice(billing_contacts) if billing_contacts and r.random() < 0.5 else None,
            "displayOrder": None,
            "customFields": custom,
            "quoteNumber": from_quote["quoteNumber"] if from_quote else None,
            "assignedUser": tech,
            "team": r.choice(self.teams) if r.random() < 0.3 else None,
            "lastModified": _ts(completed or date, self.ms()),
            # ext (import-template columns Y, Z, AA, AD, AB): what the Jobs export carries besides the API.
            "bookingDate": _ts(booking, 0) if booking else None,
            "expectedDate": _day(booking) if booking else None,
            "expectedDuration": (1 + r.randrange(16)) / 2 if booking else None,
            "estimatedDuration": (1 + r.randrange(16)) / 2,
            "invoiceNumber": None,
        }
        if from_quote is not None:
            from_quote["jobNumber"] = number
        job["_children"] = children
        return job

    # -- invoices -------------------------------------------------------------------------------------

    def invoices_for(self, job: dict[str, Any], billing: dict[str, Any]) -> list[dict[str, Any]]:
        r = self.rng
        status = job["jobStatus"]
        if not (status == 7 or (status == 2 and r.random() < 0.5) or (status == 0 and r.random() < 0.1)):
            return []
        done = (
            self.stamp(job["completedDate"])
            if job["completedDate"]
            else self.stamp(job["dateCreated"]) + 86400
        )
        date = self.when(done, done + 4 * 86400)
        terms = 14 if r.random() < 0.6 else 30
        due = date + terms * 86400
        # Lines: labour, materials from stock, sometimes a call-out fee.
        lines = []
        role = self.labour_roles[1 + r.randrange(3)]
        hours = (2 + r.randrange(14)) / 2
        lines.append(("Labour - " + role[1], "", hours, role[2]))
        for _ in range(r.randrange(3)):
            s = r.choice(self.supplies)
            lines.append((s[4], s[1], 1 + r.randrange(4), s[3]))
        if r.random() < 0.3:
            lines.append(("Call-out fee", "CALLOUT", 1, 9900))
        out_lines = []
        ex_total = tax_total = 0
        for desc, part, qty, price in lines:
            total = round(qty * price)
            tax = _gst(total)
            ex_total += total
            tax_total += tax
            out_lines.append(
                {
                    "description": desc,
                    "partNumber": part,
                    "quantity": qty,
                    "unitPriceExTax": _money(price),
                    "accountCode": "200",
                    "taxCode": "GST",
                    "totalExTax": _money(total),
                    "tax": _money(tax),
                }
            )
        inc_total = ex_total + tax_total
        if self.forced_invoices < 5:
            inv_status = INVOICE_STATUSES[self.forced_invoices]
            self.forced_invoices += 1
            if inv_status in ("Unpaid", "Part Paid") and due <= self.now:
                date = self.now - r.randrange(1, 5) * 86400
                due = date + terms * 86400
            if inv_status == "Overdue" and due > self.now:
                date = self.now - (terms + 10) * 86400
                due = date + terms * 86400
        else:
            roll = r.random()
            if roll < 0.03:
                inv_status = "Void"
            elif due <= self.now:
                inv_status = "Paid" if roll < 0.86 else "Part Paid" if roll < 0.9 else "Overdue"
            else:
                inv_status = "Unpaid" if roll < 0.6 else "Paid" if roll < 0.9 else "Part Paid"
        paid = {"Paid": inc_total, "Part Paid": inc_total * r.randrange(20, 80) // 100}.get(inv_status, 0)
        outstanding = 0 if inv_status == "Void" else inc_total - paid
        number = f"INV-{self.next_invoice}"
        self.next_invoice += 1
        sent = (
            inv_status != "Void"
            and billing.get("accountingSystem") is not None
            and (inv_status != "Unpaid" or r.random() < 0.7)
        )
        invoice = {
            "invoiceId": self.uid(),
            "invoiceNumber": number,
            "invoiceDate": _day(date),
            "dueDate": _day(due),
            "jobId": job["jobId"],
            "jobNumber": job["jobNumber"],
            "billingCustomer": {
                "id": billing["customerId"],
                "name": billing["customerName"],
                "customerNumber": billing["customerNumber"],
                "emailAddress": billing["emailAddress"],
            },
            "billingAddress": {
                "line1": billing["postalLine1"] or billing["streetLine1"],
                "line2": "",
                "suburb": billing["postalSuburb"] or billing["streetSuburb"],
                "state": billing["postalState"] or billing["streetState"],
                "postcode": billing["postalPostcode"] or billing["streetPostcode"],
                "country": "Australia",
            },
            "reference": job["purchaseOrderNumber"] or job["jobNumber"],
            "totalExTax": _money(ex_total),
            "totalTax": _money(tax_total),
            "totalIncTax": _money(inc_total),
            "amountPaid": _money(paid),
            "amountOutstanding": _money(outstanding),
            "sentToAccounts": sent,
            "lines": out_lines,
            "invoiceCustomFields": [{"fieldName": "Payment Terms", "fieldValue": f"{terms} days"}]
            if r.random() < 0.3
            else [],
            "jobCustomFields": job["customFields"] or [],
            "customerCustomFields": billing["customFields"],
            "status": inv_status,
            "accountingSystem": billing.get("accountingSystem"),
            "lastModified": _ts(self.when(date, date + 45 * 86400), self.ms()),
        }
        self.nested["invoice_lines"] += len(out_lines)
        return [invoice]

    def write_invoice(self, invoice: dict[str, Any]) -> None:
        r = self.rng
        if self.want("number_as_text", 0.02):
            invoice["amountPaid"] = f"${invoice['amountPaid']:,.2f}"
            self.note_dirty(
                "number_as_text", "invoices", invoice["invoiceId"], "amountPaid", value=invoice["amountPaid"]
            )
        elif self.want("text_date", 0.01):
            invoice["dueDate"] = self.drng.choice(_TEXT_DATES)
            self.note_dirty(
                "text_date", "invoices", invoice["invoiceId"], "dueDate", value=invoice["dueDate"]
            )
        self.out.write("invoices", invoice)
        status = invoice["status"]
        if status in ("Paid", "Part Paid"):
            paid = round(float(str(invoice["amountPaid"]).replace(",", "").replace("$", "")) * 100)
            date = self.stamp(invoice["invoiceDate"])
            self.out.write(
                "payments",
                {
                    "paymentId": self.uid(),
                    "invoiceId": invoice["invoiceId"],
                    "invoiceNumber": invoice["invoiceNumber"],
                    "paymentDate": _ts(self.when(date, date + 30 * 86400), 0),
                    "paymentAmount": _money(paid),
                    "surchargeAmount": _money(paid * 15 // 1000) if r.random() < 0.2 else 0.0,
                    "paymentMethod": r.choice(PAYMENT_METHODS),
                    "receiptNumber": f"R{self.next_receipt}",
                    "comment": "",
                    "sentToAccounts": invoice["sentToAccounts"],
                },
            )
            self.next_receipt += 1
        if status == "Overdue" and r.random() < 0.7:
            self.new_note(
                "Invoice",
                invoice["invoiceId"],
                self.stamp(invoice["invoiceDate"]) + 20 * 86400,
                text="Invoice overdue - reminder sent, customer promised payment this week.",
            )
        if r.random() < 0.05:
            self.new_attachment(
                "Invoice",
                invoice["invoiceId"],
                self.stamp(invoice["invoiceDate"]),
                "Document",
                title=f"Tax Invoice {invoice['invoiceNumber']}",
            )

    # -- per-job extras: supplier bills, notes, photos, forms -------------------------------------------

    def job_extras(self, job: dict[str, Any], created: int, tech: str | None) -> None:
        """Bills, notes, photos and forms of one job; ``created``/``tech`` are the pre-dirt values."""
        r = self.rng
        status = job["jobStatus"]
        if status in (0, 2, 6, 7) and r.random() < 0.45:
            supplier = r.choice(self.suppliers)
            date = self.when(created, created + 10 * 86400)
            credit = r.random() < 0.05
            lines = []
            ex_total = inc_total = 0
            for _ in range(1 + r.randrange(3)):
                s = r.choice(self.supplies)
                qty = 1 + r.randrange(5)
                total = qty * s[2] * (-1 if credit else 1)
                inc = total + (_gst(abs(total)) * (-1 if credit else 1))
                ex_total += total
                inc_total += inc
                lines.append(
                    {
                        "description": s[4],
                        "partNumber": s[1],
                        "quantity": qty,
                        "unitCostExTax": _money(s[2]),
                        "totalAmountExTax": _money(total),
                        "totalAmountIncTax": _money(inc),
                        "accountCode": "310",
                        "reference": job["jobNumber"],
                        "isTaxable": True,
                    }
                )
            self.nested["supplier_invoice_lines"] += len(lines)
            self.out.write(
                "supplier_invoices",
                {
                    "supplierInvoiceId": self.uid(),
                    "supplier": supplier,
                    "createdOn": _ts(date + 3600, self.ms()),
                    "invoiceDate": _day(date),
                    "dueDate": _day(date + 30 * 86400),
                    "trackingNumber": f"{'CR' if credit else 'SI'}{self.next_bill}",
                    "reference": job["jobNumber"],
                    "accepted": r.random() < 0.9,
                    "type": "CREDIT" if credit else "INVOICE",
                    "accountCode": "310",
                    "isExpense": False,
                    "sentToAccounts": self.now - date > 14 * 86400,
                    "totalAmountExTax": _money(ex_total),
                    "totalAmountIncTax": _money(inc_total),
                    "lines": lines,
                },
            )
            self.next_bill += 1
        for _ in range(int(r.random() * 2.2)):
            self.new_note("Job", job["jobId"], created)
        if r.random() < 0.14:
            for _ in range(1 + (r.random() < 0.4)):
                self.new_attachment("Job", job["jobId"], created, "Photo")
        if r.random() < 0.03:
            self.new_attachment(
                "Job", job["jobId"], created, "Document", title=f"Compliance certificate {job['jobNumber']}"
            )
        if status in (0, 2, 6, 7) and r.random() < 0.2:
            self.new_form(job, created, tech)

    def new_note(self, entity_type: str, entity_id: str, after: int, text: str | None = None) -> None:
        r = self.rng
        activity, template = r.choice(NOTE_TEXTS)
        if text is not None:
            activity, template = "Internal", text
        when = self.when(after, after + 30 * 86400)
        note = {
            "noteId": self.uid(),
            "entityType": entity_type,
            "entityId": entity_id,
            "noteContent": template.format(
                d=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")[r.randrange(5)]
            ),
            "createdByName": r.choice(self.staff_names),
            "dateCreated": _ts(when, self.ms()),
            "activityType": activity,
        }
        if self.want("formula_string", 0.01):
            note["noteContent"] = self.drng.choice(_FORMULAS)
            self.note_dirty(
                "formula_string", "notes", note["noteId"], "noteContent", value=note["noteContent"]
            )
        elif self.want("control_characters", 0.01):
            note["noteContent"] = (
                note["noteContent"][:20] + self.drng.choice(_CONTROL_BITS) + note["noteContent"][20:]
            )
            self.note_dirty("control_characters", "notes", note["noteId"], "noteContent")
        if self.irng.random() < INLINE_IMAGE_RATE:
            note["noteContent"] += self.inline_images(note["noteId"])
        self.out.write("notes", note)

    def inline_images(self, note_id: str) -> str:
        """HTML for one or two photos pasted into a note; in a dirty tenant the first two are broken."""
        r = self.irng
        html = []
        for n in range(1, 2 + (r.random() < 0.25)):
            if r.random() < 0.6:
                data = _png(8 + r.randrange(8), 8 + r.randrange(8), (r.randrange(256), 90, 40),
                            (30, r.randrange(256), 200), r.randbytes(8))
                ext, mime = "png", "image/png"
            else:
                data = _jpeg([r.randrange(256) for _ in range(4)], 2, 2)
                ext, mime = "jpg", "image/jpeg"
            broken = self.dirty and len(self.manifest["broken_inline_image"]) < 2
            as_url = r.random() < 0.4 or (broken and self.manifest["broken_inline_image"])
            if as_url:
                image_id, name = f"{note_id}-{n}", f"site-photo-{n}.{ext}"
                if not broken:  # a broken URL image is one whose file the tenant no longer has
                    self._pending_files.append((self.root / NOTE_IMAGES_DIR / image_id, name, data))
                src = f"{TENANT_URL}{NOTE_IMAGES_PATH}/{image_id}/{name}"
            else:
                encoded = base64.b64encode(data).decode("ascii")
                src = f"data:{mime};base64,{encoded[:-6] + '*#!' if broken else encoded}"
            if broken:
                self.note_dirty("broken_inline_image", "notes", note_id, "noteContent", src=src[:120])
            html.append(f'<p><img src="{src}" alt="photo {n}"></p>')
        return "\n" + "".join(html)

    def write_file(self, attachment_id: str, file_name: str, data: bytes) -> None:
        """Queue one attachment file; queued files are written in parallel bursts.

        ``mkdir`` + ``open`` per file is the slowest thing the generator does (tens of thousands of
        files at 1M records, ~0.5-1.5 ms each on a slow virtual disk). Writing them from a few threads
        in bursts of :data:`_FILE_BATCH` (while the generating thread waits, so there is no GIL
        convoy) cuts that ~10x. The bytes are decided here, in order, so output stays deterministic;
        the pending list is bounded, so memory stays flat.
        """
        self._pending_files.append((self.files_dir / attachment_id, file_name, data))
        self.files_bytes += len(data)
        self.files_written += 1
        if len(self._pending_files) >= _FILE_BATCH:
            self.flush_files()

    def flush_files(self) -> None:
        batch, self._pending_files = self._pending_files, []
        if batch:
            for _ in self._file_pool.map(_write_one_file, *zip(*batch, strict=True)):
                pass

    def new_attachment(
        self,
        entity_type: str,
        entity_id: str,
        after: int,
        category: str,
        *,
        title: str = "",
        data: bytes | None = None,
        file_name: str | None = None,
    ) -> str:
        r = self.rng
        ident = self.uid()
        when = self.when(after, after + 20 * 86400)
        if data is None:
            if category == "Photo":
                t = time.gmtime(when)
                stem = (
                    f"IMG_{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}"
                    f"_{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}"
                )
                if r.random() < 0.6:
                    noise = r.randbytes(16)
                    data = _png(
                        20 + r.randrange(20),
                        16 + r.randrange(16),
                        (r.randrange(256), r.randrange(256), r.randrange(256)),
                        (r.randrange(256), r.randrange(256), r.randrange(256)),
                        noise,
                    )
                    file_name, content_type = stem + ".png", "image/png"
                else:
                    data = _jpeg([r.randrange(256) for _ in range(4)], 2 + r.randrange(3), 2 + r.randrange(2))
                    file_name, content_type = stem + ".jpg", "image/jpeg"
            else:
                data = _pdf(
                    title or "Document",
                    (
                        self.business_name,
                        f"Reference {entity_type} {entity_id[:8]}",
                        "Generated by the Ascora sandbox.",
                    ),
                )
                file_name, content_type = (title or "Document").replace("/", "-") + ".pdf", "application/pdf"
        else:
            content_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        assert file_name is not None
        self.write_file(ident, file_name, data)
        self.out.write(
            "attachments",
            {
                "attachmentId": ident,
                "entityType": entity_type,
                "entityId": entity_id,
                "fileName": file_name,
                "contentType": content_type,
                "sizeBytes": len(data),
                "dateCreated": _ts(when, self.ms()),
                "category": category,
                "createdByName": self.irng.choice(self.staff_names),
            },
        )
        return ident

    def new_form(self, job: dict[str, Any], created: int, tech: str | None) -> None:
        r = self.rng
        form_name, fields = r.choice(FORMS)
        tech = tech or self.staff_names[0]
        answers = []
        for code, values in fields:
            if values is None:
                value = tech if code in ("SupervisorName", "SignedBy") else f"{r.randrange(100000, 999999)}"
            else:
                value = r.choice(values)
            answers.append({"fieldCode": code, "value": value})
        when = self.when(created, created + 15 * 86400)
        doc = _docx(f"{form_name} - {job['jobNumber']}", [f"{a['fieldCode']}: {a['value']}" for a in answers])
        attachment = self.new_attachment(
            "Job", job["jobId"], when, "Form", data=doc, file_name=f"{form_name} - {job['jobNumber']}.docx"
        )
        self.out.write(
            "form_responses",
            {
                "formResponseId": self.uid(),
                "formName": form_name,
                "jobId": job["jobId"],
                "jobNumber": job["jobNumber"],
                "completedBy": tech,
                "dateCompleted": _ts(when, self.ms()),
                "fields": answers,
                "attachmentId": attachment,
            },
        )

    def new_enquiry(self, billing, quotes, jobs, created) -> None:
        r = self.rng
        when = (
            self.when(created - 20 * 86400, created + 86400) if created > self.start + 20 * 86400 else created
        )
        target_quote = quotes[0]["quoteNumber"] if quotes else None
        target_job = jobs[0]["jobNumber"] if jobs and not quotes else None
        if target_quote or target_job:
            status = "Converted" if r.random() < 0.85 else "Closed"
        else:
            status = "New" if self.now - when < 60 * 86400 else "Closed"
        if status != "Converted":
            target_quote = target_job = None
        template = r.choice(self.job_templates)
        number = f"E{self.next_enquiry}"
        self.next_enquiry += 1
        self.out.write(
            "enquiries",
            {
                "enquiryId": self.uid(),
                "enquiryNumber": number,
                "companyName": billing["companyName"],
                "firstName": billing["contactFirstName"],
                "lastName": billing["contactLastName"],
                "email": billing["emailAddress"],
                "mobile": billing["mobileNumber"],
                "phone": billing["phoneNumber"],
                "addressLine1": billing["streetLine1"],
                "addressLine2": "",
                "addressSuburb": billing["streetSuburb"],
                "addressState": billing["streetState"],
                "addressPostcode": billing["streetPostcode"],
                "addressCountry": "Australia",
                "enquiryDescription": f"Web enquiry: {template[1]}",
                "leadSource": (billing["leadSource"] or {}).get("name") or r.choice(LEAD_SOURCES),
                "customFields": [
                    {
                        "fieldName": "Preferred Contact Time",
                        "fieldValue": r.choice(_CUSTOMER_CF["Preferred Contact Time"]),
                    }
                ]
                if r.random() < 0.4
                else [],
                "status": status,
                "dateCreated": _ts(when, self.ms()),
                "convertedToQuoteNumber": target_quote,
                "convertedToJobNumber": target_job,
            },
        )

    # -- dirty mutations ---------------------------------------------------------------------------------

    def exact_dup(self, resource: str, ident: str) -> bool:
        if self.want("exact_duplicate", 0.01):
            self.note_dirty("exact_duplicate", resource, ident, None)
            self.dirty_extra += 1
            return True
        return False

    def dirty_customer(self, c: dict[str, Any]) -> None:
        d = self.drng
        ident = c["customerId"]
        if self.want("invalid_email", 0.03):
            c["emailAddress"] = d.choice(_BAD_EMAILS)
            self.note_dirty("invalid_email", "customers", ident, "emailAddress", value=c["emailAddress"])
        if self.want("text_date", 0.02):
            c["dateCreated"] = d.choice(_TEXT_DATES)
            self.note_dirty("text_date", "customers", ident, "dateCreated", value=c["dateCreated"])
        if self.want("unmapped_picklist", 0.02):
            c["customerType"] = {"id": self.duid(), "name": d.choice(_ODD_CUSTOMER_TYPE)}
            self.note_dirty(
                "unmapped_picklist", "customers", ident, "customerType", value=c["customerType"]["name"]
            )
        if self.want("non_ascii_name", 0.02):
            c["customerName"] = d.choice(_NON_ASCII)
            if c["companyName"]:
                c["companyName"] = c["customerName"]
            self.note_dirty("non_ascii_name", "customers", ident, "customerName", value=c["customerName"])
        elif self.want("blank_required_name", 0.01):
            c["customerName"] = d.choice(("", "   "))
            c["companyName"] = ""
            self.note_dirty("blank_required_name", "customers", ident, "customerName")
        elif self.want("control_characters", 0.01):
            name = c["customerName"]
            c["customerName"] = name[:3] + d.choice(_CONTROL_BITS) + name[3:]
            self.note_dirty("control_characters", "customers", ident, "customerName")
        elif self.want("formula_string", 0.005):
            c["customerName"] = d.choice(_FORMULAS)
            self.note_dirty("formula_string", "customers", ident, "customerName", value=c["customerName"])

    def duplicate_customer(self, c: dict[str, Any]) -> None:
        """A second record for the same business, spelt differently (Ascora never merged them)."""
        if not self.want("duplicate_customer", 0.025) or not c["customerName"].strip():
            return
        d = self.drng
        name = c["customerName"]
        variants = [name.lower(), name.upper(), f" {name}  ", name.replace(" ", "  ", 1)]
        if "Pty Ltd" in name:
            variants += [
                name.replace("Pty Ltd", "P/L"),
                name.replace("Pty Ltd", "PTY. LTD."),
                name.replace(" Pty Ltd", ""),
            ]
        if " " in name and not c["companyName"]:
            first, _, last = name.partition(" ")
            variants += [f"{last}, {first}", f"{first[0]}. {last}"]
        dup = dict(c)
        dup["customerId"] = self.duid()
        dup["customerName"] = d.choice(variants)
        if dup["companyName"]:
            dup["companyName"] = dup["customerName"]
        dup["customerNumber"] = ""
        self.out.write("customers", dup)
        self.dirty_extra += 1
        self.note_dirty(
            "duplicate_customer",
            "customers",
            dup["customerId"],
            "customerName",
            value=dup["customerName"],
            duplicate_of=c["customerId"],
        )

    def dirty_contact(self, contact: dict[str, Any]) -> None:
        d = self.drng
        ident = contact["contactId"]
        if self.want("invalid_email", 0.03):
            contact["emailAddress"] = d.choice(_BAD_EMAILS)
            self.note_dirty("invalid_email", "contacts", ident, "emailAddress", value=contact["emailAddress"])
        if self.want("non_ascii_name", 0.01):
            contact["firstName"], _, contact["lastName"] = d.choice(
                _NON_ASCII[::3] + ("Zoë Ó Briain",)
            ).partition(" ")
            self.note_dirty("non_ascii_name", "contacts", ident, "firstName", value=contact["firstName"])
        elif self.want("formula_string", 0.005):
            contact["lastName"] = d.choice(_FORMULAS)
            self.note_dirty("formula_string", "contacts", ident, "lastName", value=contact["lastName"])

    def dirty_job(self, job: dict[str, Any]) -> None:
        d = self.drng
        ident = job["jobId"]
        if self.want("job_missing_customer", 0.01):
            job["siteCustomer"] = {"id": self.duid(), "name": job["siteCustomer"]["name"]}
            job["billingCustomer"] = {"id": self.duid(), "name": job["billingCustomer"]["name"]}
            self.note_dirty(
                "job_missing_customer", "jobs", ident, "billingCustomer", value=job["billingCustomer"]["id"]
            )
        if self.want("job_without_technician", 0.03):
            job["assignedUser"] = None
            self.note_dirty("job_without_technician", "jobs", ident, "assignedUser")
        if self.want("unmapped_picklist", 0.02):
            job["jobStatusText"] = d.choice(_ODD_JOB_STATUS)
            self.note_dirty("unmapped_picklist", "jobs", ident, "jobStatusText", value=job["jobStatusText"])
        if self.want("text_date", 0.02):
            field = d.choice(("dateCreated", "completedDate"))
            job[field] = d.choice(_TEXT_DATES)
            self.note_dirty("text_date", "jobs", ident, field, value=job[field])
        if self.want("long_text", 0.01):
            sentence = (
                f"{job['jobDescription']} Customer notes: please call before arrival, side gate code 1234, "
                "dog is friendly. "
            )
            job["jobDescription"] = (sentence * (20000 // len(sentence) + 1))[:20000]
            self.note_dirty("long_text", "jobs", ident, "jobDescription", length=20000)
        if self.want("formula_string", 0.01):
            job["jobName"] = d.choice(_FORMULAS)
            self.note_dirty("formula_string", "jobs", ident, "jobName", value=job["jobName"])
        elif self.want("control_characters", 0.01):
            job["jobName"] = job["jobName"][:5] + d.choice(_CONTROL_BITS) + job["jobName"][5:]
            self.note_dirty("control_characters", "jobs", ident, "jobName")
        if self.want("number_as_text", 0.02):
            job["totalExTax"] = f"${job['totalExTax']:,.2f}"
            self.note_dirty("number_as_text", "jobs", ident, "totalExTax", value=job["totalExTax"])

    # -- run ------------------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        api_dir = self.root / "api"
        api_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir = self.root / "files"
        import shutil

        images_dir = self.root / NOTE_IMAGES_DIR
        for stale in (self.files_dir, images_dir, self.root / "exports"):  # a re-run leaves no old files
            if stale.exists():
                shutil.rmtree(stale)
        self.files_dir.mkdir(parents=True)
        images_dir.mkdir()
        self.out = _Out(api_dir)
        self._file_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tenant-files")
        self._pending_files: list[tuple[Path, str, bytes]] = []
        try:
            self.make_globals()
            # Households until the running total reaches ``size`` (overshoot: at most one household).
            # Each household sits on the timeline at the share of ``size`` already written, so creation
            # dates (and job numbers) rise together through the tenant's four years of history.
            households = 0
            while households == 0 or self.total_records() < self.size:
                self.household(min(1.0, self.total_records() / self.size))
                households += 1
            self.flush_files()
        finally:
            self.out.close()
            self._file_pool.shutdown(wait=True)
        counts = dict(self.out.counts)
        meta = {
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "size": self.size,
            "dirty": self.dirty,
            "api_key": API_KEY,
            "generated_at": self.now_dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "counts": counts,
            "nested_counts": dict(self.nested),
            "total_records": sum(counts.values()) + sum(self.nested.values()),
            "households": households,
            "business": {
                "name": self.business_name,
                "trades": list(self.trades),
                "home_state": self.home_state,
                "accounting_system": self.accounting_system,
            },
            "files": {"count": self.files_written, "bytes": self.files_bytes},
        }
        (self.root / "tenant.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        manifest_path = self.root / "dirty_manifest.json"
        if self.dirty:
            manifest_path.write_text(
                json.dumps(self.manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        elif manifest_path.exists():
            manifest_path.unlink()
        return counts


def generate_tenant(
    out_dir: str | os.PathLike[str],
    *,
    size: int = 500,
    seed: int = 42,
    dirty: bool = False,
    formats: Iterable[str] = ("jsonl",),
) -> dict[str, int]:
    """Write a synthetic tenant to ``out_dir`` and return the record count per API resource.

    ``formats`` always includes ``"jsonl"`` (the API shape the emulator serves); ``"xlsx"`` and/or
    ``"csv"`` additionally write Ascora-style exports under ``<out_dir>/exports/`` (see
    :mod:`.export_writer`). Same ``seed``, ``size`` and ``dirty`` give byte-identical files.
    """
    if size < 1:
        raise ValueError("size must be positive")
    formats = tuple(formats)
    unknown = set(formats) - {"jsonl", "xlsx", "csv"}
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; use jsonl, xlsx or csv")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    counts = TenantGenerator(root, size=size, seed=seed, dirty=dirty).run()
    export_formats = [f for f in formats if f in ("xlsx", "csv")]
    if export_formats:
        from airflow_ascora_provider.sandbox.export_writer import write_exports

        for fmt in export_formats:
            write_exports(root, fmt=fmt)
    return counts
