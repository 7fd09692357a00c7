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
            {"integration-name": "Microsoft Dynamics 365 Sales",
             "external-doc-url": "https://learn.microsoft.com/power-apps/developer/data-platform/webapi/overview",
             "tags": ["service"]},
            {"integration-name": "Zoho CRM", "external-doc-url": "https://www.zoho.com/crm/developer/docs/api/v8/",
             "tags": ["service"]},
            {"integration-name": "Freshsales", "external-doc-url": "https://developers.freshworks.com/crm/api/",
             "tags": ["service"]},
            # Hook and connection type are apache-airflow-providers-salesforce's (SalesforceHook,
            # "salesforce"): users keep the connection they have, so nothing is registered twice here.
            {"integration-name": "Salesforce Sales Cloud (Ascora destination)",
             "external-doc-url": "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/",
             "tags": ["service"]},
        ],
        "hooks": [
            {"integration-name": "Ascora", "python-modules": ["airflow_ascora_provider.hooks.ascora"]},
            {"integration-name": "Twenty CRM", "python-modules": ["airflow_ascora_provider.hooks.twenty"]},
            {"integration-name": "Microsoft Dynamics 365 Sales",
             "python-modules": ["airflow_ascora_provider.hooks.dataverse"]},
            {"integration-name": "Zoho CRM", "python-modules": ["airflow_ascora_provider.hooks.zoho"]},
            {"integration-name": "Freshsales", "python-modules": ["airflow_ascora_provider.hooks.freshsales"]},
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
                "hook-class-name": "airflow_ascora_provider.hooks.freshsales.FreshsalesHook",
                "connection-type": "freshsales",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Bundle alias", "password": "API key"},
                    "placeholders": {"host": "acme.myfreshworks.com/crm/sales (or a legacy acme.freshsales.io)",
                                     "password": "Profile Settings → API Settings → API key",
                                     "extra": '{"plan": "pro", "hourly_reserve": 100, "bulk_threshold": 200}'},
                },
                "conn-fields": {
                    "plan": _field("Plan", "free, growth, pro or enterprise (legacy: sprout, blossom, garden, estate, "
                                   "forest): sets the hourly API limit and the custom-field caps.", "string", "growth"),
                    "requests_per_hour": _field("Requests per hour", "The account's hourly API limit "
                                                "(default: the plan's 1000/2000/5000).", "integer"),
                    "requests_per_minute": _field("Requests per minute", "Client-side pacing (default 400).",
                                                  "integer", 400),
                    "hourly_reserve": _field("Hourly reserve", "Calls per hour left for other integrations of the "
                                             "account; the load pauses before using them.", "integer", 0),
                    "batch_size": _field("Batch size", "Records per write batch (at most 100).", "integer", 50),
                    "bulk_threshold": _field("Bulk upsert threshold", "Pending accounts, contacts or deals of one load "
                                             "unit from which the asynchronous bulk upsert is used (0: never).",
                                             "integer", 200),
                },
            },
            {
                "hook-class-name": "airflow_ascora_provider.hooks.zoho.ZohoHook",
                "connection-type": "zoho",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Accounts server (optional)", "login": "Client ID",
                                   "password": "Client secret"},
                    "placeholders": {"host": "https://accounts.zoho.com.au (empty: from the data centre)",
                                     "login": "1000.XXXXXXXX", "password": "client secret",
                                     "extra": '{"data_centre": "com.au", "edition": "professional", "users": 5}'},
                },
                "conn-fields": {
                    "refresh_token": _secret("Refresh token", "OAuth refresh token (offline access) of the "
                                             "migration user; scopes ZohoCRM.modules.ALL, ZohoCRM.settings.ALL, "
                                             "ZohoCRM.users.READ, ZohoCRM.org.READ, ZohoCRM.coql.READ, "
                                             "ZohoCRM.bulk.ALL, ZohoFiles.files.ALL."),
                    "data_centre": _field("Data centre", "com, eu, in, com.au, com.cn, jp, ca or sa.", "string", "com"),
                    "edition": _field("Edition", "free, standard, professional, enterprise or ultimate: sets the "
                                      "credit allowance, concurrency and custom field/module caps.", "string",
                                      "enterprise"),
                    "users": _field("Licensed users", "Users on the licence (the daily credits grow with them).",
                                    "integer", 1),
                    "credit_budget": _field("Credit budget", "Credits the migration may spend per window "
                                            "(default: 90% of the edition's daily allowance).", "integer"),
                    "credit_window_seconds": _field("Credit window (s)", "Rolling window of the budget.",
                                                    "integer", 86400),
                    "credit_state_path": _field("Credit state file", "A file on a disk every worker shares, "
                                                "to keep one credit count across workers.", "string"),
                    "bulk_threshold": _field("Bulk Write threshold", "Records of one load unit from which a "
                                             "Bulk Write job is used (500 credits a job).", "integer"),
                },
            },
            {
                "hook-class-name": "airflow_ascora_provider.hooks.dataverse.DataverseHook",
                "connection-type": "dataverse",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Environment URL", "login": "Application (client) ID",
                                   "password": "Client secret"},
                    "placeholders": {"host": "https://contoso.crm6.dynamics.com",
                                     "login": "00000000-0000-0000-0000-000000000000",
                                     "extra": '{"tenant_id": "<directory id>", "publisher_prefix": "contoso"}'},
                },
                "conn-fields": {
                    "tenant_id": _field("Tenant (directory) ID", "Entra ID tenant of the app registration."),
                    "publisher_prefix": _field("Publisher prefix", "Customization prefix of the solution "
                                               "publisher that owns the new tables and columns.", "string", "new"),
                    "solution": _field("Solution", "Unique name of the solution new components are added to."),
                    "licence": _field("Licence", "enterprise or professional (Professional allows 15 custom "
                                      "tables; the schema plan checks it).", "string", "enterprise"),
                    "authority_host": _field("Authority host", "Entra ID host (sovereign clouds, or a test "
                                             "emulator); discovery is skipped for a non-Microsoft host.",
                                             "string", "https://login.microsoftonline.com"),
                    "ca_bundle": _field("CA bundle", "Path of a CA file to trust (self-signed test servers)."),
                    "requests_per_window": _field("Requests per 5 minutes", "Service-protection limit to pace "
                                                  "under (paced at 90%); 0 disables pacing.", "integer", 6000),
                    "batch_size": _field("Batch size", "Requests per $batch (at most 1000).", "integer", 100),
                    "large_file_link": _field("Large file link", "URL template ({name}, {sha256}) recorded on "
                                              "the note of a file over the upload limit (e.g. a SharePoint "
                                              "folder); empty: such files are quarantined."),
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
