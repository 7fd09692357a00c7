"""Ascora quotes in Zoho CRM by edition: native Quotes on Professional+, notes on Standard.

* Professional: every quote is also a Zoho Quote on its deal, with one ``Quoted_Items`` row per
  Ascora line (a Product per line, keyed by the line's Ascora id); a re-run writes nothing; the
  reconciliation reads the quotes back equal; rollback leaves the org exactly as it was.
* Standard (no Quotes module): the completed mapping drops the native maps, lists them as dropped,
  and quote lines go to notes on the quote's deal as before.
"""

from __future__ import annotations

from collections import defaultdict

from tests.integration.test_zoho_engine import _setup, roll_back_to


def _staged(ctx, name: str) -> list[dict]:
    return list(ctx.snapshot.iter_records(name))


def _writes(zoho) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in zoho.control.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and not r.path.startswith("/oauth/")]


def test_professional_edition_gets_native_quotes_with_their_lines_and_rolls_back(small_tenant, tmp_path):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path, emulator={"edition": "professional"},
                                  options={"edition": "professional"})
    try:
        mapping = ctx.mapping
        assert {"native_quote", "quote_product"} <= set(mapping.maps) and "quote_line" not in mapping.maps
        assert "quote_line" in mapping.document["dropped_maps"]
        state = zoho.app.state.zoho
        before = state.snapshot()["records"]
        load_everything(ctx)

        lines_by_quote: dict[str, list[dict]] = defaultdict(list)
        for line in _staged(ctx, "quote_line_item"):
            lines_by_quote[line["quote_id"]].append(line)
        quotes = {q["id"]: q for q in _staged(ctx, "quote")}
        records = state.snapshot()["records"]
        products = {p["id"]: p for p in records["Products"]}
        deals = {d["id"]: d for d in records["Deals"]}
        zoho_quotes = {q["Ascora_ID"]: q for q in records["Quotes"]}
        assert set(zoho_quotes) == set(quotes)
        assert {p["Ascora_ID"] for p in products.values()} == {
            line["id"] for lines in lines_by_quote.values() for line in lines}
        assert not records["Notes"] or all("Quote line" not in (n.get("Note_Title") or "") for n in records["Notes"])
        with_lines = 0
        for source_id, quote in quotes.items():
            native = zoho_quotes[source_id]
            assert native["Subject"].startswith(f"Quote {quote['quote_number']}")
            assert deals[native["Deal_Name"]["id"]]["Ascora_ID"] == source_id  # the quote's own deal
            expected_stage = {"In Progress": "Draft", "Sent To Customer": "Delivered", "Won": "Closed Won",
                              "Lost": "Closed Lost"}.get(quote["status"], "Draft")
            assert native["Quote_Stage"] == expected_stage
            lines = sorted(lines_by_quote.get(source_id, []), key=lambda r: r["line_number"])
            items = native.get("Quoted_Items") or []
            assert len(items) == len(lines)
            for line, item in zip(lines, items):
                assert products[item["Product_Name"]["id"]]["Ascora_ID"] == line["id"]
                assert float(item["Quantity"]) == float(line["quantity"] or line["hours"] or 1)
                if line["unit_sell_ex_tax"] is not None:
                    assert float(item["List_Price"]) == float(line["unit_sell_ex_tax"])
            with_lines += bool(items)
        assert with_lines > 0, "the tenant must have quotes with lines for this test to mean anything"

        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
        verified = result["content"]["native_quote"]  # Quoted_Items read back equal, row by row
        assert verified["records"] == len(quotes) and verified["mismatch"] == 0, verified["examples"]
        assert result["content"]["quote_product"]["mismatch"] == 0

        zoho.control.requests.clear()
        load_everything(ctx)  # the same snapshot again: every payload hash is unchanged
        assert not _writes(zoho), _writes(zoho)

        after = roll_back_to(before, ctx.ledger, ctx, zoho)
        assert not after["records"]["Quotes"] and not after["records"]["Products"]
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_standard_edition_keeps_quote_lines_as_notes(small_tenant, tmp_path):
    from airflow_ascora_provider.destinations.zoho.plugin import split_note_key
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.mapping.complete import mapping_summary, summary_markdown

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path, emulator={"edition": "standard"},
                                  options={"edition": "standard", "max_custom_fields": 300})
    try:
        mapping = ctx.mapping
        assert "quote_line" in mapping.maps
        assert not {"native_quote", "quote_product"} & set(mapping.maps)
        dropped = mapping.document["dropped_maps"]
        assert set(dropped) == {"native_quote", "quote_product"}
        assert "no Quotes" in dropped["native_quote"]
        assert "native_quote" in summary_markdown(mapping_summary(mapping))
        load_everything(ctx)
        state = zoho.app.state.zoho
        records = state.snapshot()["records"]
        assert "Quotes" not in records and not records["Products"]
        note_keys = {split_note_key(n["Note_Content"])[1] for n in records["Notes"]}
        lines = _staged(ctx, "quote_line_item")
        assert lines and {line["id"] for line in lines} <= note_keys
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_a_changed_quote_ends_with_exactly_its_new_lines_and_restores_its_old_ones():
    """Zoho appends subform rows sent without an id; the plugin deletes the old rows in the same update."""
    from decimal import Decimal

    from airflow_ascora_provider.destinations.spec import OutgoingRecord
    from airflow_ascora_provider.destinations.zoho.plugin import ZohoDestination
    from airflow_ascora_provider.mapping.values import DestRef
    from tests.integration.test_zoho_emulator import _key_field, client_kwargs, served_zoho

    with served_zoho(edition="professional") as zoho:
        dest = ZohoDestination(**client_kwargs(zoho, edition="professional"))
        for module in ("Products", "Quotes"):
            _key_field(dest.hook, module)
        products = [r.dest_id for r in dest.write_batch("Products", [
            OutgoingRecord(f"l{i}", {"Product_Name": f"Line {i}", "Ascora_ID": f"l{i}"}) for i in (1, 2, 3)],
            "Ascora_ID")]

        def rows(*pairs):
            return tuple({"Product_Name": DestRef("Products", products[i]), "Quantity": Decimal(q)}
                         for i, q in pairs)

        first = rows((0, "2"), (1, "1.5"))
        created = dest.write_batch("Quotes", [OutgoingRecord("q1", {"Subject": "Quote 1", "Quoted_Items": first,
                                                                    "Ascora_ID": "q1"})], "Ascora_ID")[0]
        assert created.ok, created.error
        refused = dest.write_batch("Quotes", [OutgoingRecord("q2", {"Subject": "No lines", "Ascora_ID": "q2"})],
                                   "Ascora_ID")[0]
        assert not refused.ok and refused.error_field == "Quoted_Items"
        read = dest.read_records("Quotes", [created.dest_id], ["Quoted_Items"])[created.dest_id]
        assert read["Quoted_Items"] == first
        before_image = read

        second = rows((2, "4"))
        updated = dest.write_batch("Quotes", [OutgoingRecord("q1", {"Quoted_Items": second},
                                                             dest_id=created.dest_id)], "Ascora_ID")[0]
        assert updated.ok, updated.error
        assert dest.read_records("Quotes", [created.dest_id], ["Quoted_Items"])[created.dest_id]["Quoted_Items"] \
            == second
        dest.restore_record("Quotes", created.dest_id, before_image)
        assert dest.read_records("Quotes", [created.dest_id], ["Quoted_Items"])[created.dest_id]["Quoted_Items"] \
            == first
        dest.close()
