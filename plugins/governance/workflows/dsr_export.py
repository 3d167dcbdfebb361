"""dsr_export: a copy of a person's data (privacy policy 5.1), one task function per DAG task.

The DAG (``dags/dsr_export.py``) only wires these together:

1. ``open_export_request``: validates the form or the request id before anything is read, and
   records a request for identities typed into the form (``request_intake.open_request``).
2. ``verification_route`` / the HITL step / ``record_verification``: an unverified request waits
   for privacy staff to say in the Airflow UI how the person's identity was verified (GDPR
   Art. 12(6)); a rejection ends the run with nothing collected.
3. ``build_bundle``: collects, zips, encrypts and uploads the bundle to a staging key
   (``governance.export.collect``); the passphrase is the request's, created on first use. The
   person is resolved first, narrowed to one person as erasure does: when the identities fit
   several people equally well (a household phone and nothing to tell them apart) nothing is
   collected or written, and the task returns the refusal (counts, tables, businesses) instead
   of a bundle summary.
4. ``check_bundle``: the Great Expectations quality gate on the staged object; a failure fails
   the run (without retries: the same data fails the same way) and no link is issued. Skipped
   for a refused request (and with it ``publish_bundle``).
5. ``publish_bundle``: copies the checked bundle to the request's published key (server-side
   encrypted).
6. ``close_export_request`` (runs after any failure, the run's only leaf): deletes staging
   objects and writes the request's outcome, the only writer of its final status. On success
   the download link goes to ``governance.privacy_requests.result_uri`` and nowhere else; when
   the export did not complete it fails the task (no retries), so the run shows as failed. A
   refused request is closed ``rejected`` with the refusal as its outcome, and the task fails
   with the same words so staff see what to supply.

What these functions return goes to XCom: request ids, counts, checksums, booleans. Never an
identity, a bundle location, the link or the passphrase; exception messages name systems and
checks, never a person.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from governance.approvers import approver_refusal
from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.objects import delete_everywhere, head, keys_under
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap
from governance.datamap.model import ObjectStoreSystem
from governance.db import connect, conninfo_for
from governance.export import gate
from governance.export.collect import AmbiguousSubject, ExportSubject, ExportTargets, export_bundle_to_s3
from governance.export.formats import FORMATS
from governance.export.state import (
    ensure_passphrase,
    load_bundle_record,
    record_gate,
    record_staged,
    set_bundle_status,
    stored_passphrase,
)
from governance.export.storage import SSE, ExportStorageError, bundle_locations, presigned_download_link
from governance.lineage import (
    record_governance_tables,
    record_object_read,
    record_object_write,
    record_request_opened,
    record_table_read,
    record_table_write,
)
from governance.objectstore import s3_client
from governance.workflows.request_intake import (
    InvalidRunConfiguration,
    claimed_by,
    close_request,
    load_identities,
    mark_in_progress,
    mark_verified,
    open_request,
    reject_request,
)

DAG_ID = "dsr_export"
HITL_TASK_ID = "verify_identity"
RECORD_VERIFICATION_TASK_ID = "record_verification"
# What staff choose in the approval step: how the identity was verified, or a rejection.
VERIFICATION_OPTIONS: dict[str, str] = {
    "Verified: signed in to their aircalls account": "signed in to their account",
    "Verified: called back on the number we hold": "call-back to the number on file",
    "Verified: replied from the e-mail address we hold": "reply from the e-mail address on file",
    "Verified: identity document checked": "identity document checked",
    "Verified: by the business client who asked for them": "attested by the requesting business client",
}
REJECT_OPTION = "Reject: the identity could not be verified"
HITL_OPTIONS = [*VERIFICATION_OPTIONS, REJECT_OPTION]
DEFAULT_FORMATS = ("json", "csv")
DEFAULT_LINK_VALID_DAYS = 7
MAX_LINK_VALID_DAYS = 7  # S3 presigned (SigV4) links cannot outlive 7 days
# The processor clients' own retries (tests lower the backoff; the task is retried on top).
PROCESSOR_ATTEMPTS = 5
PROCESSOR_BACKOFF_S = 0.5
# The order tasks run in, for naming where a failed run stopped.
TASK_ORDER = ("open_request", "route_verification", HITL_TASK_ID, RECORD_VERIFICATION_TASK_ID,
              "build_bundle", "check_bundle", "publish_bundle")  # fmt: skip
_STEP_WORDS = {
    HITL_TASK_ID: "identity verification",
    RECORD_VERIFICATION_TASK_ID: "identity verification",
    "build_bundle": "collecting the data (a system or processor may be unavailable)",
    "check_bundle": "the quality gate (the bundle did not match its sources)",
    "publish_bundle": "publishing the bundle",
}


class ExportRefused(ValueError):
    """The run cannot serve this request (bad form input, wrong request state); nothing was read."""


def _fail(message: str) -> NoReturn:
    """Fail the task without retries: retrying cannot change the outcome."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _skip(message: str) -> NoReturn:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(message)


