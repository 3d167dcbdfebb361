"""An erasure plan in plain language: what is deleted, what is cleared, what is kept, why and until when.

The plan's summary (:meth:`governance.erasure.planner.ErasureWork.summary`, counts only) names
tables as ``system.table`` and effects as ``clear_mention``; privacy staff approving an erasure need
the data map's own words instead. :func:`readable_plan` turns a summary into :class:`PlanLine` rows
(for the Privacy requests page), :func:`plan_markdown` into the Markdown table shown as the dry
run's result and in the approval step (Airflow renders a HITL body as Markdown), and
:func:`plan_changes` says what changed between two plans of one request (the dry run and the plan
put up for approval are computed from two snapshots, so counts can move in between).

Pure: no I/O, and nothing here ever holds an identity (summaries carry counts and ids only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from governance.datamap import load_datamap
from governance.datamap.model import DataMap, ErasureAction, PrefixRef, ReferenceKind, TableRef

Outcome = Literal["deleted", "cleared", "kept", "left_out"]
OUTCOME_LABELS: dict[str, str] = {
    "deleted": "Deleted",
    "cleared": "Cleared",
    "kept": "Kept",
    "left_out": "Left out",
}
_REASONS = {
    "legal_exception": "the law makes us keep it",
    "legal_hold": "a legal hold",
    "referenced_by_held_row": "still needed by records under a legal hold",
    "out_of_business_scope": "outside the business client's request",
}


@dataclass(frozen=True)
class PlanLine:
    """One line of the readable plan. ``what`` and ``detail`` are in the data map's words;
    ``where`` is the technical name (for engineers, never the main text)."""

    outcome: Outcome
    what: str
    count: int
    unit: str
    detail: str
    until: str | None
    where: str

    @property
    def label(self) -> str:
        return OUTCOME_LABELS[self.outcome]

    @property
    def amount(self) -> str:
        """``1 record``, ``3 files``: the count with its unit."""
        unit = self.unit
        if self.count == 1:
            unit = unit.replace("records", "record", 1).replace("files", "file", 1)
        return f"{self.count} {unit}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "amount": self.amount}


@dataclass(frozen=True)
class ReadablePlan:
    plan_id: str
    request_id: str
    as_of: str
    headline: str
    lines: list[PlanLine]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "request_id": self.request_id, "as_of": self.as_of, "headline": self.headline,
                "lines": [line.to_json() for line in self.lines], "notes": list(self.notes)}  # fmt: skip


def _words(name: str) -> str:
    return name.replace("_", " ")


def _first_sentence(text: str | None) -> str | None:
    if not text:
        return None
    sentence = " ".join(text.split()).split(". ")[0].split("; ")[0].rstrip(".")
    if sentence.endswith(")") and " (" in sentence:  # "Product usage events (by far the largest table)"
        sentence = sentence[: sentence.rindex(" (")]
    return sentence or None


def _date(value: str | None) -> str | None:
    return value[:10] if value else None


def _table_ref(where: str) -> TableRef | None:
    system, _, table = where.partition(".")
    return TableRef(system, table) if table else None


def _table_words(datamap: DataMap | None, where: str) -> str:
    ref = _table_ref(where)
    if datamap is not None and ref is not None:
        try:
            spec = datamap.table(ref)
        except (KeyError, LookupError, ValueError):
            spec = None
        if spec is not None:
            return _first_sentence(spec.description) or _words(spec.name).capitalize()
    return _words(ref.table if ref else where).capitalize()


def _prefix_words(datamap: DataMap | None, where: str) -> str:
    system, _, prefix = where.partition(".")
    if datamap is not None and prefix:
        try:
            spec = datamap.prefix(PrefixRef(system, prefix))
        except (KeyError, LookupError, ValueError):
            spec = None
        if spec is not None:
            return _first_sentence(spec.description) or _words(spec.name).capitalize()
    return _words(prefix or where).capitalize()


def _processor_words(datamap: DataMap | None, name: str) -> str:
    processor = datamap.processor(name) if datamap is not None else None
    if processor is not None:
        if processor.recipient is not None:
            return processor.recipient.name
        return _first_sentence(processor.description) or _words(name).capitalize()
    return _words(name).capitalize()


def _where_words(datamap: DataMap | None, where: str, kind: str) -> str:
    if kind == "processor_records":
        return _processor_words(datamap, where)
    if kind == "objects":
        return _prefix_words(datamap, where)
    return _table_words(datamap, where)


def _rewritten_fields(datamap: DataMap | None, where: str) -> list[str]:
    ref = _table_ref(where)
    if datamap is None or ref is None:
        return []
    try:
        spec = datamap.table(ref)
    except (KeyError, LookupError, ValueError):
        return []
    rewriting = (ErasureAction.nullify, ErasureAction.mask, ErasureAction.keyed_hash)
    return [_words(f.name) for f in spec.fields if f.is_personal and f.erasure_action in rewriting]


def _mention_targets(datamap: DataMap | None, where: str) -> list[str]:
    ref = _table_ref(where)
    if datamap is None or ref is None:
        return []
    try:
        spec = datamap.table(ref)
    except (KeyError, LookupError, ValueError):
        return []
    return [_words(r.field) for r in spec.references if r.kind == ReferenceKind.mention]


def _until_words(item: Mapping[str, Any]) -> str | None:
    first, last = _date(item.get("until")), _date(item.get("until_latest"))
    if first and last and first != last:
        return f"{first} to {last}"
    return first or last


def _kept_detail(item: Mapping[str, Any]) -> str:
    reason = _REASONS.get(str(item.get("reason")), _words(str(item.get("reason") or "")))
    basis = " ".join(str(item.get("basis") or "").split())
    detail = f"Kept because {reason}"
    if basis:
        detail += f": {basis}"
    if item.get("fields_cleared"):
        detail += f" Personal details removed meanwhile: {', '.join(_words(f) for f in item['fields_cleared'])}."
    if item.get("law"):
        detail += f" ({item['law']})"
    return detail


def readable_plan(summary: Mapping[str, Any], datamap: DataMap | None) -> ReadablePlan:
    """The plan as lines in plain words (``datamap`` None: names humanised, no descriptions)."""
    lines: list[PlanLine] = []
    kept = list(summary.get("kept") or [])
    kept_by_table = {k["where"]: k for k in kept if k.get("kind") == "rows" and k.get("reason") == "legal_exception"}
    for where, effects in (summary.get("tables") or {}).items():
        what = _table_words(datamap, where)
        for effect, count in effects.items():
            count = int(count)
            if effect in ("delete_rows", "delete_expired_kept_rows"):
                detail = "Deleted with everything that belongs to it."
                if effect == "delete_expired_kept_rows":
                    detail = "Deleted: the period the law made us keep these for has ended."
                lines.append(PlanLine("deleted", what, count, "records", detail, None, where))
            elif effect == "rewrite_rows":
                fields = _rewritten_fields(datamap, where)
                detail = "The record stays; the person's details in it are removed"
                detail += f" ({', '.join(fields)})." if fields else "."
                lines.append(PlanLine("cleared", what, count, "records", detail, None, where))
            elif effect == "clear_mention":
                targets = _mention_targets(datamap, where)
                detail = "The records stay (they belong to the business or to someone else); only the link to the person"
                detail += f" ({', '.join(targets)}) is removed." if targets else " is removed."
                lines.append(PlanLine("cleared", what, count, "records mentioning the person", detail, None, where))
            elif effect == "delete_mention_only_rows":
                lines.append(PlanLine("deleted", what, count, "records mentioning only the person",
                                      "Deleted: they name the person and belong to no one else.", None, where))  # fmt: skip
            elif effect == "clear_mention_only_rows":
                lines.append(PlanLine("cleared", what, count, "records mentioning only the person",
                                      "The record stays without its content: it names the person and belongs to no one else.",
                                      None, where))  # fmt: skip
            elif effect == "minimise_kept_rows":
                item = kept_by_table.pop(where, None)
                if item is not None:
                    lines.append(PlanLine("kept", what, count, "records", _kept_detail(item), _until_words(item), where))
                elif count:
                    lines.append(PlanLine("kept", what, count, "records",
                                          "Kept because the law makes us keep it; personal details removed meanwhile.",
                                          None, where))  # fmt: skip
            else:
                lines.append(PlanLine("cleared", what, count, "records", _words(effect).capitalize() + ".", None, where))
    versions = summary.get("object_versions") or {}
    for where, count in (summary.get("objects") or {}).items():
        stored = versions.get(where)
        detail = "Deleted, with every stored version" + (f" ({stored} in all)." if stored is not None else ".")
        lines.append(PlanLine("deleted", _prefix_words(datamap, where), int(count), "files", detail, None, where))
    for where, count in (summary.get("items") or {}).items():
        lines.append(PlanLine("deleted", f"call events ({where})", int(count), "events",
                              "Deleted whole from the event store.", None, where))  # fmt: skip
    for name, count in (summary.get("processors") or {}).items():
        lines.append(PlanLine("deleted", _processor_words(datamap, name), int(count), "records held by this company",
                              "Erased through the company's own deletion service.", None, name))  # fmt: skip
    for item in kept:
        if item.get("kind") == "rows" and item.get("reason") == "legal_exception" and item["where"] not in kept_by_table:
            continue  # already shown with its minimising step
        kind = str(item.get("kind") or "rows")
        unit = {"objects": "files", "processor_records": "records held by this company", "mentions": "records mentioning the person"}.get(kind, "records")
        lines.append(PlanLine("kept", _where_words(datamap, item["where"], kind), int(item.get("count") or 0), unit,
                              _kept_detail(item), _until_words(item), item["where"]))  # fmt: skip
    for item in summary.get("excluded") or []:
        lines.append(PlanLine("left_out", _table_words(datamap, item["where"]), int(item.get("count") or 0), "records",
                              "Found by one of the identities but they belong to someone else: left alone, with what they own.",
                              None, item["where"]))  # fmt: skip
    notes: list[str] = []
    empty = list(dict.fromkeys(line.what for line in lines if line.count == 0 and line.outcome != "kept"))
    found = {line.what for line in lines if line.count}
    lines = [line for line in lines if line.count or line.outcome == "kept"]
    empty = [what for what in empty if what not in found]
    if empty:
        notes.append("Looked for the person and found nothing in: " + "; ".join(empty) + ".")
    absent = summary.get("objects_absent") or {}
    if absent:
        notes.append("Files the data map says could exist but are not stored (nothing to delete): "
                      + "; ".join(f"{_prefix_words(datamap, where)}: {n}" for where, n in absent.items()) + ".")
    if summary.get("person_held"):
        notes.append("The person is under a legal hold: nothing of theirs is erased until it is released.")
    guard = summary.get("guard") or {}
    if guard.get("refused"):
        notes.append("The safety guard refused this plan: " + "; ".join(guard.get("reasons") or []))
    elif guard.get("overridden"):
        notes.append("The safety guard was overridden: " + "; ".join(guard.get("reasons") or []))
    if summary.get("business_id"):
        notes.append(f"Only what business client {summary['business_id']} holds about its caller is erased.")
    deleted = sum(line.count for line in lines if line.outcome == "deleted")
    cleared = sum(line.count for line in lines if line.outcome == "cleared")
    kept_count = sum(line.count for line in lines if line.outcome == "kept")
    headline = f"{deleted} deleted, {cleared} cleared, {kept_count} kept"
    return ReadablePlan(str(summary.get("plan_id") or ""), str(summary.get("request_id") or ""),
                        str(summary.get("as_of") or ""), headline, lines, notes)  # fmt: skip


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def plan_markdown(
    summary: Mapping[str, Any], datamap: DataMap | None, *, dry_run: bool = False, changes: Sequence[str] | None = None,
    closing: str | None = None,
) -> str:
    """The readable plan as Markdown: a sentence, one table, notes, what changed since the dry run."""
    plan = readable_plan(summary, datamap)
    as_of = _date(plan.as_of) or plan.as_of
    intro = f"**Erasure plan for request {plan.request_id}**, as of {as_of}: {plan.headline}."
    if dry_run:
        intro += " This is a dry run: nothing has changed."
    lines = [intro, "", "| What | Outcome | How many | Why, and until when |", "|---|---|---|---|"]
    if not plan.lines:
        lines.append("| Nothing of the person was found | | 0 | |")
    for line in plan.lines:
        why = line.detail + (f" Until {line.until}." if line.until else "")
        lines.append(f"| {_cell(line.what)} | {line.label} | {line.amount} | {_cell(why)} |")
    for note in plan.notes:
        lines += ["", note]
    if changes:
        lines += ["", "**What changed since the dry run:**"]
        lines += [f"- {change}" for change in changes]
    # For engineers, after the plain words: the statements that run, when the summary has them.
    statements = [st for st in summary.get("statements") or [] if st.get("rows") and st.get("sql")]
    if statements:
        lines += ["", "**Statements that run** (for engineers; each keyed by the planned rows' primary keys, bound at run time):",
                  "", "```sql"] + [f"-- {st['step']} ({st['rows']} rows)\n{st['sql']};" for st in statements] + ["```"]  # fmt: skip
    if closing:
        lines += ["", closing]
    lines += ["", f"Plan {plan.plan_id}."]
    return "\n".join(lines)


APPROVAL_CLOSING = (
    "Approve only once the person's identity was verified, and say how in the form. Nothing changes before the approval."
)


def erasure_plan_text(
    summary: Mapping[str, Any], *, dry_run: bool, dry_run_summary: Mapping[str, Any] | None = None,
    datamap: DataMap | None = None,
) -> str:
    """The Markdown of a dry run's result, or of the approval step (with what changed since the
    request's latest dry run, when there was one). Loads the data map when none is given."""
    if datamap is None:
        datamap = load_datamap()
    changes = None
    if dry_run_summary is not None and not dry_run and dry_run_summary.get("plan_id") != summary.get("plan_id"):
        changes = plan_changes(dry_run_summary, summary, datamap) or [
            f"Nothing: the plan {summary.get('plan_id')} has the same effect as the dry run "
            f"{dry_run_summary.get('plan_id')} (each run makes its own plan, from the data at that moment)."
        ]
    return plan_markdown(summary, datamap, dry_run=dry_run, changes=changes, closing=None if dry_run else APPROVAL_CLOSING)


def _counts(summary: Mapping[str, Any], datamap: DataMap | None) -> dict[tuple[str, str, str], int]:
    return {(line.outcome, line.what, line.unit): line.count for line in readable_plan(summary, datamap).lines}


def plan_changes(before: Mapping[str, Any], after: Mapping[str, Any], datamap: DataMap | None) -> list[str]:
    """What differs between two plans of one request, in words (empty when only the ids differ)."""
    changes: list[str] = []
    old, new = _counts(before, datamap), _counts(after, datamap)
    for key in sorted(set(old) | set(new)):
        outcome, what, unit = key
        a, b = old.get(key, 0), new.get(key, 0)
        if a != b:
            changes.append(f"{what}: {OUTCOME_LABELS[outcome].lower()} {a} -> {b} {unit}")
    if bool(before.get("person_held")) != bool(after.get("person_held")):
        changes.append("a legal hold on the person " + ("was placed" if after.get("person_held") else "was released"))
    if changes:
        changes.append("Each plan is computed from the data at that moment: the data changed between the two.")
    return changes
