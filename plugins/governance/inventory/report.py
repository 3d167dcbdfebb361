"""The inventory as files a DPO can read and tools can load: CSV (one row per subprocessor and
country), JSON (everything), and an HTML report with a data-flow diagram (systems, then
subprocessors, then countries) drawn as an inline SVG picture, so the file stands alone.
"""

from __future__ import annotations

import csv
import io
import json
from html import escape
from typing import Any

from governance.datamap.taxonomy import default_taxonomy
from governance.inventory.reconcile import Inventory

CSV_COLUMNS = (
    "subprocessor", "legal_name", "role", "purpose", "receives_through", "data_categories", "country",
    "safeguard", "lawful", "mechanism", "tia_on_file", "dpa_signed", "dpa_review_by", "since", "last_observed",
)  # fmt: skip


def inventory_json(inventory: Inventory) -> dict[str, Any]:
    """The whole inventory as JSON-safe values."""
    return {
        "as_of": inventory.as_of.isoformat(),
        "list_version": inventory.list_version,
        "customer_notice": {"version": inventory.notice_version, "date": inventory.notice_date.isoformat()},
        "observed_since": inventory.observed_since.isoformat() if inventory.observed_since else None,
        "is_clean": inventory.is_clean,
        "violation_counts": inventory.counts(),
        "violations": [{"kind": v.kind, "subject": v.subject, "message": v.message} for v in inventory.violations],
        "changes_since_notice": [{"subject": v.subject, "message": v.message} for v in inventory.changes],
        "subprocessors": [e.as_json() for e in inventory.entries],
    }


def inventory_csv(inventory: Inventory) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in inventory.entries:
        for t in e.transfers:
            writer.writerow([
                e.name, e.legal_name, e.role, e.purpose, " ".join(e.channels), " ".join(e.data_categories),
                t.country, t.safeguard, "yes" if t.lawful else "no", e.mechanism, "yes" if e.tia_on_file else "no",
                e.dpa_signed.isoformat() if e.dpa_signed else "", e.dpa_review_by.isoformat() if e.dpa_review_by else "",
                e.since.isoformat(), e.last_observed.isoformat() if e.last_observed else "",
            ])  # fmt: skip
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# The diagram