def _now() -> datetime:
    return datetime.now(UTC)


def parse_formats(value: Any) -> list[str]:
    """The chosen data formats in canonical order; ExportRefused for none or unknown ones."""

    if value is None or value == "" or value == []:
        return list(DEFAULT_FORMATS)
    chosen = [value] if isinstance(value, str) else list(value)
    unknown = sorted({str(v) for v in chosen} - set(FORMATS))
    if unknown:
        raise ExportRefused(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in chosen]


def parse_link_days(value: Any) -> int:
    try:
        days = int(value if value not in (None, "") else DEFAULT_LINK_VALID_DAYS)
    except (TypeError, ValueError):
        raise ExportRefused("link_valid_days must be a whole number of days") from None
    if not 1 <= days <= MAX_LINK_VALID_DAYS:
        raise ExportRefused(f"link_valid_days must be between 1 and {MAX_LINK_VALID_DAYS}")
    return days


# --------------------------------------------------------------------------------------------
# 1. Open


def open_export_request(params: Mapping[str, Any], *, run_id: str, received_at: datetime) -> dict[str, Any]:
    """Validate the form (identities, request id, formats, link days) and return the request's
    handle. Fails, before any governed system is read, on anything that cannot be served."""

    try:
        parse_formats(params.get("formats"))
        parse_link_days(params.get("link_valid_days"))
        handle = open_request(params, kind="export", run_id=run_id, received_at=received_at)
    except (InvalidRunConfiguration, ExportRefused) as exc:
        _fail(f"cannot start this export: {exc}")

    try:
        record_request_opened(GOVERNANCE_CONN_ID, params)
    except Exception:  # lineage is best effort; the ledger listener reconciles
        import logging

        logging.getLogger(__name__).debug("lineage not recorded", exc_info=True)
    return handle.to_xcom()


# --------------------------------------------------------------------------------------------
# 2. Identity verification


def verification_route(handle: Mapping[str, Any]) -> str:
    """The task to follow: straight to recording for a verified request, else the approval step."""
    return RECORD_VERIFICATION_TASK_ID if handle.get("verified") else HITL_TASK_ID


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _now()


def is_rejection(response: Mapping[str, Any] | None) -> bool:
    return bool(response) and REJECT_OPTION in (response or {}).get("chosen_options", [])


def record_verification(handle: Mapping[str, Any], response: Mapping[str, Any] | None) -> dict[str, Any]:
    """Record how staff verified the identity (the HITL answer), or end the run on a rejection.

    A request verified before the run needs no answer. The answer is ``{chosen_options,
    responded_by_user, responded_at, params_input}`` as the HITL operator returns it.
    """

    if handle.get("verified"):
        return {"request_id": handle["request_id"], "verified": True, "method": "verified before this run"}
    if not response or not response.get("chosen_options"):
        _fail("the identity verification step gave no answer; clear it to ask again")
    if is_rejection(response):
        _skip("identity not verified: the request is rejected and nothing was collected")
    chosen = response["chosen_options"][0]
    if chosen not in VERIFICATION_OPTIONS:
        _fail("the identity verification answer is not one of the offered options")
    user = response.get("responded_by_user") or {}
    refusal = approver_refusal(user)  # [governance] approvers, when configured
    if refusal:
        _fail(refusal)
    verified_by = str(user.get("name") or user.get("id") or "airflow user")
    mark_verified(
        str(handle["request_id"]),
        method=VERIFICATION_OPTIONS[chosen],
        verified_by=verified_by,
        at=_as_datetime(response.get("responded_at")),
    )
    return {"request_id": handle["request_id"], "verified": True, "method": VERIFICATION_OPTIONS[chosen]}


