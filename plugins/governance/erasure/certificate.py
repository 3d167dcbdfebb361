"""The erasure certificate: what was erased where, what was kept, why and until when, whether
verification found anything left, and the audit-ledger position of the run.

One per plan carried out, as JSON (the record) and HTML (to read or send), stored in the object
store under ``governance/erasure-certificates/<request id>/`` and indexed in
``governance.erasure_certificates``. The person appears only as keyed hashes of their identities
(with the key id), never an identity; row counts, object counts and processor record counts stand
for what was erased.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from governance.erasure.planner import ErasureWork

CERTIFICATE_PREFIX = "governance/erasure-certificates/"
EFFECT_WORDS = {
    "delete_rows": "rows deleted",
    "delete_expired_kept_rows": "rows deleted (legal retention period over)",
    "rewrite_rows": "rows with personal fields rewritten",
    "minimise_kept_rows": "rows kept by law, personal fields cleared",
    "clear_mention": "references to the person cleared (rows belong to others)",
    "delete_mention_only_rows": "rows only mentioning the person, with no other owner, deleted",
    "clear_mention_only_rows": "rows only mentioning the person, with no other owner, content cleared",
}


def ledger_position(conn: psycopg.Connection[Any], dag_id: str, run_id: str) -> dict[str, Any]:
    """Where the run stands in the audit ledger: the last row recorded for it and the head.

    Read straight from ``governance.audit_ledger`` (``governance.ledger`` has no reader for one
    run); ``None`` values when the ledger is not there or holds nothing for the run yet.
    """
    position: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "run_last_seq": None, "head_seq": None}
    exists = conn.execute("SELECT to_regclass('governance.audit_ledger') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return position
    row = conn.execute(
        "SELECT (SELECT max(seq) FROM governance.audit_ledger WHERE dag_id = %s AND run_id = %s),"
        " (SELECT max(seq) FROM governance.audit_ledger)",
        (dag_id, run_id),
    ).fetchone()
    if row:
        position["run_last_seq"], position["head_seq"] = row[0], row[1]
    return position


def build_certificate(
    work: ErasureWork,
    *,
    plan_row: Mapping[str, Any],
    progress: Mapping[str, Mapping[str, Any]],
    verification: Mapping[str, Any] | None,
    subject_hashes: Sequence[tuple[str, str, str]],
    ledger: Mapping[str, Any],
    issued_at: datetime,
    approval: Mapping[str, Any],
) -> dict[str, Any]:
    """The certificate as JSON-ready data (no personal data: counts, names, keyed hashes)."""
    databases = []
    for step in work.database:
        done = progress.get(step.step_id)
        databases.append({
            "table": f"{step.system}.{step.table}", "effect": step.effect, "planned": step.planned,
            "affected": int(done["affected"]) if done else None, "fields": list(step.fields),
        })  # fmt: skip
    objects = []
    for item in work.objects:
        done = progress.get(item.step_id)
        objects.append({"prefix": f"{item.system}.{item.prefix}", "bucket": item.bucket,
                        "planned": item.candidates,
                        # listed when planned: objects and versions stored, candidates with nothing
                        "present_when_planned": item.present, "versions_when_planned": item.versions,
                        "not_stored": item.absent,
                        "deleted_with_all_versions": int(done["affected"]) if done else None})  # fmt: skip
    processors = []
    for proc in work.processors:
        outcomes = [progress.get(f"processor:{proc.processor}:{r}", {}).get("detail", {}).get("outcome") for r in proc.record_ids]
        processors.append({"processor": proc.processor, "records": len(proc.record_ids),
                           "erased": outcomes.count("erased"), "already_absent": outcomes.count("absent")})  # fmt: skip
    # Each system the erasure reached, with its own progress: a database is done when its one
    # transaction committed (``db:<system>``), so a certificate of a resumed run shows which.
    systems: dict[str, dict[str, Any]] = {}
    for step in work.database:
        entry = systems.setdefault(step.system, {"system": step.system, "kind": "database", "tables": 0, "rows": 0,
                                                 "done": f"db:{step.system}" in progress})  # fmt: skip
        entry["tables"] += 1
        done = progress.get(step.step_id)
        entry["rows"] += int(done["affected"]) if done else 0
    for item in work.objects:
        entry = systems.setdefault(item.system, {"system": item.system, "kind": "object store", "tables": 0, "rows": 0,
                                                 "done": True})  # fmt: skip
        done = progress.get(item.step_id)
        entry["tables"] += 1
        entry["rows"] += int(done["affected"]) if done else 0
        entry["done"] = entry["done"] and done is not None
    items = []
    for item_work in work.items:
        done = progress.get(item_work.step_id)
        items.append({"table": item_work.where, "table_name": item_work.table_name, "found_when_planned": item_work.found,
                      "kept": item_work.kept, "deleted": int(done["affected"]) if done else None})  # fmt: skip
        entry = systems.setdefault(item_work.system, {"system": item_work.system, "kind": "dynamodb", "tables": 0,
                                                      "rows": 0, "done": True})  # fmt: skip
        entry["tables"] += 1
        entry["rows"] += int(done["affected"]) if done else 0
        entry["done"] = entry["done"] and done is not None
    passed = bool(verification and verification.get("passed"))
    executed = any(k.startswith("db:") for k in progress) or not work.database
    outcome = "held" if work.person_held else ("erased" if passed else "incomplete")
    return {
        "document": "erasure certificate",
        "version": 1,
        "policy": "aircalls.ai privacy policy, 5.3 Deletion rights (subject to legal retention requirements)",
        "request_id": work.request_id,
        "plan_id": work.plan_id,
        "issued_at": issued_at.isoformat(),
        "as_of": work.as_of,
        "business_scope": work.business_id,
        "subject": [{"identity_kind": k, "hash_key_id": kid, "keyed_hash": h} for k, kid, h in subject_hashes],
        "data_map": {"version": work.datamap_version, "sha256": work.datamap_sha256},
        "approval": dict(approval),
        "outcome": outcome,
        "executed": executed,
        "systems": list(systems.values()),
        "erased": {"databases": databases, "objects": objects, "items": items, "processors": processors},
        "kept": [k.public() for k in work.kept],
        "left_out": [{"where": e.where, "count": e.count, "reason": e.reason} for e in work.excluded],
        "verification": dict(verification) if verification else {"passed": False, "residue": ["not verified"]},
        "guard": {"overridden": work.guard.overridden, "reasons": list(work.guard.reasons)},
        "ledger": dict(ledger),
        "plan_status": plan_row.get("status"),
    }


def render_html(certificate: Mapping[str, Any]) -> str:
    """A self-contained HTML page of the certificate (every value escaped)."""

    def esc(value: Any) -> str:
        return html.escape("" if value is None else str(value))

    def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        if not rows:
            return "<p>None.</p>"
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    c = certificate
    verification = c["verification"]
    status = {"erased": "Erased", "held": "Kept under legal hold", "incomplete": "Incomplete"}.get(c["outcome"], c["outcome"])
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Erasure certificate {esc(c['request_id'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}"
        "th{background:#f2f2f2}.ok{color:#176f2c}.bad{color:#a11}</style></head><body>",
        f"<h1>Erasure certificate</h1><p>Request <b>{esc(c['request_id'])}</b>, plan {esc(c['plan_id'])}, "
        f"issued {esc(c['issued_at'])} (data as of {esc(c['as_of'])}). {esc(c['policy'])}.</p>",
        f"<p>Outcome: <b>{esc(status)}</b>. Verification: "
        + ("<span class='ok'>passed</span>" if verification.get("passed") else
           f"<span class='bad'>not passed</span> ({esc('; '.join(verification.get('residue', [])))})")
        + "</p>",
        "<h2>The person</h2><p>Identified only by keyed hashes (HMAC-SHA256) of their identities:</p>",
        table(["identity", "key id", "keyed hash"], [[s["identity_kind"], s["hash_key_id"], s["keyed_hash"]] for s in c["subject"]]),
        "<h2>Systems</h2>",
        table(["system", "kind", "tables or prefixes", "rows or objects removed", "done"],
              [[x["system"], x["kind"], x["tables"], x["rows"], "yes" if x["done"] else "no"] for x in c.get("systems", [])]),
        "<h2>Erased</h2>",
        table(["table", "what", "rows"], [[d["table"], EFFECT_WORDS.get(d["effect"], d["effect"]), d["affected"] if d["affected"] is not None else d["planned"]]
                                          for d in c["erased"]["databases"] if d["planned"]]),
        table(["objects", "removed (every version)", "versions stored when planned", "named but not stored"],
              [[o["prefix"], o["deleted_with_all_versions"], o.get("versions_when_planned"), o.get("not_stored")]
               for o in c["erased"]["objects"] if o["planned"]]),
        table(["DynamoDB table", "items deleted", "found when planned"],
              [[i["table"], i["deleted"], i["found_when_planned"]] for i in c["erased"].get("items", []) if i["found_when_planned"] or i["deleted"]]),
        table(["processor", "records erased", "already gone"], [[p["processor"], p["erased"], p["already_absent"]] for p in c["erased"]["processors"]]),
        "<h2>Kept, why and until when</h2>",
        table(["where", "what", "count", "why", "law", "until"],
              [[k["where"], k["kind"], k["count"], k["basis"], k.get("law") or "",
                (k["until"] or "until released") + (f" .. {k['until_latest']}" if k.get("until_latest") and k["until_latest"] != k["until"] else "")]
               for k in c["kept"]]),
        "<h2>Left out</h2><p>Rows an identity matched that belong to someone else (another identity on them):</p>",
        table(["where", "rows", "reason"], [[e["where"], e["count"], e["reason"]] for e in c["left_out"]]),
        "<h2>Verification</h2>",
        table(["where", "checked", "expected", "found", "result"],
              [[ch["where"], ch["kind"], ch["expected"], ch["observed"], "ok" if ch["success"] else "residue"]
               for ch in verification.get("checks", [])]),
        f"<p>Checked with {esc(verification.get('engine', ''))}.</p>",
        "<h2>Audit ledger</h2>",
        f"<p>DAG {esc(c['ledger'].get('dag_id'))}, run {esc(c['ledger'].get('run_id'))}: last ledger row of the run "
        f"{esc(c['ledger'].get('run_last_seq'))}, ledger head {esc(c['ledger'].get('head_seq'))} when issued.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def store_certificate(
    conn: psycopg.Connection[Any],
    certificate: Mapping[str, Any],
    *,
    s3: Any | None,
    bucket: str | None,
) -> dict[str, str]:
    """Write JSON and HTML to the object store (when given) and index them; returns the URIs."""
    document = json.dumps(certificate, indent=2, sort_keys=True, default=str)
    page = render_html(certificate)
    digest = hashlib.sha256(document.encode()).hexdigest()
    base = f"{CERTIFICATE_PREFIX}{certificate['request_id']}/{certificate['plan_id']}"
    if s3 is not None and bucket:
        s3.put_object(Bucket=bucket, Key=f"{base}.json", Body=document.encode(), ContentType="application/json")
        s3.put_object(Bucket=bucket, Key=f"{base}.html", Body=page.encode(), ContentType="text/html; charset=utf-8")
        json_uri, html_uri = f"s3://{bucket}/{base}.json", f"s3://{bucket}/{base}.html"
    else:
        json_uri = html_uri = f"governance://erasure_certificates/{certificate['plan_id']}"
    conn.execute(
        """
        INSERT INTO governance.erasure_certificates
            (plan_id, request_id, issued_at, verification_passed, json_uri, html_uri, sha256, certificate)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (plan_id) DO UPDATE SET issued_at = EXCLUDED.issued_at,
            verification_passed = EXCLUDED.verification_passed, json_uri = EXCLUDED.json_uri,
            html_uri = EXCLUDED.html_uri, sha256 = EXCLUDED.sha256, certificate = EXCLUDED.certificate
        """,
        (certificate["plan_id"], certificate["request_id"], certificate["issued_at"],
         bool(certificate["verification"].get("passed")), json_uri, html_uri, digest, Jsonb(json.loads(document))),
    )  # fmt: skip
    return {"json_uri": json_uri, "html_uri": html_uri, "sha256": digest}
