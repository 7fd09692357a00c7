"""The reconciliation chart: source vs loaded vs quarantined (and skipped) per Ascora object, as SVG.

Drawn on the server so the page needs no script and no chart library; every label is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

SERIES = (("read", "Source", "#57606a"), ("loaded", "Loaded", "#1a7f37"),
          ("quarantined", "Quarantined", "#cf222e"), ("skipped", "Skipped", "#9a6700"))
BAR, GAP, LABEL_W, PLOT_W = 9, 10, 150, 520


def reconciliation_svg(objects: dict[str, dict[str, Any]]) -> str:
    """Grouped horizontal bars, one group per object, scaled to the largest source count."""
    if not objects:
        return ""
    largest = max((int(r.get("read") or 0) for r in objects.values()), default=0) or 1
    group_h = BAR * len(SERIES) + GAP
    height = 30 + group_h * len(objects)
    width = LABEL_W + PLOT_W + 70
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" aria-label="Source vs loaded vs quarantined per '
              f'object"><title>Source vs loaded vs quarantined per object</title>')]
    x = LABEL_W
    for i, (_, label, colour) in enumerate(SERIES):  # legend
        parts.append(f'<rect x="{x + i * 120}" y="4" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + i * 120 + 14}" y="13" font-size="11">{label}</text>')
    y = 26
    for name, row in objects.items():
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + group_h / 2}" font-size="12" text-anchor="end">'
                     f'{escape(str(name))}</text>')
        for j, (key, label, colour) in enumerate(SERIES):
            value = int(row.get(key) or 0)
            w = round(PLOT_W * value / largest, 1)
            top = y + j * BAR
            parts.append(f'<rect x="{LABEL_W}" y="{top}" width="{w}" height="{BAR - 1}" fill="{colour}">'
                         f'<title>{escape(str(name))} {label.lower()}: {value}</title></rect>'
                         f'<text x="{LABEL_W + w + 4}" y="{top + BAR - 1}" font-size="9">{value}</text>')
        y += group_h
    parts.append("</svg>")
    return "".join(parts)