# --------------------------------------------------------------------------------------------
# 3. Build


def _received_on(conninfo: str, request_id: str) -> datetime:
    with connect(conninfo) as conn:
        row = conn.execute(
            "SELECT received_at FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
    if row is None:
        raise ExportRefused(f"no privacy request {request_id}")
    return row[0]


def _record_lineage(datamap: Any, summary: Mapping[str, Any], locations: Any, *, wrote: bool = True) -> None:
    """Datasets read and written, by name (tables, prefixes), never by object key."""

    for name in summary.get("tables_read", []):
        system_name, table = name.split(".", 1)
        system = datamap.postgres_system(system_name)
        record_table_read(system.connection_id, system.db_schema, table)
    for name in summary.get("prefixes_read", []):
        system_name, prefix_name = name.split(".", 1)
        store = datamap.system(system_name)
        assert isinstance(store, ObjectStoreSystem)
        prefix = store.prefix(prefix_name)
        if prefix is not None:
            record_object_read(store.bucket.resolve(), prefix.static_prefix)
    if wrote:
        record_object_write(locations.bucket, locations.dataset_prefix, objects=1)


def is_refusal(summary: Mapping[str, Any] | None) -> bool:
    """Whether ``build_bundle`` refused the request instead of building a bundle."""
    return bool(summary) and bool((summary or {}).get("refused"))


def build_bundle(handle: Mapping[str, Any], params: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
    """Collect the person's data into the encrypted bundle at the run's staging key.

    Returns the bundle's summary, or, when the identities fit more than one person, the refusal
    ``{request_id, refused: True, reason, ambiguities}`` (nothing collected, nothing written);
    the last task closes such a request as rejected."""
    import logging


    request_id = str(handle["request_id"])
    formats = parse_formats(params.get("formats"))
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    mark_in_progress(request_id, dag_run_id=run_id, at=_now(), conninfo=conninfo)
    datamap = load_datamap()
    locations = bundle_locations(datamap, request_id)
    cipher = cipher_from_airflow()
    with connect(conninfo) as conn:
        passphrase = ensure_passphrase(conn, request_id, cipher=cipher, at=_now())
    business_id = handle.get("business_id")
    subject = ExportSubject(
        request_id=request_id,
        identities=load_identities(request_id, conninfo=conninfo),
        received_on=_received_on(conninfo, request_id).astimezone(UTC).date(),
        business_scope=(int(business_id),) if business_id else None,
    )
    try:
        summary = export_bundle_to_s3(
            datamap,
            subject,
            formats=formats,  # type: ignore[arg-type]
            targets=ExportTargets.from_airflow(processor_attempts=PROCESSOR_ATTEMPTS, processor_backoff_s=PROCESSOR_BACKOFF_S),
            s3=s3_client(locations.connection_id),
            bucket=locations.bucket,
            key=locations.staging_key(run_id),
            passphrase=passphrase,
            generated_at=_now(),
        ).to_dict()
    except AmbiguousSubject as refusal:
        # Not a fault to retry: the same identities fit the same people. Counts, tables and
        # businesses only; the last task records the outcome.
        logging.getLogger(__name__).warning("request %s: %s", request_id, refusal)
        _record_lineage(datamap, {"tables_read": refusal.tables_read}, locations, wrote=False)
        return {"request_id": request_id, "refused": True, "reason": str(refusal), "ambiguities": refusal.to_dict()}
    with connect(conninfo) as conn:
        record_staged(conn, request_id=request_id, run_id=run_id, summary=summary, at=_now())
    _record_lineage(datamap, summary, locations)

    # The request (identities read, claimed), the passphrase and the staged bundle's record.
    record_governance_tables(GOVERNANCE_CONN_ID, read=("privacy_requests",),
                             written=("privacy_requests", "export_passphrases", "export_bundles"))  # fmt: skip
    return summary


# --------------------------------------------------------------------------------------------
# 4. Quality gate


def check_bundle(handle: Mapping[str, Any], summary: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
    """Run the quality gate on the staged bundle; fail (no retries, no link) when it does not pass."""

    request_id = str(handle["request_id"])
    if is_refusal(summary):
        _skip("the request was refused before anything was collected: there is no bundle to check")
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    datamap = load_datamap()
    locations = bundle_locations(datamap, request_id)
    with connect(conninfo) as conn:
        passphrase = stored_passphrase(conn, request_id, cipher=cipher_from_airflow())
        record = load_bundle_record(conn, request_id=request_id, run_id=run_id)
    hasher = hasher_from_airflow()
    business_id = handle.get("business_id")
    result = gate.check_bundle(
        datamap=datamap,
        s3=s3_client(locations.connection_id),
        bucket=locations.bucket,
        key=locations.staging_key(run_id),
        passphrase=passphrase,
        request_id=request_id,
        # What the writer counted and uploaded, as recorded when it finished (not from XCom).
        source_counts=record["source_counts"],
        expected_ciphertext=(str(record["ciphertext_sha256"]), int(record["ciphertext_bytes"])),
        expected_files_digest=str(record["files_digest"]),
        expected_formats=list(summary.get("formats") or parse_formats(None)),
        identities=list(load_identities(request_id, conninfo=conninfo).items()),
        token_for=hasher.hash,
        scope_ids=[int(business_id)] if business_id else None,
    )
    with connect(conninfo) as conn:
        record_gate(conn, request_id=request_id, run_id=run_id, passed=result.passed, result=result.to_dict(), at=_now())
    record_object_read(locations.bucket, locations.dataset_prefix)
    if not result.passed:
        _fail(f"quality gate failed, no link issued: {result.describe_failures()}")
    return {"request_id": request_id, "passed": True, "files_digest": record["files_digest"],
            "rows_checked": result.rows_checked, "files_checked": result.files_checked}  # fmt: skip


# --------------------------------------------------------------------------------------------
# 5. Publish


def publish_bundle(handle: Mapping[str, Any], gate_result: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
    """Copy the checked bundle from staging to the request's published key (SSE)."""

    request_id = str(handle["request_id"])
    if not gate_result.get("passed"):
        _fail("the quality gate has not passed: nothing is published")
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    with connect(conninfo) as conn:
        record = load_bundle_record(conn, request_id=request_id, run_id=run_id)
    if record["status"] not in ("gate_passed", "published"):
        _fail("the bundle of this run has not passed the quality gate: nothing is published")
    locations = bundle_locations(load_datamap(), request_id)
    s3 = s3_client(locations.connection_id)
    staged = locations.staging_key(run_id)
    # The request's row stays locked while this run publishes: a newer run of the same request
    # cannot take the claim between the check and the copy, and an older run never overwrites it.
    with connect(conninfo) as conn, conn.transaction():
        holder = claimed_by(conn, request_id, lock=True)
        if holder != run_id:
            _fail(f"request {request_id} is now served by a newer run ({holder}): this run stops without publishing")
        s3.copy(
            {"Bucket": locations.bucket, "Key": staged},
            locations.bucket,
            locations.published_key,
            ExtraArgs={"ServerSideEncryption": SSE, "ContentType": "application/octet-stream"},
        )
        head = s3.head_object(Bucket=locations.bucket, Key=locations.published_key)
        if int(head["ContentLength"]) != int(record["ciphertext_bytes"]):
            raise ExportStorageError("the published bundle differs in size from the checked one")
        set_bundle_status(conn, request_id=request_id, run_id=run_id, status="published", at=_now(), published_at=_now())
    record_object_write(locations.bucket, locations.dataset_prefix, objects=1)
    return {"request_id": request_id, "published": True, "files_digest": record["files_digest"],
            "ciphertext_bytes": int(record["ciphertext_bytes"])}  # fmt: skip


# --------------------------------------------------------------------------------------------
# 6. Close


def failed_step(states: Mapping[str, Any]) -> str | None:
    """The first task (in run order) that failed, from ``{task_id: state}``."""
    for task_id in TASK_ORDER:
        if str(states.get(task_id) or "").lower().endswith("failed") and "upstream" not in str(states.get(task_id)):
            return task_id
    return None


def close_export_request(
    handle: Mapping[str, Any] | None,
    *,
    run_id: str,
    published: Mapping[str, Any] | None,
    verification_response: Mapping[str, Any] | None,
    task_states: Mapping[str, Any],
    link_valid_days: Any = DEFAULT_LINK_VALID_DAYS,
    built: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the request's outcome (the only writer of its final status) and tidy up.

    Staging objects of the request are always deleted (every version). A published bundle gets
    a presigned download link valid ``link_valid_days``, stored only in ``result_uri``; any other
    outcome deletes a published object no valid link points to. A request ``build_bundle``
    refused (``built``, its result) is closed ``rejected`` with the refusal as the outcome and
    ``served`` false, so the run's last task fails it and the run shows what staff must supply.
    The task itself succeeds whenever the outcome was written (``request_outcome`` decides the
    run's state from ``served``).
    """

    if not handle:
        return {"closed": False, "served": False, "detail": "no request was opened: the form was refused"}
    request_id = str(handle["request_id"])
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    detail = ""
    locations = bundle_locations(load_datamap(), request_id)
    s3 = s3_client(locations.connection_id)
    with connect(conninfo) as conn:
        holder = claimed_by(conn, request_id)
        state = conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                             (request_id,)).fetchone()  # fmt: skip
    if state is not None and state[0] == "in_progress" and holder not in (None, run_id):
        # Another run of the request holds it now (it claimed it after this one, or this one never
        # did): remove only this run's staged bundle and leave the request's outcome, the other
        # run's staging and the published bundle to that run.
        removed = delete_everywhere(s3, locations.bucket, [locations.staging_key(run_id)])
        with connect(conninfo) as conn:
            set_bundle_status(conn, request_id=request_id, run_id=run_id, status="discarded", at=_now())
        detail = f"superseded by a newer run of the request ({holder}); its outcome stands"
        return {"request_id": request_id, "status": "superseded", "detail": detail, "served": False,
                "staging_objects_removed": removed}  # fmt: skip
    removed = delete_everywhere(s3, locations.bucket, keys_under(s3, locations.bucket, locations.staging_folder))
    at = _now()
    refused = is_refusal(built) and (built or {}).get("request_id") == request_id
    result: dict[str, Any]
    if published and published.get("published") and head(s3, locations.bucket, locations.published_key):
        days = parse_link_days(link_valid_days)
        link = presigned_download_link(s3, locations, days=days)
        status = close_request(
            request_id, succeeded=True, at=at, result_uri=link, conninfo=conninfo,
            detail=f"bundle published ({published.get('ciphertext_bytes', 0)} bytes); link valid {days} day(s)",
        )  # fmt: skip
        with connect(conninfo) as conn:
            set_bundle_status(conn, request_id=request_id, run_id=run_id, status="published", at=at,
                              link_expires_at=at + timedelta(days=days))  # fmt: skip
        result = {"request_id": request_id, "status": status, "link_valid_days": days, "served": True}
    else:
        with connect(conninfo) as conn:
            current = conn.execute(
                "SELECT status FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
            ).fetchone()
        if current is None or current[0] != "completed":
            # No valid link points at a published object of an unfinished request: remove it.
            removed += delete_everywhere(s3, locations.bucket, [locations.published_key])
        if is_rejection(verification_response):
            detail = "identity not verified: rejected by privacy staff"
            status = reject_request(request_id, at=at, detail=detail, conninfo=conninfo)
        elif refused:
            detail = str((built or {}).get("reason") or "refused before anything was collected")
            status = reject_request(request_id, at=at, detail=detail, conninfo=conninfo)
        else:
            step = failed_step(task_states)
            detail = f"export failed at {_STEP_WORDS.get(step or '', step or 'an unknown step')}; see the run's task logs"
            status = close_request(request_id, succeeded=False, at=at, detail=detail, conninfo=conninfo)
        with connect(conninfo) as conn:
            set_bundle_status(conn, request_id=request_id, run_id=run_id, status="discarded", at=at)
        result = {"request_id": request_id, "status": status, "detail": detail,
                  "served": status == "rejected" and not refused}  # fmt: skip
    record_table_write(GOVERNANCE_CONN_ID, "governance", "privacy_requests", rows=1)
    if removed:
        record_object_write(locations.bucket, locations.dataset_prefix, objects=removed)
    result["staging_objects_removed"] = removed
    return result


def task_states_of_run(ti: Any, *, dag_id: str, run_id: str, task_ids: Sequence[str] = TASK_ORDER) -> dict[str, Any]:
    """``{task_id: state}`` of this run through the task SDK (empty when unavailable)."""
    try:
        states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id], task_ids=list(task_ids))
    except Exception:  # a missing API must not stop the outcome being written
        return {}
    return dict(states.get(run_id, {})) if isinstance(states, Mapping) else {}
