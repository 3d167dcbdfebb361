"""``python -m governance scrub-run-confs``: remove identities typed into trigger forms from Airflow.

A privacy request triggered from a DAG's form carries the person's e-mail and phone in that run's
configuration (``dag_run.conf``, shown by the UI and the REST API, searchable with
``conf_contains``) and, unless ``[core] sensitive_var_conn_names`` names them (the project's
environments do), in the API action log (``log.extra``). The first task of every request DAG
records the request (identities encrypted, keyed hashes for look-ups) in
``governance.privacy_requests``, so once the run has ended the identities are no longer needed in
Airflow. This command, run periodically from a host that reaches Airflow's metadata database
(task code cannot: Airflow 3 refuses database access from DAGs), does the clean-up:

* for every ended run (success or failed) of a DAG tagged ``privacy-request`` that ended at least
  ``--min-age`` ago, the identity fields (``email``, ``phone``) are removed from the
  configuration; when the run recorded its request, ``request_id`` is put in their place, so
  clearing and re-running a task of that run serves the same request from the stored identities;
* in the action log of those DAGs, identity values inside a logged ``conf`` are replaced with
  ``***``.

Idempotent: a scrubbed run has no identity fields left and is skipped. Prints counts only (JSON);
``--dry-run`` counts what would change.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from governance.config import GOVERNANCE_CONN_ID
from governance.db import connect, conninfo_for
from governance.privacy_requests import RequestKind
from governance.workflows.request_intake import form_request_id

# The trigger-form fields that can carry an identity (governance.dag_params.subject_params).
IDENTITY_KEYS = ("email", "phone")
PRIVACY_REQUEST_TAG = "privacy-request"
ENDED_STATES = ("success", "failed")
MASK = "***"
SCRUBBED_MARK = "identities_removed_at"
_KINDS: tuple[RequestKind, ...] = ("export", "erasure")
_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass
class ScrubReport:
    runs_scanned: int = 0
    runs_scrubbed: int = 0
    runs_pointed_at_request: int = 0
    log_entries_scrubbed: int = 0
    dry_run: bool = False


def parse_age(text: str) -> timedelta:
    """``30m``, ``1h``, ``2d`` (or ``0s``) as a timedelta; anything else is refused."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"age {text!r} is not a number followed by s, m, h or d (e.g. 1h)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _has_identity(conf: Any) -> bool:
    return isinstance(conf, Mapping) and any(
        key in conf and conf[key] not in (None, "", MASK) for key in IDENTITY_KEYS
    )


def scrubbed_conf(conf: Mapping[str, Any], *, request_id: str | None, at: datetime) -> dict[str, Any]:
    """The configuration without identity fields; ``request_id`` filled in when it was blank."""
    clean = {k: v for k, v in conf.items() if k not in IDENTITY_KEYS}
    if request_id and not (isinstance(clean.get("request_id"), str) and clean["request_id"].strip()):
        clean["request_id"] = request_id
    clean[SCRUBBED_MARK] = at.astimezone(UTC).isoformat()
    return clean


def masked_log_extra(extra: str | None) -> str | None:
    """The action-log ``extra`` with identity values in a logged ``conf`` masked, or None if clean."""
    if not extra:
        return None
    try:
        data = json.loads(extra)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    conf = data.get("conf")
    if isinstance(conf, str):  # a conf sent as a JSON string
        try:
            conf = json.loads(conf)
        except ValueError:
            return None
    if not isinstance(conf, dict) or not _has_identity(conf):
        return None
    data["conf"] = {k: (MASK if k in IDENTITY_KEYS and v not in (None, "") else v) for k, v in conf.items()}
    return json.dumps(data)


def _candidate_request_ids(run_id: str, dates: Iterable[datetime | None]) -> list[str]:
    ids: list[str] = []
    for when in dates:
        if when is not None:
            ids.extend(form_request_id(kind, run_id, when) for kind in _KINDS)
    return ids


def _recorded_requests(conninfo: str | None, candidates: list[str]) -> set[str]:
    """Which of the candidate request ids exist in governance.privacy_requests."""
    if not candidates or conninfo is None:
        return set()

    with connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT request_id FROM governance.privacy_requests WHERE request_id = ANY(%s)", (candidates,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def scrub_run_confs(
    *, now: datetime, min_age: timedelta, dry_run: bool, governance_conninfo: str | None, batch: int = 500
) -> ScrubReport:
    """Scrub identities from ended privacy-request runs and their action-log entries."""
    # The metadata ORM (not the DAG-authoring API): this command runs beside the scheduler.
    from airflow.models import DagRun, DagTag, Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    report = ScrubReport(dry_run=dry_run)
    cutoff = now - min_age
    with create_session() as session:
        dag_ids = sorted(set(session.scalars(select(DagTag.dag_id).where(DagTag.name == PRIVACY_REQUEST_TAG))))
        if not dag_ids:
            return report
        last_id = 0
        while True:
            runs = list(
                session.scalars(
                    select(DagRun)
                    .where(
                        DagRun.dag_id.in_(dag_ids),
                        DagRun.state.in_(ENDED_STATES),
                        DagRun.end_date <= cutoff,
                        DagRun.id > last_id,
                    )
                    .order_by(DagRun.id)
                    .limit(batch)
                )
            )
            if not runs:
                break
            last_id = runs[-1].id
            report.runs_scanned += len(runs)
            dirty = [run for run in runs if _has_identity(run.conf)]
            candidates = {
                run.id: _candidate_request_ids(run.run_id, (run.logical_date, run.run_after)) for run in dirty
            }
            recorded = _recorded_requests(governance_conninfo, [c for ids in candidates.values() for c in ids])
            for run in dirty:
                found = next((c for c in candidates[run.id] if c in recorded), None)
                report.runs_scrubbed += 1
                report.runs_pointed_at_request += found is not None
                if not dry_run:
                    run.conf = scrubbed_conf(run.conf or {}, request_id=found, at=now)
            if not dry_run:
                session.flush()
        # The action log: identity values inside a logged conf (older entries, or a deployment
        # without the sensitive names configured).
        last_log = 0
        while True:
            entries = list(
                session.scalars(
                    select(Log)
                    .where(Log.dag_id.in_(dag_ids), Log.extra.contains('"conf"'), Log.id > last_log)
                    .order_by(Log.id)
                    .limit(batch)
                )
            )
            if not entries:
                break
            last_log = entries[-1].id
            for entry in entries:
                masked = masked_log_extra(entry.extra)
                if masked is not None:
                    report.log_entries_scrubbed += 1
                    if not dry_run:
                        entry.extra = masked
            if not dry_run:
                session.flush()
        if dry_run:
            session.rollback()
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-age", default="0s", metavar="AGE",
        help="only runs that ended at least this long ago, e.g. 1h or 2d (default 0s: every ended run)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="count what would change; change nothing")


def run(args: argparse.Namespace) -> int:
    try:
        min_age = parse_age(args.min_age)
    except ValueError as exc:
        print(f"scrub-run-confs: {exc}", file=sys.stderr)
        return 2

    report = scrub_run_confs(
        now=datetime.now(UTC),
        min_age=min_age,
        dry_run=bool(args.dry_run),
        governance_conninfo=conninfo_for(GOVERNANCE_CONN_ID),
    )
    print(json.dumps(asdict(report), sort_keys=True))
    return 0