def flow_diagram_svg(inventory: Inventory) -> str:
    """Three columns joined by lines: where data leaves from, who receives it, where it is
    processed. A line to a country is red when the transfer has no valid safeguard."""
    sources = list(dict.fromkeys(s for e in inventory.entries for s in e.sources))
    subs = [e.name for e in inventory.entries]
    countries = sorted({t.country for e in inventory.entries for t in e.transfers})
    row_h, top, width = 34, 40, 980
    height = top + row_h * max(len(sources), len(subs), len(countries), 1) + 20
    x = {"source": 20, "sub": 380, "country": 760}
    box_w = {"source": 230, "sub": 230, "country": 180}

    def y(index: int, count: int) -> float:
        span = row_h * max(len(sources), len(subs), len(countries), 1)
        return top + (index + 0.5) * span / max(count, 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="Data flows: systems, subprocessors, countries" font-family="sans-serif" font-size="12">',
        f'<text x="{x["source"]}" y="22" font-weight="bold">Leaves from</text>',
        f'<text x="{x["sub"]}" y="22" font-weight="bold">Received by</text>',
        f'<text x="{x["country"]}" y="22" font-weight="bold">Processed in</text>',
    ]
    for e in inventory.entries:
        ys = y(subs.index(e.name), len(subs))
        for source in e.sources:
            yo = y(sources.index(source), len(sources))
            parts.append(
                f'<line x1="{x["source"] + box_w["source"]}" y1="{yo:.1f}" x2="{x["sub"]}" y2="{ys:.1f}" stroke="#7a8ca3" />'
            )
        for t in e.transfers:
            yc = y(countries.index(t.country), len(countries))
            colour = "#2f7d32" if t.lawful else "#c62828"
            parts.append(
                f'<line x1="{x["sub"] + box_w["sub"]}" y1="{ys:.1f}" x2="{x["country"]}" y2="{yc:.1f}" '
                f'stroke="{colour}" stroke-width="{1.5 if t.lawful else 3}" />'
            )
    for column, names in (("source", sources), ("sub", subs), ("country", countries)):
        for i, name in enumerate(names):
            cy = y(i, len(names))
            parts.append(
                f'<rect x="{x[column]}" y="{cy - 12:.1f}" width="{box_w[column]}" height="24" rx="5" '
                'fill="#eef3f8" stroke="#4a6785" />'
                f'<text x="{x[column] + 8}" y="{cy + 4:.1f}">{escape(name)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# The HTML report

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #1d2733; max-width: 1100px; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; font-size: 13px; table-layout: fixed; }
td { overflow-wrap: anywhere; } small { color: #5b6b7c; }
th, td { border: 1px solid #c9d3de; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #eef3f8; }
.ok { color: #2f7d32; font-weight: bold; } .bad { color: #c62828; font-weight: bold; }
.summary { padding: 1em; border-radius: 6px; }
.summary.ok { background: #e8f5e9; } .summary.bad { background: #ffebee; }
"""


def _list(items: Any) -> str:
    return "<br>".join(escape(str(i)) for i in items)


def _named(key: str, kind: str) -> str:
    """A fideslang key in words, the key below it (``Payment Processing`` / ``essential.service...``)."""

    entries = default_taxonomy().data_uses if kind == "use" else default_taxonomy().data_categories
    entry = entries.get(key)
    name = entry.name if entry else key
    return f"{escape(name)}<br><small>{escape(key)}</small>"


def _tia(mechanism: str, tia_on_file: bool) -> str:
    if tia_on_file:
        return "yes"
    if mechanism in ("scc_2021", "bcr"):
        return '<span class="bad">no</span>'
    return "not needed"


def inventory_html(inventory: Inventory) -> str:
    """The report: a verdict, what changed since the last customer notice, every violation in
    plain words, the flow diagram and the table of who receives what, where, under which safeguard."""
    verdict = (
        '<p class="summary ok">No violations: every recipient is declared, every transfer has a safeguard, '
        "every agreement is current and nothing changed since the last customer notice.</p>"
        if inventory.is_clean
        else f'<p class="summary bad">{len(inventory.violations)} violation(s) to act on, listed below.</p>'
    )
    observed = (
        f"Observed flows read from the audit ledger and lineage events since {inventory.observed_since:%Y-%m-%d}."
        if inventory.observed_since
        else "No observed flows are on record yet (audit ledger and lineage events are empty)."
    )
    changes = (
        "<p>Nothing changed since the last notice.</p>"
        if not inventory.changes
        else "<ul>" + "".join(f"<li>{escape(v.message)}</li>" for v in inventory.changes) + "</ul>"
    )
    violations = (
        "<p>None.</p>"
        if inventory.is_clean
        else "<table><tr><th>Kind</th><th>Concerns</th><th>What is wrong</th></tr>"
        + "".join(
            f"<tr><td>{escape(v.kind.replace('_', ' '))}</td><td>{escape(v.subject)}</td><td>{escape(v.message)}</td></tr>"
            for v in inventory.violations
        )
        + "</table>"
    )
    rows = []
    for e in inventory.entries:
        safeguards = "<br>".join(
            f'{escape(t.country)}: <span class="{"ok" if t.lawful else "bad"}">{escape(t.safeguard)}</span>'
            for t in e.transfers
        )
        dpa = (
            f"signed {e.dpa_signed:%Y-%m-%d}, review by {e.dpa_review_by:%Y-%m-%d}"
            if e.dpa_signed and e.dpa_review_by
            else '<span class="bad">none on file</span>'
        )
        technical = any(c != "contractual" for c in e.channels)
        seen = f"{e.last_observed:%Y-%m-%d}" if e.last_observed else ("not observed" if technical else "contract only")
        rows.append(
            f"<tr><td><b>{escape(e.legal_name)}</b><br><small>{escape(e.name)}, {escape(e.role)}</small></td>"
            f"<td>{_named(e.purpose, 'use')}</td><td>{'<br>'.join(_named(c, 'category') for c in e.data_categories)}</td>"
            f"<td>{_list(e.channels)}</td><td>{safeguards}</td><td>{_tia(e.mechanism, e.tia_on_file)}</td>"
            f"<td>{dpa}</td><td>{seen}</td></tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Subprocessor and transfer inventory {escape(inventory.list_version)}</title>
<style>{_STYLE}</style></head><body>
<h1>Subprocessor and transfer inventory</h1>
<p>List version <b>{escape(inventory.list_version)}</b>, as of {inventory.as_of:%Y-%m-%d %H:%M} UTC.
Customers were last notified of version <b>{escape(inventory.notice_version)}</b> on {inventory.notice_date:%Y-%m-%d}.
{escape(observed)}</p>
{verdict}
<h2>Changes since the last customer notice</h2>
{changes}
<h2>Violations</h2>
{violations}
<h2>Where personal data goes</h2>
<p>From the systems it leaves (left), to the subprocessors receiving it (middle), to the countries where they
process it (right). A green line to a country is a transfer with a valid safeguard (or none needed, inside the
EEA); a thick red line is one without. "Receives through" names how data reaches each subprocessor: a processor
or system of the data map that the workflows use (its flows are checked against the audit ledger), or
"contractual" when only the product sends it data and the contract is the record.</p>
{flow_diagram_svg(inventory)}
<h2>Who receives what, where, under which safeguard</h2>
<table><tr><th>Subprocessor</th><th>Purpose</th><th>Data categories</th><th>Receives through</th>
<th>Countries and safeguard</th><th>Transfer impact assessment</th><th>Data processing agreement</th><th>Last observed flow</th></tr>
{"".join(rows)}
</table>
</body></html>
"""


def inventory_files(inventory: Inventory) -> dict[str, bytes]:
    """``{file name: bytes}`` of the three outputs."""
    return {
        "transfer_inventory.json": json.dumps(inventory_json(inventory), indent=2, sort_keys=True).encode(),
        "transfer_inventory.csv": inventory_csv(inventory).encode(),
        "transfer_inventory.html": inventory_html(inventory).encode(),
    }
