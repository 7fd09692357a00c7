"""Shared set-up for the Dataverse tests: the emulator over TLS and a destination pointed at it."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_ascora_provider.sandbox.dataverse import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PREFIX,
    DEFAULT_TENANT,
    TlsServedApp,
    create_app,
)


def dataverse_users(tenant: Path, keep_unmatched: int = 1) -> list[dict]:
    """systemusers for a tenant's staff (some left unmatched, for the fallback owner) plus the fallback."""
    staff = [json.loads(line) for line in (tenant / "api" / "users.jsonl").read_text().splitlines() if line]
    users = [{"email": u["emailAddress"], "name": u["fullName"]}
             for u in staff[: max(0, len(staff) - keep_unmatched)] if u.get("emailAddress")]
    return users + [{"email": "owner@example.com", "name": "Fallback Owner"}]


def serve(**kwargs) -> TlsServedApp:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("key_activation_seconds", 0.05)
    return TlsServedApp(create_app(**kwargs)).start()


def connection_options(server: TlsServedApp, **extra) -> dict:
    """destination_options / hook kwargs reaching the emulator (authority = the emulator itself)."""
    return {"base_url": server.url, "tenant_id": DEFAULT_TENANT, "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET, "authority_host": server.url, "ca_bundle": str(server.ca_file),
            "requests_per_window": 0, "publisher_prefix": DEFAULT_PREFIX, "key_wait_seconds": 30, **extra}


def airflow_connection(server: TlsServedApp, **extra) -> str:
    """AIRFLOW_CONN_DATAVERSE_DEFAULT value for the emulator."""
    options = connection_options(server, **extra)
    return json.dumps({"conn_type": "dataverse", "host": server.url, "login": DEFAULT_CLIENT_ID,
                       "password": DEFAULT_CLIENT_SECRET,
                       "extra": {k: v for k, v in options.items()
                                 if k not in ("base_url", "client_id", "client_secret")}})
