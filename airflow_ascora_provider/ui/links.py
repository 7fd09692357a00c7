"""Where the reports page lives, for links from task output and the approval form."""

from __future__ import annotations

from urllib.parse import quote

URL_PREFIX = "/ascora-migrations"


def run_page_url(run_id: str) -> str:
    """The reports page of one migration run, absolute when ``[api] base_url`` is set."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{URL_PREFIX}/runs/{quote(run_id, safe='')}"
