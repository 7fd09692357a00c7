"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

Kept as plain data (no imports of hooks) so ``airflow providers list`` and the connection form stay
cheap; the declarative ``conn-fields`` / ``ui-field-behaviour`` give Airflow 3 its connection forms
without importing flask/wtforms.
"""

from __future__ import annotations

from airflow_ascora_provider.version import __version__


def _secret(label: str, description: str) -> dict:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"], "format": "password"}}


def _field(label: str, description: str, type_: str = "string", default=None) -> dict:
    schema: dict = {"type": [type_, "null"]}
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-ascora",
        "name": "Ascora",
        "description": "Move a trade business's data out of Ascora (field service management) into a CRM: "
        "Salesforce Sales Cloud, Microsoft Dynamics 365 Sales, Freshsales, Zoho CRM or Twenty.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Ascora", "external-doc-url": "https://www.ascora.com.au",
             "tags": ["service"]},
            {"integration-name": "Twenty CRM", "external-doc-url": "https://twenty.com/developers",
             "tags": ["service"]},
        ],
        "hooks": [
            {"integration-name": "Ascora", "python-modules": ["airflow_ascora_provider.hooks.ascora"]},
            {"integration-name": "Twenty CRM", "python-modules": ["airflow_ascora_provider.hooks.twenty"]},
        ],
        "operators": [
            {"integration-name": "Ascora", "python-modules": [
                "airflow_ascora_provider.operators.extract",
                "airflow_ascora_provider.operators.audit",
            ]},
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_ascora_provider.hooks.ascora.AscoraHook",
                "connection-type": "ascora",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "API base URL", "password": "API key (Auth header)"},
                    "placeholders": {
                        "host": "https://api.ascora.com.au",
                        "password": "Administration → API Settings → Generate New API Key",
                        "extra": '{"page_size": 250, "enable_extensions": false}',
                    },
                },
                "conn-fields": {
                    "page_size": _field("Page size", "Records per page (Ascora's default is 250).", "integer", 250),
                    "requests_per_minute": _field("Requests per minute",
                                                  "Client-side pacing; Ascora publishes no limit.", "integer"),
                    "request_budget": _field("Request budget", "Stop the run after this many calls.", "integer"),
                    "enable_extensions": _field(
                        "Enable extension endpoints",
                        "Sandbox-only reads (equipment, users, notes ...). The real API has none: use the "
                        "Excel exports for those.", "boolean", False),
                },
            },
            {
                "hook-class-name": "airflow_ascora_provider.hooks.twenty.TwentyHook",
                "connection-type": "twenty",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": "https://api.twenty.com", "password": "Settings → APIs & Webhooks",
                                     "extra": '{"requests_per_minute": 100, "batch_size": 60}'},
                },
                "conn-fields": {
                    "requests_per_minute": _field("Requests per minute", "Your plan's API limit.", "integer", 100),
                    "batch_size": _field("Batch size", "Records per write call (Twenty's cap is 60).", "integer", 60),
                },
            },
            {
                "hook-class-name": "airflow_ascora_provider.hooks.ledger.LedgerHook",
                "connection-type": "ascora_ledger",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "password"],
                    "relabeling": {"host": "SQLAlchemy URL"},
                    "placeholders": {"host": "postgresql+psycopg2://user:pass@host:5432/db"},
                },
            },
        ],
    }
