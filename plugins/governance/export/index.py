"""``index.html``: the bundle explained to the person who asked for it, in plain words.

For every table, object prefix and processor the bundle holds: what it is and which system it
comes from, which kinds of data (fideslang data category names), why we hold it (data use
names), who else receives it (the processors whose declared categories overlap, and the business
client a row was collected for), how long it is kept (the data map's retention rules and legal
exceptions, in words) and which files hold it. Then what was searched but not included. Every
word comes from the data map: a table added to the map appears here with no code change.

The page carries counts and names only, never a data value, and no generation time (that is in
``manifest.json``), so the same data gives the same page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from html import escape
from typing import Any

from governance.datamap.model import (
    DataMap,
    DynamoDBSystem,
    ObjectStoreSystem,
    PostgresSystem,
    PrefixRef,
    Processor,
    RetentionPeriod,
    RetentionRule,
    TableRef,
)
from governance.datamap.taxonomy import data_category, data_use, describe, is_within


@dataclass(frozen=True)
class TableExport:
    ref: TableRef
    rows: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class ItemExport:
    """A DynamoDB table's items of the person (found by key or index Query), in one JSON file."""

    system: str
    table: str
    items: int
    files: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.system}.{self.table}"


@dataclass(frozen=True)
class PrefixExport:
    ref: PrefixRef
    objects: int
    bytes: int
    referenced_missing: int
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessorExport:
    name: str
    records: int
    files: tuple[str, ...]
    searched: bool
    reason: str = ""


@dataclass
class BundleContents:
    """What the collection found, in the shape the index and the manifest need (no values)."""

    request_id: str
    received_on: date
    business_scope: tuple[int, ...] | None
    identity_kinds: tuple[str, ...]
    formats: tuple[str, ...]
    tables: list[TableExport] = field(default_factory=list)
    prefixes: list[PrefixExport] = field(default_factory=list)
    processors: list[ProcessorExport] = field(default_factory=list)
    items: list[ItemExport] = field(default_factory=list)
    mentions: dict[str, int] = field(default_factory=dict)
    out_of_scope: tuple[str, ...] = ()

    @property
    def found_data(self) -> bool:
        return (
            any(t.rows for t in self.tables)
            or any(p.objects for p in self.prefixes)
            or any(p.records for p in self.processors)
            or any(i.items for i in self.items)
        )


def period_words(period: RetentionPeriod) -> str:
    parts = []
    for amount, unit in ((period.years, "year"), (period.months, "month"), (period.days, "day")):
        if amount:
            parts.append(f"{amount} {unit}{'s' if amount != 1 else ''}")
    return " ".join(parts) or "0 days"


def _column_words(name: str) -> str:
    return name.replace("_", " ")


def _conditions_words(rule: RetentionRule) -> str:
    words = []
    for condition in rule.conditions:
        if condition.unreferenced:
            words.append(", once nothing else refers to it")
        elif condition.in_ is not None:
            words.append(f"when {_column_words(condition.column or '')} is {' or '.join(map(str, condition.in_))}")
        elif condition.not_in is not None:
            words.append(f"when {_column_words(condition.column or '')} is not {' or '.join(map(str, condition.not_in))}")
        elif condition.is_null is not None:
            words.append(f"when {_column_words(condition.column or '')} is {'empty' if condition.is_null else 'set'}")
    return "".join(w if w.startswith(",") else f" {w}" for w in words)


def retention_words(rule: RetentionRule, *, of_record: str | None = None) -> str:
    """One retention rule as a sentence: period, what happens, why. ``of_record`` names the
    table whose row dates an object (for object prefixes)."""
    if rule.age_column:
        after = f" after the \u201c{_column_words(rule.age_column)}\u201d date"
        after += f" of its {_column_words(of_record)} record" if of_record else ""
    else:
        after = " after it was created"
    action = {
        "delete_rows": "deleted",
        "delete_objects": "deleted",
        "ttl": "deleted",
        "null_fields": f"{', '.join(_column_words(f) for f in rule.fields)} erased",
        "generalise": f"{_column_words(rule.generalise.field) if rule.generalise else 'a field'} made less precise",
    }[rule.action]
    sentence = f"{action} {period_words(rule.period)}{after}{_conditions_words(rule)}."
    return f"{sentence[0].upper()}{sentence[1:]} {rule.reason}"


