"""Reports escape HTML and neutralise spreadsheet formulas."""

from airflow_ascora_provider.reports.render import Section, Table, neutralise_cell, to_csv, to_html


def test_html_escapes_tenant_text():
    page = to_html("t", [Section("s", tables=[Table(["a"], [["<script>alert(1)</script>"]])])])
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_csv_neutralises_formulas():
    assert neutralise_cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    assert neutralise_cell("+61 400 000 000") == "'+61 400 000 000"
    assert neutralise_cell("plain") == "plain"
    assert "'@SUM(A1)" in to_csv(["v"], [["@SUM(A1)"]])
