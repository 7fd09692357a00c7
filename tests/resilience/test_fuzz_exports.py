"""Bad input, fuzzed: malformed Ascora exports never crash extraction and never lose a row.

Hypothesis writes customer and contact exports full of what real tenants hold: ids repeated or
missing, numbers and dates as free text, broken e-mails, yes/no columns with anything in them,
control characters, formula-like strings, very long text, and files saved in Windows-1252 instead
of UTF-8. Extraction must then account for every row (read = staged + quarantined + skipped, and
read = the rows written), give every rejected row a reason, and, for every staged record, name each
field whose text could not be read in the record's issues, with the value, so the load quarantines
it with that reason instead of sending an empty field.
"""

from __future__ import annotations

import csv
import io
import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ascora_provider.sandbox.export_writer import csv_name
from airflow_ascora_provider.source.export_reader import ExportReader
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.staging import Snapshot

_counter = itertools.count()

# Columns fuzzed, with the canonical field each one lands in.
CHECKED = {"EMAIL": "email", "LATITUDE": "latitude", "DATE CREATED": "date_created", "ON HOLD": "on_hold"}

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["=HYPERLINK(\"http://x\")", "+61 400", "-1+1", "@SUM(A1)", "\t=cmd|' /C calc'!A0",
                     "31/31/2020", "2020-02-30", "yesterday", "1e309", "NaN", "-", "0x1F", "Ünïcödé Pty Ltd",
                     "O'Brien & Sons\r\nPlumbing", "a@b", "someone@example.com", "-33.8688", "Y", "No"]),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(min_value=1000, max_value=40_000)),
)
ids = st.one_of(st.sampled_from(["c1", "c2", "c3", " c1 ", "", "   "]), st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True))


@st.composite
def customer_rows(draw):
    rows = []
    for _ in range(draw(st.integers(min_value=1, max_value=25))):
        rows.append({
            "CUSTOMER ID": draw(ids),
            "CUSTOMER NAME": f"Row {len(rows)} " + draw(nasty_text),
            **{column: draw(nasty_text) for column in CHECKED},
        })
    return rows


def _write(folder, name, rows, encoding):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    (folder / name).write_bytes(buffer.getvalue().encode(encoding, errors="replace"))


def _cell(text: str, encoding: str) -> str:
    """The text as it reads back from a file saved in ``encoding`` (what the reader can know).

    NUL bytes are dropped on reading, by the rule docs/ascora-exports.md states (Python's csv module
    refuses them), so a cell of NULs alone is an empty cell.
    """
    return text.encode(encoding, errors="replace").decode(encoding).replace("\x00", "")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=customer_rows(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
       orphan_contacts=st.integers(min_value=0, max_value=3))
def test_malformed_exports_are_accounted_for_row_by_row(tmp_path_factory, rows, encoding, orphan_contacts):
    folder = tmp_path_factory.mktemp(f"fuzz-{next(_counter)}")
    exports = folder / "exports"
    exports.mkdir()
    _write(exports, csv_name("customers", "Customers"), rows, encoding)
    if orphan_contacts:
        _write(exports, csv_name("customers", "Contacts"),
               [{"CONTACT ID": f"k{i}", "CUSTOMER ID": f"no-such-customer-{i}", "FIRST NAME": "Kim",
                 "EMAIL": "kim@"} for i in range(orphan_contacts)], encoding)

    snapshot = Snapshot(folder / "staging", "fuzz")
    with ExportReader(exports) as reader:
        manifest = extract(reader, snapshot)

    for name, stats in manifest["objects"].items():
        assert stats["read"] == stats["staged"] + stats["quarantined"] + stats["skipped"], name
    assert manifest["objects"]["customer"]["read"] == len(rows)
    if orphan_contacts:
        assert manifest["objects"]["contact"]["staged"] == orphan_contacts  # kept; the audit flags orphans

    rejected = list(snapshot.iter_rejected())
    assert len(rejected) == manifest["totals"]["quarantined"] + manifest["totals"]["skipped"]
    for row in rejected:
        assert row["object"] and row["reason"] and row["disposition"] in ("quarantined", "skipped"), row

    # Every non-blank cell that did not survive as a value is named, with its text, in the issues.
    staged = {r["id"]: r for r in snapshot.iter_records("customer")}
    first_rows: dict[str, dict] = {}
    for row in rows:
        key = _cell(row["CUSTOMER ID"], encoding).strip()
        if key:
            first_rows.setdefault(key, row)
    for key, row in first_rows.items():
        record = staged[key]
        issues = {i["field"]: i for i in json.loads(record["_issues"] or "[]")}
        for column, field in CHECKED.items():
            text = _cell(row[column], encoding)
            if text.strip() and record.get(field) is None:
                assert field in issues, (key, field, text[:80], issues)
                assert issues[field]["reason"], issues[field]
