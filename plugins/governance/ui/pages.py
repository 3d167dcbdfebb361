"""HTML of the Privacy requests page: plain server-rendered pages and forms (POST bodies only;
URLs carry request ids, never an identity). Everything interpolated is escaped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from governance.ui.access import Staff
from governance.ui.service import DAG_FOR_KIND, SORTS, STATUSES, RequestView

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2rem;color:#1a202c;font-size:15px}
h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}th,td{border-bottom:1px solid #e2e8f0;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f7fafc;font-weight:600}th a{color:inherit}
.box{border:1px solid #e2e8f0;border-radius:6px;padding:.8rem 1rem;margin:.8rem 0;background:#fff}
.muted{color:#718096;font-size:.85rem}.err{background:#fff5f5;border-color:#feb2b2;color:#9b2c2c}
.ok{background:#f0fff4;border-color:#9ae6b4}
.tag{display:inline-block;padding:0 .4rem;border-radius:4px;background:#edf2f7;font-size:.85rem}
.deleted{color:#9b2c2c}.cleared{color:#975a16}.kept{color:#2b6cb0}.left_out{color:#4a5568}
label{display:inline-block;margin:.2rem 1rem .2rem 0}input,select,button{font-size:.95rem;padding:.25rem .4rem}
button{cursor:pointer;border:1px solid #2b6cb0;background:#3182ce;color:#fff;border-radius:4px;padding:.3rem .8rem}
code{background:#edf2f7;padding:0 .25rem;border-radius:3px}
.secret{font-family:monospace;font-size:1.1rem;background:#fffff0;border:1px dashed #d69e2e;padding:.4rem;display:inline-block}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _date(value: datetime | None, *, time: bool = False) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M UTC" if time else "%Y-%m-%d")


def layout(title: str, body: str, *, base: str, staff: Staff | None = None) -> str:
    who = f"<span class='muted'>Signed in as {_e(staff.name)} ({_e(staff.role or 'no role')})</span>" if staff else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='referrer' content='same-origin'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<div><a href='{_e(base)}/'>Privacy requests</a> {who}</div>"
        f"<h1>{_e(title)}</h1>{body}</body></html>"
    )


def message(text: str, *, error: bool = False) -> str:
    return f"<div class='box {'err' if error else 'ok'}' role='{'alert' if error else 'status'}'>{_e(text)}</div>"


def _options(values: Iterable[tuple[str, str]], selected: str | None) -> str:
    return "".join(
        f"<option value='{_e(v)}'{' selected' if v == selected else ''}>{_e(label)}</option>" for v, label in values
    )


def record_form(base: str) -> str:
    return (
        f"<form class='box' method='post' action='{_e(base)}/requests' autocomplete='off' id='record-form'>"
        "<h2>Record a new request</h2>"
        "<label>The person asks for "
        "<select name='kind' id='kind'>"
        "<option value='export'>a copy of their data (export)</option>"
        "<option value='erasure'>erasure of their data</option></select></label><br>"
        "<label>E-mail address <input type='email' name='email' id='email' size='32'></label>"
        "<label>Phone number <input type='tel' name='phone' id='phone' size='18'></label>"
        "<label>Business client id (optional) <input type='number' min='1' name='business_id' id='business_id' size='6'></label><br>"
        "<p class='muted'>Give the e-mail, the phone, or both, as the person gave them. They are stored encrypted; "
        "the workflow receives only the request id. An erasure starts with a dry run: nothing changes until a second "
        "person approves it.</p>"
        "<button type='submit' id='record'>Record and start</button></form>"
    )


def requests_list(rows: Sequence[Mapping[str, Any]], *, base: str, kind: str | None, status: str | None, sort: str,
                  descending: bool, can_record: bool, flash: str | None = None) -> str:  # fmt: skip
    def sort_link(key: str, label: str) -> str:
        desc = "1" if (sort == key and not descending) else "0"
        arrow = (" ▼" if descending else " ▲") if sort == key else ""
        query = f"?sort={key}&desc={desc}" + (f"&kind={quote(kind)}" if kind else "") + (f"&status={quote(status)}" if status else "")
        return f"<a href='{_e(base)}/{_e(query)}'>{_e(label)}{arrow}</a>"

    filters = (
        f"<form method='get' action='{_e(base)}/' class='box'>"
        f"<label>Kind <select name='kind'>{_options([('', 'all'), ('export', 'export'), ('erasure', 'erasure')], kind or '')}</select></label>"
        f"<label>State <select name='status'>{_options([('', 'all'), *((s, s.replace('_', ' ')) for s in STATUSES)], status or '')}</select></label>"
        f"<input type='hidden' name='sort' value='{_e(sort)}'><input type='hidden' name='desc' value='{1 if descending else 0}'>"
        "<button type='submit'>Filter</button></form>"
    )  # fmt: skip
    head = (
        "<tr><th>Request</th>"
        f"<th>{sort_link('kind', 'Kind')}</th><th>{sort_link('status', 'State')}</th>"
        f"<th>{sort_link('received', 'Received')}</th><th>{sort_link('deadline', 'Deadline')}</th><th>Days left</th></tr>"
    )
    body = "".join(
        f"<tr><td><a href='{_e(base)}/requests/{_e(r['request_id'])}'>{_e(r['request_id'])}</a></td>"
        f"<td>{_e(r['kind'])}</td><td><span class='tag'>{_e(str(r['status']).replace('_', ' '))}</span></td>"
        f"<td>{_date(r['received_at'])}</td><td>{_date(r['due_at'])}</td>"
        f"<td>{'' if r['days_left'] is None else _e(r['days_left'])}</td></tr>"
        for r in rows
    ) or "<tr><td colspan='6' class='muted'>No requests match.</td></tr>"
    return ((message(flash) if flash else "") + (record_form(base) if can_record else "") + filters
            + f"<table id='requests'>{head}{body}</table>")  # fmt: skip


def plan_table(plan: Mapping[str, Any], *, changes: list[str] | None = None) -> str:
    rows = "".join(
        f"<tr><td>{_e(line['what'])}</td><td class='{_e(line['outcome'])}'>{_e(line['label'])}</td>"
        f"<td>{_e(line['amount'])}</td><td>{_e(line['detail'])}{(' Until ' + _e(line['until']) + '.') if line['until'] else ''}"
        f"<div class='muted'>{_e(line['where'])}</div></td></tr>"
        for line in plan["lines"]
    ) or "<tr><td colspan='4'>Nothing of the person was found.</td></tr>"
    notes = "".join(f"<p>{_e(n)}</p>" for n in plan["notes"])
    changed = ""
    if changes:
        changed = "<h3>What changed since the dry run</h3><ul>" + "".join(f"<li>{_e(c)}</li>" for c in changes) + "</ul>"
    return (
        f"<p><strong>{_e(plan['headline'])}</strong> <span class='muted'>(plan {_e(plan['plan_id'])}, as of {_e(plan['as_of'][:16])})</span></p>"
        "<table class='plan'><tr><th>What</th><th>Outcome</th><th>How many</th><th>Why, and until when</th></tr>"
        f"{rows}</table>{notes}{changed}"
    )


def request_page(view: RequestView, *, base: str, airflow_base: str, staff: Staff, permissions: Mapping[str, bool],
                 plans: Mapping[str, Any], methods: Mapping[str, str] | None, export_options: list[str] | None,
                 flash: str | None = None, error: str | None = None) -> str:  # fmt: skip
    r = view.request
    rid = r["request_id"]
    parts: list[str] = []
    if flash:
        parts.append(message(flash))
    if error:
        parts.append(message(error, error=True))
    if view.paused:
        parts.append(
            "<div class='box err' role='alert' id='paused'>The workflow "
            f"<a target='_top' href='{_e(airflow_base)}/dags/{_e(DAG_FOR_KIND[r['kind']])}'>{_e(DAG_FOR_KIND[r['kind']])}</a> "
            "is paused in Airflow: a run started here waits, queued, until someone with access unpauses it.</div>"
        )
    identities = " and ".join(k for k, present in (("e-mail", r["has_email"]), ("phone", r["has_phone"])) if present)
    parts.append(
        "<table class='facts'>"
        f"<tr><th>Kind</th><td>{_e('copy of their data (export)' if r['kind'] == 'export' else 'erasure')}</td></tr>"
        f"<tr><th>State</th><td id='state'><span class='tag'>{_e(str(r['status']).replace('_', ' '))}</span>"
        f"{' (' + _e(str(r['effective_status']).replace('_', ' ')) + ')' if r['status'] == 'extended' else ''} {_e(r['outcome_detail'] or '')}</td></tr>"
        f"<tr><th>Received</th><td>{_date(r['received_at'], time=True)}</td></tr>"
        f"<tr><th>Deadline</th><td id='deadline'>{_date(r['due_at'])}"
        f"{'' if r['days_left'] is None else ' (' + _e(r['days_left']) + ' days left)'}"
        + (f"<div class='muted' id='extension'>Extended on {_date(r['extended_at'], time=True)} by {_e(r['extended_by'])} "
           f"(was {_date(r['original_due_at'])}): {_e(r['extension_reason'])}</div>" if r.get("extended_at") else "")
        + "</td></tr>"
        + (f"<tr><th>Person told</th><td id='responded'>{_date(r['responded_at'], time=True)} by "
           f"{_e(str(r['responded_via']).replace('_', ' '))}</td></tr>" if r.get("responded_at") else "")
        + f"<tr><th>Identities held</th><td>{_e(identities)} (encrypted; never shown here)</td></tr>"
        f"<tr><th>Business scope</th><td>{_e(r['business_id'] or 'all of aircalls')}</td></tr>"
        f"<tr><th>Verification</th><td>{_e(r['verification_method'] or 'not yet')}"
        f"{' on ' + _date(r['verified_at'], time=True) if r['verified_at'] else ''}</td></tr>"
        + approval_row(r)
        + "</table>"
    )  # fmt: skip
    # -- actions
    if r["kind"] == "erasure" and r["status"] not in ("completed", "rejected", "responded"):
        waiting = view.waiting("approve_erasure")
        running = [run for run in view.runs if run.state in ("queued", "running")]
        dry = plans.get("dry_run")
        if waiting is not None and methods:
            if permissions.get("approve"):
                parts.append(
                    f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/approve' id='approve-form'>"
                    "<h2>Approve the erasure</h2>"
                    "<p>Approve only once the person's identity was verified. Someone other than the person who recorded "
                    "the request approves (four eyes). The approval is the same as in Browse &gt; Required actions.</p>"
                    "<label>How was the identity verified? <select name='verification_method' id='verification_method' required>"
                    "<option value=''>choose…</option>"
                    + _options(methods.items(), None)
                    + "</select></label> <button type='submit' id='approve'>Approve and erase</button></form>"
                )  # fmt: skip
            else:
                parts.append(message("This erasure waits for approval by privacy staff who may approve (not the recorder)."))
        elif not running and permissions.get("record") and dry is not None:
            parts.append(
                f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/runs' id='erase-form'>"
                "<input type='hidden' name='dry_run' value='false'>"
                "<h2>Erase</h2><p>Starts the erasure: the plan is computed again and waits for a second person's approval.</p>"
                "<button type='submit' id='start-erasure'>Send for approval</button></form>"
            )
        elif not running and permissions.get("record"):
            parts.append(
                f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/runs'>"
                "<input type='hidden' name='dry_run' value='true'>"
                "<button type='submit' id='start-dry-run'>Start a dry run</button></form>"
            )
        elif running:
            parts.append(message("A run of this request is under way; reload the page to follow it."))
    if r["kind"] == "export" and r["status"] not in ("completed", "rejected", "responded"):
        waiting = view.waiting("verify_identity")
        running = [run for run in view.runs if run.state in ("queued", "running")]
        if waiting is not None and export_options and permissions.get("approve"):
            parts.append(
                f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/verify' id='verify-form'>"
                "<h2>Verify the person's identity</h2><p>Nothing is collected before this answer.</p>"
                "<label><select name='option' id='verify_option' required><option value=''>choose…</option>"
                + _options(((o, o) for o in export_options), None)
                + "</select></label> <button type='submit' id='verify'>Record</button></form>"
            )
        elif not running and permissions.get("record"):
            parts.append(
                f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/runs'>"
                "<button type='submit' id='start-export'>Start the export</button></form>"
            )
    if r["kind"] == "export" and r["status"] == "completed":
        box = "<div class='box'><h2>Deliver the export</h2>"
        if permissions.get("reveal"):
            box += (
                f"<form method='post' action='{_e(base)}/requests/{_e(rid)}/link' style='display:inline'>"
                "<button type='submit' id='show-link'>Show the download link</button></form> "
                f"<form method='post' action='{_e(base)}/requests/{_e(rid)}/passphrase' style='display:inline'>"
                "<button type='submit' id='reveal-passphrase'>Reveal the passphrase</button></form>"
                "<p class='muted'>Send the link by e-mail and give the passphrase by another channel (phone or SMS). "
                "Each reveal is recorded with your name.</p>"
            )
        else:
            box += "<p>Your role may not reveal the link or the passphrase.</p>"
        if view.passphrase:
            box += (f"<p class='muted'>Passphrase revealed {_e(view.passphrase['reveal_count'])} time(s); last by "
                    f"{_e(view.passphrase['last_revealed_by'] or '-')}.</p>")  # fmt: skip
        parts.append(box + "</div>")
    parts.extend(lifecycle_forms(r, base=base, permissions=permissions))
    if view.certificate is not None:
        c = view.certificate
        parts.append(
            "<div class='box'><h2>Certificate</h2>"
            f"<p>Issued {_date(c['issued_at'], time=True)}; verification {'passed' if c['verification_passed'] else 'FAILED'}. "
            f"<a id='certificate-link' href='{_e(base)}/requests/{_e(rid)}/certificate' target='_blank' rel='noopener'>Open the certificate</a></p></div>"
        )  # fmt: skip
    # -- plans
    if plans.get("current") is not None:
        parts.append("<h2 id='plan-heading'>The erasure plan</h2>" + plan_table(plans["current"], changes=plans.get("changes")))
    elif plans.get("dry_run") is not None:
        parts.append("<h2 id='plan-heading'>Dry run: what the erasure would do</h2>" + plan_table(plans["dry_run"]))
    elif r["kind"] == "erasure":
        parts.append("<p class='muted' id='no-plan'>No plan yet: the dry run is queued or running. Reload in a moment.</p>")
    # -- runs
    run_rows = "".join(
        f"<tr><td><a target='_top' href='{_e(airflow_base)}{_e(run.ui_path)}'>{_e(run.run_id)}</a></td><td>{_e(run.dag_id)}</td>"
        f"<td>{run_kind(view.request['kind'], run.dry_run)}</td>"
        f"<td><span class='tag'>{_e(run.state)}</span>{' — waiting for ' + _e(run.waiting_for) if run.waiting_for else ''}</td>"
        f"<td>{_e(run.started_by or '')}</td><td>{_date(run.queued_at, time=True)}</td></tr>"
        for run in view.runs
    ) or "<tr><td colspan='6' class='muted'>No runs yet.</td></tr>"
    parts.append("<h2>Runs</h2><table id='runs'><tr><th>Run</th><th>Workflow</th><th>Kind</th><th>State</th><th>Started by</th>"
                 f"<th>Queued</th></tr>{run_rows}</table>")  # fmt: skip
    # -- record
    action_rows = "".join(
        f"<tr><td>{_date(a['at'], time=True)}</td><td>{_e(str(a['action']).replace('_', ' '))}</td><td>{_e(a['actor'])}</td>"
        f"<td class='muted'>{_e(', '.join(f'{k}: {v}' for k, v in (a['detail'] or {}).items()))}</td></tr>"
        for a in view.actions
    ) or "<tr><td colspan='4' class='muted'>Nothing recorded on this page yet.</td></tr>"
    parts.append(f"<h2>Record</h2><table id='actions'><tr><th>When</th><th>What</th><th>Who</th><th>Detail</th></tr>{action_rows}</table>")
    return layout(f"Request {rid}", "".join(parts), base=base, staff=staff)


def approval_row(r: Mapping[str, Any]) -> str:
    """Who let the request go ahead. An erasure is approved (four eyes, after the dry run); an
    export has no approval step: the staff member who verified the person releases it, and the
    request's ``approved_by`` holds their name, so the row says so rather than "Approval"."""
    if r["kind"] == "erasure":
        return (f"<tr><th>Approval</th><td id='approval'>{_e(r['approved_by'] or 'not yet')}"
                f"{' on ' + _date(r['approved_at'], time=True) if r['approved_at'] else ''}</td></tr>")  # fmt: skip
    return f"<tr><th>Verified by</th><td id='approval'>{_e(r['approved_by'] or 'not yet')}</td></tr>"


