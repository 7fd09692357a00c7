"""One place that writes reports: JSON for machines, a self-contained HTML page for people, CSV on demand.

Every step (audit, compatibility, sample diff, reconciliation, delta, rollback) describes its report
as :class:`Section` objects; this module turns them into files. Reports hold source data, so two rules
apply everywhere: HTML escapes every value, and CSV neutralises formula-like cells (``=``, ``+``, ``-``,
``@`` and control starts) so opening a report in Excel can never run what a tenant typed.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    limit: int = 500  # HTML shows at most this many rows; JSON keeps all


@dataclass
class Section:
    heading: str
    text: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    verdict: str | None = None  # "ok", "warn" or "fail" colours the heading


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=json_default, sort_keys=False)


def neutralise_cell(value: Any) -> Any:
    """Make a value safe to open in a spreadsheet (OWASP CSV injection guidance)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(columns: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([neutralise_cell(c) for c in columns])
    for row in rows:
        writer.writerow([neutralise_cell(json_default(v) if not isinstance(v, (str, int, float, type(None)))
                                         else v) for v in row])
    return out.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2430;max-width:1200px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea}
.meta{color:#5b6675;font-size:.85rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;width:100%}
th,td{border:1px solid #dde3ea;padding:.3rem .5rem;text-align:left;vertical-align:top;word-break:break-word}
th{background:#f3f6f9}caption{text-align:left;font-weight:600;padding:.3rem 0}
.ok{color:#1a7f37}.warn{color:#9a6700}.fail{color:#cf222e}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{color:#5b6675}dd{margin:0;font-weight:600}.more{color:#5b6675;font-style:italic}
"""


def _cell(value: Any) -> str:
    if value is None:
        return '<span class="more">∅</span>'
    if not isinstance(value, str):
        value = json_default(value) if not isinstance(value, (int, float)) else value
        value = str(value)
    if len(value) > 400:
        value = value[:400] + "…"
    return html.escape(value)


def to_html(title: str, sections: list[Section], meta: dict[str, Any] | None = None) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append("<p class='meta'>" + " · ".join(
            f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>")
    for section in sections:
        css = f" class='{section.verdict}'" if section.verdict else ""
        parts.append(f"<h2{css}>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.facts:
            parts.append("<dl>" + "".join(
                f"<dt>{html.escape(str(k))}</dt><dd>{_cell(v)}</dd>" for k, v in section.facts.items()) + "</dl>")
        for table in section.tables:
            parts.append("<table>")
            if table.caption:
                parts.append(f"<caption>{html.escape(table.caption)}</caption>")
            parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
            for row in table.rows[: table.limit]:
                parts.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
            parts.append("</table>")
            if len(table.rows) > table.limit:
                parts.append(f"<p class='more'>{len(table.rows) - table.limit} more rows in the JSON report.</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(folder, name: str, title: str, data: dict[str, Any], sections: list[Section],
                 meta: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``<name>.json`` and ``<name>.html`` into ``folder`` (an ObjectStoragePath); return their URIs."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{name}.json"
    html_path = folder / f"{name}.html"
    json_path.write_text(to_json(data))
    html_path.write_text(to_html(title, sections, meta))
    return {"json": str(json_path), "html": str(html_path)}
