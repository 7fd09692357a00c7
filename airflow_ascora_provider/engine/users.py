"""User resolution: Ascora staff → destination users by e-mail, with a fallback owner.

Ascora names its technicians (``assignedUser.name``); the staff list gives their e-mails; the
destination matches users by e-mail. Whoever does not match is listed in a pre-flight report and
their records go to the fallback owner, so no record lands without a valid owner. The result is
stored in the ledger, where every later load task reads it.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.transform import USERS_WATERMARK
from airflow_ascora_provider.reports.render import Section, Table


class NoFallbackOwner(RuntimeError):
    pass


def resolve_users(ctx: MigrationContext) -> dict[str, Any]:
    users = ctx.destination.list_users()
    by_email = {u.email.casefold(): u for u in users if u.email and u.active}
    staff = list(ctx.snapshot.iter_records("staff_user", ["id", "full_name", "email", "is_active"])) \
        if "staff_user" in ctx.snapshot.manifest()["objects"] else []
    fallback_id = None
    fallback_email = ctx.fallback_owner_email or _previous_fallback(ctx)
    if fallback_email:
        fallback = by_email.get(fallback_email.casefold())
        if fallback is None:
            raise NoFallbackOwner(f"the fallback owner {fallback_email} is not a user of "
                                  f"{ctx.destination_name}; known users: {', '.join(sorted(by_email)) or 'none'}")
        fallback_id = fallback.id
    by_name: dict[str, dict[str, Any]] = {}
    matched, unmatched = [], []
    for member in staff:
        key = (member["full_name"] or "").strip().casefold()
        user = by_email.get((member["email"] or "").casefold())
        entry = {"staff_id": member["id"], "name": member["full_name"], "email": member["email"],
                 "user_id": user.id if user else None}
        by_name[key] = entry
        (matched if user else unmatched).append(entry)
    # Maps that write to the users themselves (a role pick-list on the User) go by staff id: two staff
    # members may share a name, never an id.
    by_staff_id = {entry["staff_id"]: entry["user_id"] for entry in matched}
    result = {"by_name": by_name, "by_staff_id": by_staff_id, "fallback_user_id": fallback_id,
              "fallback_email": fallback_email,
              "matched": len(matched), "unmatched": unmatched, "destination_users": len(users)}
    ctx.ledger.set_watermark(ctx.destination_name, USERS_WATERMARK, json.dumps(result))
    if unmatched and not fallback_id:
        raise NoFallbackOwner(
            f"{len(unmatched)} staff members match no {ctx.destination_name} user "
            f"({', '.join(u['name'] or '?' for u in unmatched[:10])}) and no fallback owner is set; "
            "invite them or set the fallback_owner param"
        )
    return result


def _previous_fallback(ctx: MigrationContext) -> str | None:
    """A scheduled delta keeps the fallback owner the migration was approved with."""
    text = ctx.ledger.get_watermark(ctx.destination_name, USERS_WATERMARK)
    return json.loads(text).get("fallback_email") if text else None


def users_sections(result: dict[str, Any]) -> list[Section]:
    return [
        Section("Owners", facts={"staff matched by e-mail": result["matched"],
                                 "staff not matched": len(result["unmatched"]),
                                 "fallback owner": result.get("fallback_email") or "none"},
                verdict="warn" if result["unmatched"] else "ok"),
        Section("Staff without a destination user (their records go to the fallback owner)", tables=[
            Table(["staff member", "e-mail"], [[u["name"], u["email"]] for u in result["unmatched"]])]),
    ]