def run_kind(request_kind: str, dry_run: bool | None) -> str:
    """What a run of the request did: an erasure's dry run or the erasure itself, or the export."""
    if request_kind == "erasure":
        return "dry run" if dry_run else "erasure" if dry_run is False else "erasure (mode not recorded)"
    return _e(request_kind)


def lifecycle_forms(r: Mapping[str, Any], *, base: str, permissions: Mapping[str, bool]) -> list[str]:
    """Extend (once, open requests), Retry (failed exports and erasures), Record the response
    (completed or rejected requests): each shown only when the lifecycle and the role allow it."""
    rid, forms = r["request_id"], []
    finished = r["status"] in ("completed", "rejected", "responded")
    if not finished and not r.get("extended_at") and permissions.get("extend"):
        forms.append(
            f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/extend' id='extend-form'>"
            "<h2>Extend the deadline</h2><p>Once per request (GDPR Art. 12(3)), by at most 62 days, with the reason "
            "the person will be given. No names, e-mails or phone numbers in the reason.</p>"
            "<label>Days <input type='number' name='days' id='extend_days' min='1' max='62' value='30' required></label>"
            "<label>Reason <input type='text' name='reason' id='extend_reason' size='48' minlength='10' required></label>"
            " <button type='submit' id='extend'>Extend</button></form>"
        )  # fmt: skip
    if r["effective_status"] == "failed" and r["kind"] in ("export", "erasure") and permissions.get("record"):
        forms.append(
            f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/retry' id='retry-form'>"
            f"<h2>Retry</h2><p>Starts the {_e(r['kind'])} again as a new run (attempt {_e(int(r['dispatch_attempt']) + 1)}), "
            "through the same dispatcher as the intake.</p>"
            "<label>Why it is tried again <input type='text' name='reason' id='retry_reason' size='48' minlength='10' required></label>"
            " <button type='submit' id='retry'>Retry</button></form>"
        )  # fmt: skip
    if r["status"] in ("completed", "rejected") and permissions.get("respond"):
        forms.append(
            f"<form class='box' method='post' action='{_e(base)}/requests/{_e(rid)}/respond' id='respond-form'>"
            "<h2>Record the response</h2><p>The person was told the outcome.</p>"
            "<label>How <select name='via' id='respond_via' required><option value=''>choose…</option>"
            + _options(((c, c.replace("_", " ")) for c in ("email", "post", "phone", "portal", "in_person")), None)
            + "</select></label><label>When (UTC, empty: now) <input type='datetime-local' name='when' id='respond_when'></label>"
            " <button type='submit' id='respond'>Record</button></form>"
        )  # fmt: skip
    return forms


def secret_page(title: str, *, label: str, secret: str, note: str, base: str, request_id: str, staff: Staff,
                element_id: str) -> str:  # fmt: skip
    body = (
        f"<div class='box'><p>{_e(label)}</p><p><span class='secret' id='{_e(element_id)}'>{_e(secret)}</span> "
        f"<button type='button' onclick=\"navigator.clipboard.writeText(document.getElementById('{_e(element_id)}').textContent)\">Copy</button></p>"
        f"<p class='muted'>{_e(note)}</p></div>"
        f"<p><a href='{_e(base)}/requests/{_e(request_id)}'>Back to the request</a></p>"
    )  # fmt: skip
    return layout(title, body, base=base, staff=staff)


def sort_keys() -> list[str]:
    return list(SORTS)
