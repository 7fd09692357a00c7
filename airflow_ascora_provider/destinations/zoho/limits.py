"""Zoho CRM edition limits and API credit costs: one table for the plugin, the hook and the emulator.

Credits per rolling 24 h are ``base + licensed users x per_user + add-ons``, capped (fact sheet
§2.8, from Zoho's API-limits page). Concurrency per org and connected app is §2.8 (DERIVED).
Custom modules per edition come from a third-party summary of Zoho's 2025 edition comparison, and
custom fields per module from Zoho's feature comparison, whose figures change between years
(INFERRED): a connection can override both (``max_custom_fields``, ``max_custom_modules``).
The Quotes module (inventory) is available from Professional.
"""

from __future__ import annotations

import math
import re
from typing import Any

EDITIONS: dict[str, dict[str, Any]] = {
    "free": {"base": 5_000, "per_user": 0, "max": 5_000, "concurrency": 5, "custom_modules": 0,
             "custom_fields": 10, "quotes": False},
    "standard": {"base": 50_000, "per_user": 250, "max": 100_000, "concurrency": 10, "custom_modules": 10,
                 "custom_fields": 100, "quotes": False},
    "professional": {"base": 50_000, "per_user": 500, "max": 3_000_000, "concurrency": 15,
                     "custom_modules": 25, "custom_fields": 200, "quotes": True},
    "enterprise": {"base": 50_000, "per_user": 1_000, "max": 5_000_000, "concurrency": 20,
                   "custom_modules": 200, "custom_fields": 300, "quotes": True},
    "ultimate": {"base": 50_000, "per_user": 2_000, "max": None, "concurrency": 25, "custom_modules": 500,
                 "custom_fields": 500, "quotes": True},
}
HEAVY_API_CONCURRENCY = 10  # sub-concurrency of the heavy APIs, every edition (§2.8)
RECORDS_PER_CREDIT = 10  # insert/update/upsert: 1 credit per 10 records
BULK_WRITE_JOB_CREDITS = 500
CUSTOM_MODULE_CREDITS = 500


def edition_spec(edition: str) -> dict[str, Any]:
    try:
        return EDITIONS[edition.lower()]
    except KeyError:
        raise ValueError(f"unknown Zoho CRM edition {edition!r}; one of {', '.join(EDITIONS)}") from None


def daily_credits(edition: str, users: int, add_ons: int = 0) -> int | None:
    """Allowed credits per 24 h for an edition (None = unlimited)."""
    spec = edition_spec(edition)
    credits = spec["base"] + max(0, users) * spec["per_user"] + max(0, add_ons)
    return credits if spec["max"] is None else min(credits, spec["max"])


def call_cost(method: str, path: str, *, records: int = 0, coql_limit: int | None = None,
              cvid: bool = False) -> int:
    """Credits one call costs (fact sheet §2.8 and §2.3).

    Insert/update/upsert: 1 credit per 10 records; COQL by LIMIT (1-200: 1, 201-1000: 2,
    1001-2000: 3); Bulk Write job creation and custom-module creation: 500; get records with
    ``cvid``: 3; every other call 1.
    """
    if path.endswith("/coql"):
        limit = coql_limit or 200
        return 1 if limit <= 200 else 2 if limit <= 1000 else 3
    if "/bulk/" in path and path.rstrip("/").endswith("/write") and method == "POST":
        return BULK_WRITE_JOB_CREDITS
    if path.endswith("/settings/modules") and method == "POST":
        return CUSTOM_MODULE_CREDITS
    if records and method in ("POST", "PUT") and "/settings/" not in path and "/Attachments" not in path:
        return max(1, math.ceil(records / RECORDS_PER_CREDIT))
    if cvid:
        return 3
    return 1


def api_name_for(label: str) -> str:
    """Zoho derives a new field's API name from its label: words joined by ``_`` (``Ascora ID`` → ``Ascora_ID``)."""
    words = re.findall(r"[A-Za-z0-9]+", label)
    name = "_".join(words) or "Field"
    return name if name[0].isalpha() else f"F_{name}"