def _recipients_for(datamap: DataMap, categories: Iterable[str], *, scoped: bool) -> list[str]:
    wanted = set(categories)
    names = []
    for processor in datamap.processors:
        if any(is_within(c, d) or is_within(d, c) for c in wanted for d in processor.data_categories):
            names.append(_recipient_words(processor, describe))
    if scoped:
        names.append("the business client it was collected for")
    return names


def _recipient_words(processor: Processor, describe: Any) -> str:
    recipient = processor.recipient
    if recipient is None:
        return processor.name
    where = recipient.country + (f", {recipient.region}" if recipient.region else "")
    use = describe("user", recipient.purpose).use_name
    return f"{recipient.name} ({where}; {use.lower()})"


def _names(keys: Iterable[str], kind: str) -> list[str]:
    out = []
    for key in sorted(set(keys)):
        try:
            out.append((data_category(key) if kind == "category" else data_use(key)).name)
        except KeyError:
            out.append(key)
    return out


def _ul(items: Sequence[str]) -> str:
    if not items:
        return "&mdash;"
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _files(paths: Sequence[str], total: int | None = None) -> str:
    """Links to the first few files, and how many more there are (``total`` when only the first
    few paths were kept)."""
    if not paths:
        return "&mdash;"
    count = max(total or 0, len(paths))
    shown = paths[:6]
    return "<br>".join(f'<a href="{escape(p)}">{escape(p)}</a>' for p in shown) + (
        f"<br>and {count - len(shown)} more" if count > len(shown) else ""
    )


_STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;width:100%;font-size:.92em;margin:1em 0}th,td{border:1px solid #ccc;padding:.35em .5em;
vertical-align:top;text-align:left}th{background:#f3f3f3}ul{margin:0;padding-left:1.2em}.note{color:#555}"""


def render_index(datamap: DataMap, contents: BundleContents) -> bytes:
    """The page, as UTF-8 bytes."""

    out: list[str] = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        "<title>Your data held by aircalls.ai</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Your data held by aircalls.ai</h1>",
        f"<p>This is the copy of your personal data you asked for (request <code>{escape(contents.request_id)}</code>, "
        f"received on {contents.received_on.isoformat()}). It covers every system listed in our data map, "
        "searched with the identities you gave us "
        f"({escape(' and '.join(k.replace('_', ' ') for k in contents.identity_kinds))}).</p>",
    ]
    if contents.business_scope:
        out.append(
            "<p>This request was made through a business client on your behalf, so it covers only the data "
            f"collected for that business (business id {', '.join(map(str, contents.business_scope))}). "
            "Data we hold about you for other businesses or for our own account is not included.</p>"
        )
    if not contents.found_data:
        out.append(
            "<p><strong>We searched every system below and found no data about you.</strong> "
            "This bundle therefore holds only this page and the manifest.</p>"
        )

    # Systems searched -----------------------------------------------------------------------
    out.append("<h2>Systems searched</h2><table><thead><tr><th>System</th><th>Kind</th><th>Items</th></tr></thead><tbody>")
    for name, entry in system_counts(contents).items():
        described = datamap.system(name)
        label = (described.description if described is not None else None) or name
        items = entry.get("rows", entry.get("objects", entry.get("items", 0)))
        out.append(f"<tr><td>{escape(label)} (<code>{escape(name)}</code>)</td><td>{escape(entry['kind'])}</td>"
                   f"<td>{items}</td></tr>")  # fmt: skip
    out.append("</tbody></table>")

    # Summary ------------------------------------------------------------------------------
    out.append("<h2>What we hold</h2><table><thead><tr><th>Data</th><th>Where it comes from</th>"
               "<th>What kind of data</th><th>Why we hold it</th><th>Who else receives it</th>"
               "<th>How long we keep it</th><th>Items</th><th>Files</th></tr></thead><tbody>")  # fmt: skip
    for table in contents.tables:
        system = datamap.system(table.ref.system)
        assert isinstance(system, PostgresSystem)
        spec = datamap.table(table.ref)
        personal = [f for f in spec.fields if f.is_personal]
        categories = [f.data_category for f in personal]
        uses = [f.data_use for f in spec.fields]
        keep = [retention_words(r) for r in datamap.retention if r.system == table.ref.system and r.table == table.ref.table]
        exception = datamap.legal_exception_for(table.ref)
        if exception is not None:
            keep.append(f"Kept {period_words(exception.period)} after the \u201c{_column_words(exception.age_column)}\u201d date "
                        f"even if you ask us to delete it: {exception.basis}")  # fmt: skip
        if not keep:
            keep.append("As long as your account or the business relationship lasts, then deleted with it.")
        out.append(
            f"<tr><td>{escape(spec.description or table.ref.table)}</td>"
            f"<td>{escape(system.description or system.name)} (<code>{escape(str(table.ref))}</code>)</td>"
            f"<td>{_ul(_names(categories, 'category'))}</td><td>{_ul(_names(uses, 'use'))}</td>"
            f"<td>{_ul(_recipients_for(datamap, categories, scoped=spec.scope_column is not None))}</td>"
            f"<td>{_ul(keep)}</td><td>{table.rows}</td><td>{_files(table.files)}</td></tr>"
        )
    for prefix_export in contents.prefixes:
        object_system = datamap.system(prefix_export.ref.system)
        assert isinstance(object_system, ObjectStoreSystem)
        prefix = datamap.prefix(prefix_export.ref)
        tie_table = datamap.tie_table(prefix)
        keep = [
            retention_words(r, of_record=tie_table.table if tie_table else None)
            for r in datamap.retention
            if r.system == prefix_export.ref.system and r.prefix == prefix_export.ref.prefix
        ]
        missing = (
            f" ({prefix_export.referenced_missing} listed but no longer stored)" if prefix_export.referenced_missing else ""
        )
        out.append(
            f"<tr><td>{escape(prefix.description or prefix.name)}</td>"
            f"<td>{escape(object_system.description or object_system.name)} (<code>{escape(str(prefix_export.ref))}</code>)</td>"
            f"<td>{_ul(_names([prefix.data_category], 'category'))}</td><td>{_ul(_names([prefix.data_use], 'use'))}</td>"
            f"<td>{_ul(_recipients_for(datamap, [prefix.data_category], scoped=False))}</td>"
            f"<td>{_ul(keep or ['Deleted with the record it belongs to.'])}</td>"
            f"<td>{prefix_export.objects} file(s){missing}</td>"
            f"<td>{_files(prefix_export.files, total=prefix_export.objects)}</td></tr>"
        )
    for item_export in contents.items:
        item_system = datamap.system(item_export.system)
        assert isinstance(item_system, DynamoDBSystem)
        item_table = item_system.table(item_export.table)
        assert item_table is not None
        personal = [a for a in item_table.attributes if a.is_personal]
        keep = ["Each event expires on its own after a fixed time (its expiry date is in the file)."] if item_table.ttl_attribute else []
        out.append(
            f"<tr><td>{escape(item_table.description or item_table.name)}</td>"
            f"<td>{escape(item_system.description or item_system.name)} (<code>{escape(item_export.where)}</code>)</td>"
            f"<td>{_ul(_names([a.data_category for a in personal], 'category'))}</td>"
            f"<td>{_ul(_names([a.data_use for a in item_table.attributes], 'use'))}</td>"
            f"<td>{_ul(_recipients_for(datamap, [a.data_category for a in personal], scoped=True))}</td>"
            f"<td>{_ul(keep or ['As long as the business relationship lasts, then deleted with it.'])}</td>"
            f"<td>{item_export.items}</td><td>{_files(item_export.files)}</td></tr>"
        )
    for processor_export in contents.processors:
        processor = datamap.processor(processor_export.name)
        assert processor is not None
        if processor_export.searched:
            items = str(processor_export.records)
        else:
            items = f"not searched: {escape(processor_export.reason)}"
        purposes = [processor.recipient.purpose] if processor.recipient else []
        out.append(
            f"<tr><td>{escape(processor.description or processor.name)}</td>"
            f"<td>{escape(_recipient_words(processor, describe))}, on our behalf</td>"
            f"<td>{_ul(_names(processor.data_categories, 'category'))}</td><td>{_ul(_names(purposes, 'use'))}</td>"
            "<td>&mdash;</td><td>As long as we use their service for you; deleted there when you ask us to delete "
            f"your data.</td><td>{items}</td><td>{_files(processor_export.files)}</td></tr>"
        )
    out.append("</tbody></table>")

    # Field by field ---------------------------------------------------------------------------
    shown = [t for t in contents.tables if t.rows]
    if shown:
        out.append("<h2>Field by field</h2>")
        for table in shown:
            spec = datamap.table(table.ref)
            out.append(f"<h3>{escape(spec.description or table.ref.table)} <code>{escape(str(table.ref))}</code></h3>")
            out.append("<table><thead><tr><th>Field</th><th>What it is</th><th>Why we hold it</th></tr></thead><tbody>")
            for spec_field in spec.fields:
                purpose = describe(spec_field.data_category, spec_field.data_use)
                out.append(
                    f"<tr><td><code>{escape(spec_field.name)}</code></td><td>{escape(purpose.category_name)}</td>"
                    f"<td>{escape(purpose.use_name)}: {escape(purpose.use_description)}</td></tr>"
                )
            out.append("</tbody></table>")

    # Mentions, out of scope, not searched --------------------------------------------------
    mentioned = {k: v for k, v in contents.mentions.items() if v}
    if mentioned:
        out.append("<h2>Where you are mentioned</h2><ul>")
        for where, count in sorted(mentioned.items()):
            table_name, _, column = where.rpartition(".")
            out.append(
                f"<li>{count} record(s) of <code>{escape(table_name)}</code> name you in "
                f"<code>{escape(column)}</code>. They belong to other people (for example the callers you spoke "
                "to), so they are not copied here.</li>"
            )
        out.append("</ul>")
    if contents.out_of_scope:
        out.append("<h2>Not included for this request</h2><ul>")
        out += [f"<li><code>{escape(t)}</code>: not collected for the business that made the request.</li>"
                for t in contents.out_of_scope]  # fmt: skip
        out.append("</ul>")

    out.append(
        "<h2>About these files</h2><ul>"
        f"<li>Table data is in the <code>data</code> folder, in {escape(', '.join(f.upper() for f in contents.formats))} "
        "(JSON and CSV open in any spreadsheet or text editor; HTML in a browser). An empty CSV cell is an empty "
        "value.</li>"
        "<li>Recordings and transcripts are in the <code>files</code> folder, exactly as we store them.</li>"
        "<li>What our processors hold is in the <code>processors</code> folder, as they returned it (JSON).</li>"
        "<li><code>manifest.json</code> lists every file with its SHA-256 checksum and size, so you can check "
        "that nothing was changed.</li></ul>"
        "<h2>Your rights</h2><p>You can ask us to correct or delete this data, or object to how we use it, by "
        'writing to <a href="mailto:privacy@aircalls.ai">privacy@aircalls.ai</a> and quoting the request '
        f"number <code>{escape(contents.request_id)}</code>. We answer within 30 days.</p>"
        '<p class="note">Prepared by the aircalls.ai privacy team from our data map version '
        f"{escape(datamap.version)}.</p></body></html>\n"
    )
    return "".join(out).encode()


def system_counts(contents: BundleContents) -> dict[str, dict[str, Any]]:
    """Per system searched, how many tables (prefixes) and rows (objects) the bundle holds."""
    systems: dict[str, dict[str, Any]] = {}
    for table in contents.tables:
        entry = systems.setdefault(table.ref.system, {"kind": "database", "tables": 0, "rows": 0})
        entry["tables"] += 1
        entry["rows"] += table.rows
    for prefix in contents.prefixes:
        entry = systems.setdefault(prefix.ref.system, {"kind": "object store", "prefixes": 0, "objects": 0})
        entry["prefixes"] += 1
        entry["objects"] += prefix.objects
    for item in contents.items:
        entry = systems.setdefault(item.system, {"kind": "dynamodb", "tables": 0, "items": 0})
        entry["tables"] += 1
        entry["items"] += item.items
    return dict(sorted(systems.items()))
