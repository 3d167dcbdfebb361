"""dsr_erasure: erase one person across every system the data map names (policy 5.3).

Task functions of ``dags/dsr_erasure.py``, each callable on its own (tests call them directly):

1. :func:`open_erasure_request`: validate the form or load the request (nothing read before);
2. :func:`plan_erasure`: resolve the person in one snapshot, apply legal holds and exceptions,
   run the safety guard, persist the plan (a dry run stops here; the plan is its result);
3. :func:`choose_path`: approval in the UI, or straight on when the request was approved already;
4. :func:`execute_database`, :func:`delete_objects`, :func:`erase_processors`: carry the plan out,
   step by step, progress recorded (a re-run continues where it stopped);
5. :func:`verify_erasure`: look again everywhere; zero residue except what the plan kept;
6. :func:`record_suppression`: the person's keyed hashes on the suppression list;
7. :func:`issue_certificate` and :func:`close_erasure_request` (both run after failures too).

XCom carries ids and counts; task logs counts and table names; identities are decrypted inside
the tasks that need them and never leave them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

from governance.approvers import approver_refusal
from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.base import processor_connector
from governance.connectors.dynamodb import item_client_for, item_table_size
from governance.connectors.processors import ProcessorRejected, ProcessorUnavailable
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap
from governance.datamap.model import PrefixRef, TableRef
from governance.datamap.plans import build_erasure_plan, build_resolution_plan, key_tables, keyed_hash_params
from governance.db import connect, conninfo_for
from governance.erasure import store
from governance.erasure.business import (
    BUSINESS_METHODS,
    OFFBOARDING,
    InvalidOffboarding,
    business_exists,
    business_lock,
    compute_business_work,
    forget_people,
    load_people,
    open_offboarding,
    parse_offboarding_form,
    store_people,
)
from governance.erasure.business import POLICY as OFFBOARDING_POLICY
from governance.erasure.certificate import (
    CERTIFICATE_PREFIX,
    build_certificate,
    ledger_position,
    store_certificate,
)
from governance.erasure.claims import ClaimRefused, claim_erasure, held_by_another_run
from governance.erasure.executor import (
    PlanOutdated,
    StoredKeysLost,
    approved_statements,
    delete_planned_objects,
    erase_processor_records,
    execute_database_work,
)
from governance.erasure.guard import (
    evaluate_guard,
    guard_limits,
    needed_sizes,
    refusal_message,
    table_size_at_least,
)
from governance.erasure.holds import load_active_holds, subject_hashes
from governance.erasure.items import delete_planned_items, plan_items
from governance.erasure.keys import ensure_key_tables, forget_plan_keys
from governance.erasure.locking import subject_lock
from governance.erasure.planner import ErasureWork, build_work, inventory_objects
from governance.erasure.readable import erasure_plan_text
from governance.erasure.resolve import MatchByIdentity, resolve_subject
from governance.erasure.suppression import record_suppression as record
from governance.erasure.verify import residue_message
from governance.erasure.verify import verify_erasure as verify
from governance.lineage import (
    record_governance_tables,
    record_item_write,
    record_object_write,
    record_request_opened,
    record_table_read,
    record_table_write,
)
from governance.migrations import ensure_schema, migrate
from governance.objectstore import ObjectStoreUnavailable, not_answering, s3_client
from governance.privacy_requests import request_ids_for_subject
from governance.resolution import KeyStore, plan_systems, system_snapshots
from governance.workflows.request_intake import (
    InvalidRunConfiguration,
    RequestHandle,
    close_request,
    load_identities,
    mark_approved,
    mark_verified,
    open_request,
)

log = logging.getLogger(__name__)

APPROVE = "Approve"
VERIFICATION_METHODS = {
    "email_link": "Confirmed through a link sent to the e-mail address on record",
    "account_login": "Requested while signed in to the account",
    "phone_callback": "Confirmed by calling back the phone number on record",
    "id_document": "Identity document checked by privacy staff",
    "business_client_attestation": "The business client attested for its caller",
}
# The approval form's choice for "I could not verify them" (with Reject); approving with it erases nothing.
NOT_VERIFIED = "not_verified"
# Task ids the branch chooses between (kept in step with dags/dsr_erasure.py).
APPROVAL_TASK = "approve_erasure"
PRE_APPROVED_TASK = "already_approved"


def _fail(message: str) -> NoReturn:
    """Fail the task without retrying: retrying cannot change a refused or invalid request."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _now() -> datetime:
    return datetime.now(UTC)


def _gov() -> str:
    return conninfo_for(GOVERNANCE_CONN_ID)


def _lineage(record: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Report a dataset to lineage; never fail a task over it."""
    try:
        record(*args, **kwargs)
    except Exception:  # lineage is best effort here; the ledger listener reconciles
        log.debug("lineage not recorded", exc_info=True)


def _governance_lineage(*, read: tuple[str, ...] = (), written: tuple[str, ...] = ()) -> None:
    """Name the governance tables a task read and wrote (best effort, as every lineage record)."""

    _lineage(record_governance_tables, GOVERNANCE_CONN_ID, read=read, written=written)


def _object_client(datamap: Any) -> Callable[[str], Any]:
    clients: dict[str, Any] = {}

    def client_for(system: str) -> Any:
        if system not in clients:
            clients[system] = s3_client(datamap.system(system).connection_id)
        return clients[system]

    return client_for


def _processor_client(datamap: Any) -> Callable[[str], Any]:
    def client_for(name: str) -> Any:
        processor = datamap.processor(name)
        if processor is None:
            raise LookupError(f"processor {name} is not in the data map any more")
        return processor_connector(processor)

    return client_for


# --------------------------------------------------------------------------------------------
# 1. The request


def open_erasure_request(conf: Mapping[str, Any], *, run_id: str, received_at: datetime) -> dict[str, Any]:
    """Validate the run configuration and return the request handle (ids only)."""

    try:
        handle = open_request(conf, kind="erasure", run_id=run_id, received_at=received_at)
    except InvalidRunConfiguration as exc:
        _fail(f"cannot start this erasure: {exc}. Nothing was read or changed.")

    _lineage(record_request_opened, GOVERNANCE_CONN_ID, conf)
    log.info("erasure request %s (%s; identities: %s; business scope: %s)", handle.request_id, handle.source,
             ",".join(handle.identity_kinds), handle.business_id)  # fmt: skip
    return handle.to_xcom()


def open_offboarding_request(conf: Mapping[str, Any], *, run_id: str, received_at: datetime) -> dict[str, Any]:
    """Validate the offboarding form (business id, reason) and return the handle of the
    business's open offboarding request (a re-run continues it) or of one recorded for this run."""

    try:
        business_id, reason = parse_offboarding_form(conf)
    except InvalidOffboarding as exc:
        _fail(f"cannot start this offboarding: {exc}. Nothing was read or changed.")
    if not business_exists(load_datamap(), business_id, system_conninfo=conninfo_for):
        _fail(f"cannot start this offboarding: there is no business client {business_id}. Nothing was changed.")
    gov = _gov()
    migrate(gov)
    with connect(gov) as conn:
        request_id, status = open_offboarding(conn, business_id=business_id, reason=reason, run_id=run_id,
                                              received_at=received_at)  # fmt: skip
    log.info("offboarding request %s (business %s, %s)", request_id, business_id, status)
    handle = RequestHandle(request_id=request_id, kind=OFFBOARDING, business_id=business_id, identity_kinds=(),
                           verified=status == "verified", source="trigger_form", status=status)  # fmt: skip
    return handle.to_xcom()


def _is_offboarding(work: Any) -> bool:
    """A business client's offboarding: a plan rooted at a business, not at a person's identities."""
    return not work.identity_kinds and work.business_id is not None


def request_approval_state(conn: Any, request_id: str) -> tuple[bool, bool]:
    """(verified, approved) as recorded on the request (at intake or by an earlier approval)."""
    row = conn.execute(
        "SELECT verified_at IS NOT NULL, (approved_at IS NOT NULL OR approved_by IS NOT NULL)"
        " FROM governance.privacy_requests WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


# --------------------------------------------------------------------------------------------
# 2. The plan

# A table whose rows of the person are more than this many keeps their keys in its own database
# (when the map lets it: governance.datamap.plans.stores_keys), not in the stored plan.
INLINE_KEYS = 10_000


def compute_work(
    datamap: Any,
    identities: Any,
    *,
    request_id: str,
    plan_id: str,
    business_id: int | None,
    as_of: datetime,
    override: bool,
    governance_conninfo: str,
    system_conninfo: Callable[[str], str],
    processor_client: Callable[[str], Any] | None,
    hasher: Any,
    object_client: Callable[[str], Any] | None = None,
    item_client: Callable[[str], Any] | None = None,
) -> Any:
    """Resolve, apply holds and legal exceptions, run the guard, list the objects actually stored
    (``object_client``: system -> S3 client; default from the map's connections) and Query the
    person's DynamoDB items (``item_client``: system -> DynamoDB client): the :class:`ErasureWork`."""
    import psycopg


    kinds = [kind for kind, _ in identities.items()]
    plan = build_resolution_plan(datamap, kinds, business_scope=business_id is not None)
    erasure_plan = build_erasure_plan(datamap, plan)
    share, min_rows = guard_limits()
    # A heavy leaf table's keys stay in its own database, under the plan id (governance.erasure.keys).
    stored = key_tables(datamap, plan)
    ensure_key_tables(datamap, stored, system_conninfo)
    # One REPEATABLE READ snapshot per database; keys found in one drive resolution in the next. Read-write:
    # the snapshot stores the heavy tables' keys (committed with the plan's resolution, nothing else changes).
    with system_snapshots(datamap, plan_systems(plan), system_conninfo, read_only=False,
                          application_name="governance-erasure-plan") as dbs:  # fmt: skip
        resolution = resolve_subject(
            dbs, datamap, plan, MatchByIdentity(identities), as_of=as_of,
            scope_ids=[business_id] if business_id is not None else None,
            key_store=KeyStore(plan_id, stored, inline_rows=INLINE_KEYS),
        )  # fmt: skip
        with psycopg.connect(governance_conninfo) as gov:
            holds = load_active_holds(gov, as_of=as_of, subject_hashes=subject_hashes(hasher, identities.items()))
            # Export bundles of the person's access requests (of this business, when scoped).
            request_ids = request_ids_for_subject(gov, identities, hasher=hasher)
            rows = gov.execute(
                "SELECT request_id FROM governance.privacy_requests WHERE request_id = ANY(%s) AND kind = 'export'"
                " AND (%s::bigint IS NULL OR business_id = %s)",
                (request_ids, business_id, business_id),
            ).fetchall()
            request_ids = sorted(r[0] for r in rows)
        folders = {step.prefix: step.prefixes_for(request_ids) for step in plan.request_objects}
        records: dict[str, list[str]] | None = None
        if business_id is None and processor_client is not None:
            records = {}
            for step in plan.processors:
                client = processor_client(step.processor)
                try:
                    records[step.processor] = [r.record_id for r in client.lookup(identities)]
                finally:
                    close = getattr(client, "close", None)
                    if close is not None:
                        close()
        work = build_work(
            datamap, erasure_plan, resolution, holds, plan_id=plan_id, request_id=request_id, as_of=as_of,
            business_id=business_id, buckets={s.name: s.bucket.resolve() for s in datamap.object_systems},
            request_folders=folders, processor_records=records,
        )  # fmt: skip
        plan_items(datamap, work, identities, held_businesses=sorted(holds.businesses),
                   client_for=item_client or item_client_for(datamap))  # fmt: skip
        sizes = {}
        item_tables = {i.where: i.table_name for i in work.items}
        for table, needed in needed_sizes(work, share).items():
            sys_name, _, name = table.partition(".")
            if table in item_tables:  # a DynamoDB table: its reported item count
                sizes[table] = item_table_size((item_client or item_client_for(datamap))(sys_name), item_tables[table])
                continue
            sizes[table] = table_size_at_least(dbs[sys_name], datamap, TableRef(sys_name, name), needed)
        for conn in dbs.values():
            conn.commit()  # the stored keys (the snapshot changed nothing else)
    work.guard = evaluate_guard(work, sizes, max_table_share=share, min_rows=min_rows, override=override)
    inventory_objects(work, client_for=object_client or _object_client(datamap))
    return work


def plan_erasure(
    handle: Mapping[str, Any], *, dry_run: bool, override: bool, dag_id: str, run_id: str, as_of: datetime
) -> dict[str, Any]:
    """Persist the plan for the request (or pick up the one being carried out) and return its
    summary: counts per table and effect, what is kept and why, the guard's verdict."""

    request = RequestHandle.from_xcom(handle)
    gov = _gov()
    ensure_schema(gov)
    if not dry_run:
        with connect(gov) as conn:
            existing = store.continuable_plan(conn, request.request_id)
            if existing is not None:  # carry on with the plan already approved or under way
                store.record_progress(conn, existing["plan_id"], f"run:{run_id}", affected=0, at=_now())
                summary = dict(existing["summary"])
                before = store.latest_dry_run_summary(conn, request.request_id, other_than=existing["plan_id"])
                log.info("erasure %s: continuing plan %s (%s) from an earlier run", request.request_id,
                         existing["plan_id"], existing["status"])  # fmt: skip
                return {**summary, "status": existing["status"], "dry_run": False, "continued": True,
                        "approval_markdown": erasure_plan_text(summary, dry_run=False, dry_run_summary=before)}  # fmt: skip
    datamap = load_datamap()
    hasher = hasher_from_airflow()
    plan_id = store.plan_id_for(request.request_id, run_id)
    offboarding = request.kind == OFFBOARDING
    people: list[Any] = []
    if offboarding:
        lock = business_lock(gov, int(request.business_id or 0))
    else:
        identities = load_identities(request.request_id, conninfo=gov)
        lock = subject_lock(gov, hasher, identities)
    with lock:
        try:
            if offboarding:
                work, people = compute_business_work(
                    datamap, business_id=int(request.business_id or 0), request_id=request.request_id, plan_id=plan_id,
                    as_of=as_of, override=override, governance_conninfo=gov, system_conninfo=conninfo_for,
                    processor_client=_processor_client(datamap), hasher=hasher,
                )  # fmt: skip
            else:
                work = compute_work(
                    datamap, identities, request_id=request.request_id, plan_id=plan_id, business_id=request.business_id,
                    as_of=as_of, override=override, governance_conninfo=gov, system_conninfo=conninfo_for,
                    processor_client=_processor_client(datamap), hasher=hasher,
                )  # fmt: skip
        except Exception as exc:
            cause = planning_failure(exc)
            with connect(gov) as conn:  # the request says why, for close_request and the page
                conn.execute("UPDATE governance.privacy_requests SET outcome_detail = %s, updated_at = %s"
                             " WHERE request_id = %s", (cause, _now(), request.request_id))  # fmt: skip
            log.error("erasure %s: %s", request.request_id, cause)
            raise
        with connect(gov) as conn:
            verified, approved = request_approval_state(conn, request.request_id)
            if work.guard.refused:
                status = "refused"
            elif not dry_run and verified and approved:
                status = "approved"
            else:
                status = "planned"
            refusal = refusal_message(work.guard) if work.guard.refused else None
            store.save_plan(conn, work, status=status, dag_id=dag_id, dag_run_id=run_id, dry_run=dry_run, as_of=as_of,
                            override=override, refusal=refusal, at=_now())  # fmt: skip
            store.supersede_planned(conn, request.request_id, keep=plan_id, at=_now())
            if offboarding and not dry_run and not work.guard.refused:  # for the processors, after the rows are gone
                store_people(conn, request.request_id, people, cipher=cipher_from_airflow())
            before = None if dry_run else store.latest_dry_run_summary(conn, request.request_id, other_than=plan_id)

    for system_name, table in sorted({(s.system, s.table) for s in work.database}):
        system = datamap.postgres_system(system_name)
        _lineage(record_table_read, system.connection_id, system.db_schema, table)
    _governance_lineage(read=("privacy_requests",), written=("erasure_plans",))
    summary = work.summary()
    log.info("erasure plan %s for %s: %s; objects %s; processors %s; kept %s", plan_id, request.request_id,
             work.table_counts(), summary["objects"], summary["processors"],
             [(k["where"], k["count"], k["reason"]) for k in summary["kept"]])  # fmt: skip
    text = erasure_plan_text(summary, dry_run=dry_run, dry_run_summary=before, datamap=datamap)
    log.info("the plan%s:\n%s", " (dry run: nothing changes)" if dry_run else "", text)
    if work.guard.refused:
        _fail(refusal or "refused")
    return {**summary, "status": status, "dry_run": dry_run, "continued": False, "needs_approval": status == "planned",
            "approval_markdown": text}  # fmt: skip


PLANNING_FAILED = "planning failed: "


def planning_failure(exc: BaseException) -> str:
    """What stopped the plan, naming the system and the cause, without any value of a row: the
    processors' and the object store's errors name the system and a status; database errors are
    given by class and SQLSTATE only (their details can quote values)."""
    import psycopg


    if isinstance(exc, ProcessorUnavailable | ProcessorRejected):
        return f"{PLANNING_FAILED}a processor did not answer as expected: {exc}"
    if isinstance(exc, ObjectStoreUnavailable):
        return f"{PLANNING_FAILED}{exc}"
    if isinstance(exc, psycopg.Error):
        return f"{PLANNING_FAILED}a database error: {type(exc).__name__} (SQLSTATE {getattr(exc, 'sqlstate', None) or '?'})"
    return f"{PLANNING_FAILED}{type(exc).__name__} (see plan_erasure's log)"


def choose_path(summary: Mapping[str, Any]) -> list[str]:
    """Which task comes next: none (dry run), the approval in the UI, or straight on."""
    if summary.get("dry_run"):
        log.info("dry run: plan %s computed and stored; nothing changes", summary.get("plan_id"))
        return []
    if summary.get("status") == "planned":
        return [APPROVAL_TASK]
    return [PRE_APPROVED_TASK]


# --------------------------------------------------------------------------------------------
# 4. Carrying it out


def _approved(payload: Mapping[str, Any] | None) -> bool:
    return bool(payload) and APPROVE in list((payload or {}).get("chosen_options") or [])


def record_approval(
    request_id: str, plan_id: str, payload: Mapping[str, Any], *, at: datetime, triggered_by: str | None = None
) -> None:
    """Record the UI approval: the request verified (how, by whom) and approved, the plan approved.

    Four eyes: the approver may be neither the user who recorded the request on the Privacy
    requests page nor the user who triggered this run (``triggered_by``, Airflow's triggering
    user), wherever the approval was given."""

    params = dict(payload.get("params_input") or {})
    method = str(params.get("verification_method") or "").strip()
    if method == NOT_VERIFIED:
        _fail("the plan was approved, but the identity is marked not verified: nothing was changed. Verify the "
              "person, then clear this task and answer again (or Reject)")  # fmt: skip
    user = payload.get("responded_by_user") or {}
    approver = str(user.get("name") or user.get("id") or "unknown") if isinstance(user, Mapping) else str(user)
    refusal = approver_refusal(user)  # [governance] approvers, when configured
    if refusal:
        _fail(refusal)
    gov = _gov()
    with connect(gov) as conn:
        kind = conn.execute("SELECT kind FROM governance.privacy_requests WHERE request_id = %s", (request_id,)).fetchone()
    if kind is not None and kind[0] == OFFBOARDING:
        if method not in BUSINESS_METHODS:
            _fail("the approval does not say how the business client's departure was confirmed: nothing was changed")
    elif method not in VERIFICATION_METHODS:
        _fail("the approval does not say how the person's identity was verified: nothing was changed")
    with connect(gov) as conn:  # four eyes, wherever the approval was given (page or Required actions)
        recorder = conn.execute(
            "SELECT actor FROM governance.request_actions WHERE request_id = %s AND action = 'recorded' LIMIT 1",
            (request_id,),
        ).fetchone()
    if recorder is not None and recorder[0] == approver:
        _fail(f"{approver} recorded this request and may not approve it too (four eyes): nothing was changed")
    if triggered_by and triggered_by == approver:
        _fail(f"{approver} triggered this erasure run and may not approve it too (four eyes): nothing was changed; "
              "someone else must approve it (clear approve_erasure to ask again)")  # fmt: skip
    mark_verified(request_id, method=method, verified_by=approver, at=at, conninfo=gov)
    mark_approved(request_id, approved_by=approver, at=at, conninfo=gov)
    with connect(gov) as conn:
        store.set_status(conn, plan_id, "approved", at=at, only_from=("planned",), approved_at=at, approved_by=approver)


def _load(plan_id: str) -> tuple[Any, dict[str, Any], Any]:
    with connect(_gov()) as conn:
        work, row = store.load_plan(conn, plan_id)
    return work, row, load_datamap()


def _recorder(plan_id: str) -> Callable[[str, int, dict[str, Any]], None]:
    def record(step: str, affected: int, detail: dict[str, Any]) -> None:
        with connect(_gov()) as conn:
            store.record_progress(conn, plan_id, step, affected=affected, detail=detail, at=_now())

    return record


def _progress(plan_id: str) -> dict[str, dict[str, Any]]:
    with connect(_gov()) as conn:
        return store.progress(conn, plan_id)


def _lock(work: Any) -> Any:
    """The lock erasures of the same subject take (a person's identities, or a business), and the
    person's identities (None for a business: see :func:`_people`)."""

    if _is_offboarding(work):
        return business_lock(_gov(), int(work.business_id)), None
    identities = load_identities(work.request_id, conninfo=_gov())
    return subject_lock(_gov(), hasher_from_airflow(), identities), identities


def _people(request_id: str) -> list[Any]:
    """The identities of an offboarded business's people, decrypted inside the task."""

    with connect(_gov()) as conn:
        return load_people(conn, request_id, cipher=cipher_from_airflow())


def execute_database(
    summary: Mapping[str, Any], *, approval: Mapping[str, Any] | None, run_id: str, triggered_by: str | None = None
) -> dict[str, Any]:
    """Every database step of the plan, one transaction per database (done steps skipped)."""

    plan_id = str(summary["plan_id"])
    work, row, datamap = _load(plan_id)
    if row["dry_run"]:
        _fail(f"plan {plan_id} is a dry run: nothing is executed")
    try:  # the statements approved are the statements run: a changed data map stops here
        approved_statements(datamap, work)
    except PlanOutdated as exc:
        _fail(str(exc))
    if row["status"] == "planned":
        if not _approved(approval):
            _fail(f"plan {plan_id} was not approved: nothing was changed")
        record_approval(work.request_id, plan_id, approval or {}, at=_now(), triggered_by=triggered_by)
    elif row["status"] not in ("approved", "executing", "executed", "verified", "verification_failed"):
        _fail(f"plan {plan_id} is {row['status']}: nothing to execute")
    gov = _gov()
    lock, _identities = _lock(work)
    hasher = hasher_from_airflow()
    with lock:  # a holder inside a step finishes it first; then one live run holds the request
        try:
            claim_erasure(work.request_id, dag_run_id=run_id, at=_now(), conninfo=gov)
        except ClaimRefused as exc:
            _fail(str(exc))
        with connect(gov) as conn:
            store.set_status(conn, plan_id, "executing", at=_now(), only_from=("approved",))
        try:
            results = execute_database_work(
                datamap, work, governance_conninfo=gov, system_conninfo=conninfo_for, at=_now,
                keyed_hash_pads=keyed_hash_params(hasher.keyring.active_key),
            )  # fmt: skip
        except StoredKeysLost as exc:
            # A plan being carried out is continued by the request's every later run: set it aside,
            # or each would fail the same way. The request's approval was of this plan: it is
            # withdrawn, so the new plan the next run makes waits for an approval of its own (the
            # first approval stays in the request's record of actions).
            with connect(gov) as conn:
                store.set_status(conn, plan_id, "refused", at=_now(), only_from=("approved", "executing"),
                                 refusal=f"stored keys lost: {exc}")  # fmt: skip
                conn.execute("UPDATE governance.privacy_requests SET approved_at = NULL, approved_by = NULL,"
                             " updated_at = %s WHERE request_id = %s", (_now(), work.request_id))  # fmt: skip
            _fail(f"{exc}. Plan {plan_id} is set aside (refused); nothing of that database was changed. Run the "
                  "erasure again for this request: a new plan is made from the data as it is now and waits for "
                  "approval.")  # fmt: skip
    rows: dict[str, int] = {}
    for step in work.database:
        for system_result in results.values():
            if step.step_id in system_result["rows"]:
                rows[f"{step.system}.{step.table}"] = rows.get(f"{step.system}.{step.table}", 0) + int(system_result["rows"][step.step_id])

    for table, count in rows.items():
        system_name, _, name = table.partition(".")
        system = datamap.postgres_system(system_name)
        _lineage(record_table_write, system.connection_id, system.db_schema, name, rows=count)
    skipped = [name for name, r in results.items() if r["skipped"]]
    log.info("erasure %s: database steps done (%s); rows per table: %s", plan_id,
             "continued: " + ",".join(skipped) + " done before" if skipped else "all run now", rows)  # fmt: skip
    return {"plan_id": plan_id, "rows": rows, "done_before": skipped}


def delete_objects(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every planned object, all versions; the person's export folders; then the person's
    DynamoDB items (the stores outside the databases' transactions)."""

    plan_id = str(summary["plan_id"])
    work, _row, datamap = _load(plan_id)
    done = _progress(plan_id)
    lock, _identities = _lock(work)

    client_for = _object_client(datamap)
    with lock:
        try:
            deleted = delete_planned_objects(work, client_for=client_for, done=done, on_step=_recorder(plan_id))
        except Exception as exc:
            unavailable = not_answering(exc, client_for(work.objects[0].system)) if work.objects else None
            if unavailable is not None:
                log.error("erasure %s: %s", plan_id, unavailable)
                raise unavailable from exc
            raise
        items = delete_items(work, datamap, identities=_identities, done=done)

    for item in work.objects:
        if deleted.get(item.step_id):
            prefix = datamap.prefix(PrefixRef(item.system, item.prefix))
            _lineage(record_object_write, item.bucket, prefix.static_prefix, objects=deleted[item.step_id])
    counts = {item.step_id.split(":", 1)[1]: deleted.get(item.step_id, done.get(item.step_id, {}).get("affected", 0)) for item in work.objects}
    log.info("erasure %s: objects deleted with every version: %s", plan_id, counts)
    return {"plan_id": plan_id, "objects": counts, "items": items}


def delete_items(work: Any, datamap: Any, *, identities: Any, done: Mapping[str, Any],
                 item_client: Callable[[str], Any] | None = None) -> dict[str, int]:  # fmt: skip
    """The person's (or business's) DynamoDB items, found again by the plan's Queries and deleted
    in batches; one progress step per table. Returns items deleted per table."""

    if not work.items:
        return {}
    client_for = item_client or item_client_for(datamap)
    deleted = delete_planned_items(datamap, work, identities, client_for=client_for, done=done,
                                   on_step=_recorder(work.plan_id))  # fmt: skip
    progress = _progress(work.plan_id)
    counts: dict[str, int] = {}
    for item in work.items:
        counts[item.where] = int(deleted.get(item.step_id, progress.get(item.step_id, {}).get("affected", 0)))
        if item.step_id in deleted:
            region = str(progress.get(item.step_id, {}).get("detail", {}).get("region") or "us-east-1")
            _lineage(record_item_write, region, item.table_name, items=deleted[item.step_id])
    log.info("erasure %s: DynamoDB items deleted: %s", work.plan_id, counts)
    return counts


def erase_processors(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The processors' erase calls for every planned record; then the plan is executed."""

    plan_id = str(summary["plan_id"])
    work, _row, datamap = _load(plan_id)
    done = _progress(plan_id)
    lock, _identities = _lock(work)
    with lock:
        outcome = erase_processor_records(work, client_for=_processor_client(datamap), done=done,
                                          on_step=_recorder(plan_id))  # fmt: skip
    done = _progress(plan_id)
    expected = {f"db:{s}" for s in work.systems} | {o.step_id for o in work.objects}
    expected |= {f"processor:{p.processor}:{r}" for p in work.processors for r in p.record_ids}
    expected |= {i.step_id for i in work.items}
    missing = sorted(expected - set(done))
    if missing:
        _fail(f"plan {plan_id}: {len(missing)} step(s) not done ({', '.join(m.split(':', 2)[0] + ':' + m.split(':', 2)[1] for m in missing[:5])})")
    with connect(_gov()) as conn:
        store.set_status(conn, plan_id, "executed", at=_now(), only_from=("executing",), executed_at=_now())
    log.info("erasure %s: processor records: %s", plan_id, outcome)
    return {"plan_id": plan_id, "processors": outcome}


# --------------------------------------------------------------------------------------------
# 5-7. Verification, suppression, certificate, outcome


def verify_erasure(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve again everywhere and check with Great Expectations; fail naming the residue."""

    plan_id = str(summary["plan_id"])
    work, row, datamap = _load(plan_id)
    if row["status"] not in ("executed", "verified", "verification_failed"):
        _fail(f"plan {plan_id} is {row['status']}: verify after it was carried out")
    lock, identities = _lock(work)
    with lock:
        result = verify(
            datamap, work, identities, system_conninfo=conninfo_for, object_client=_object_client(datamap),
            processor_client=_processor_client(datamap), as_of=datetime.fromisoformat(work.as_of),
            people=_people(work.request_id) if _is_offboarding(work) else None,
        )  # fmt: skip

    with connect(_gov()) as conn:
        store.set_status(conn, plan_id, "verified" if result.passed else "verification_failed", at=_now(),
                         verified_at=_now(), verification=result.to_json())  # fmt: skip
    log.info("erasure %s: verification %s (%d checks%s)", plan_id, "passed" if result.passed else "FAILED",
             len(result.checks), "; residue: " + "; ".join(result.residue) if result.residue else "")  # fmt: skip
    if not result.passed:
        _fail(residue_message(result))
    return {"plan_id": plan_id, "passed": True, "checks": len(result.checks)}


def record_suppression(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Put the person's keyed hashes on the suppression list with the erasure time."""

    plan_id = str(summary["plan_id"])
    work, _row, _datamap = _load(plan_id)
    if work.person_held:
        log.info("erasure %s: the person is under a legal hold; nothing erased, nothing suppressed", plan_id)
        return {"plan_id": plan_id, "recorded": 0}
    done = _progress(plan_id)
    markers = [done[f"db:{s}"]["completed_at"] for s in work.systems if f"db:{s}" in done]
    if len(markers) != len(work.systems):
        _fail(f"plan {plan_id}: the database steps are not done; nothing to record")
    erased_at = max(markers) if markers else _now()
    # A business's people are suppressed for that business: a restore re-erases what it held of them.
    people = _people(work.request_id) if _is_offboarding(work) else [load_identities(work.request_id, conninfo=_gov())]
    count = 0
    with connect(_gov()) as conn:
        for identities in people:
            count += record(conn, request_id=work.request_id, identities=identities, hasher=hasher_from_airflow(),
                            business_id=work.business_id, erased_at=erased_at, at=_now())  # fmt: skip
    _governance_lineage(read=("erasure_plans", "erasure_progress", "privacy_requests"), written=("suppression_list",))
    log.info("erasure %s: %d identities on the suppression list", plan_id, count)
    return {"plan_id": plan_id, "recorded": count}


def issue_certificate(handle: Mapping[str, Any] | None, *, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The certificate of the plan this run carried out (None when nothing was carried out)."""

    if not handle:
        return None
    request_id = str(handle["request_id"])
    gov = _gov()
    if held_by_another_run(request_id, dag_run_id=run_id, at=_now(), conninfo=gov):
        log.info("erasure %s: another run carries the request out; its certificate is its own", request_id)
        return None
    with connect(gov) as conn:
        row = store.latest_plan_for_run(conn, request_id, run_id)
        if row is None or row["dry_run"] or row["status"] in ("planned", "refused", "superseded", "approved"):
            log.info("erasure %s: nothing was carried out in this run; no certificate", request_id)
            return None
        work = ErasureWork.from_json(row["plan"])
        progress = store.progress(conn, row["plan_id"])
        method = conn.execute(
            "SELECT verification_method FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
        hasher = hasher_from_airflow()
        offboarding = _is_offboarding(work)
        identities = [] if offboarding else load_identities(request_id, conninfo=gov).items()
        hashes = [(kind, hasher.key_id, hasher.hash(kind, value)) for kind, value in identities]
        certificate = build_certificate(
            work, plan_row=row, progress=progress, verification=row["verification"], subject_hashes=hashes,
            ledger=ledger_position(conn, dag_id, run_id), issued_at=_now(),
            approval={"approved_at": row["approved_at"].isoformat() if row["approved_at"] else None,
                      "approved_by": row["approved_by"], "verification_method": method[0] if method else None},
        )  # fmt: skip
        if offboarding:  # the subject is the business: its id, why, and how many people, never who
            reason = conn.execute("SELECT reason FROM governance.privacy_requests WHERE request_id = %s",
                                  (request_id,)).fetchone()  # fmt: skip
            people = conn.execute("SELECT count(*) FROM governance.offboarding_people WHERE request_id = %s",
                                  (request_id,)).fetchone()  # fmt: skip
            certificate["policy"] = OFFBOARDING_POLICY
            certificate["offboarding"] = {"business_id": work.business_id, "reason": reason[0] if reason else None,
                                          "people": int(people[0]) if people else 0}  # fmt: skip
        datamap = load_datamap()
        systems = datamap.object_systems
        s3 = _object_client(datamap)(systems[0].name) if systems else None
        bucket = systems[0].bucket.resolve() if systems else None
        uris = store_certificate(conn, certificate, s3=s3, bucket=bucket)

    _governance_lineage(read=("erasure_plans", "erasure_progress", "privacy_requests"), written=("erasure_certificates",))
    if s3 is not None and bucket:
        _lineage(record_object_write, bucket, CERTIFICATE_PREFIX, objects=2)
    log.info("erasure %s: certificate %s (verification %s)", request_id, uris["json_uri"],
             "passed" if certificate["verification"].get("passed") else "not passed")  # fmt: skip
    return {"plan_id": row["plan_id"], "outcome": certificate["outcome"],
            "verification_passed": bool(certificate["verification"].get("passed")), **uris}  # fmt: skip


def _forget_keys(request_id: str, run_id: str, finished: list[str]) -> None:
    """Remove the keys stored for the request's plans no run will act on any more, and for this
    run's plan if it was never saved (a planning task that failed after resolving); a failure here
    leaves keys (no personal data but ids) for the next close, it does not change the outcome."""
    plans = set(finished)
    with connect(_gov()) as conn:
        this_run = store.plan_id_for(request_id, run_id)
        saved = conn.execute("SELECT status FROM governance.erasure_plans WHERE plan_id = %s", (this_run,)).fetchone()
    if saved is None:
        plans.add(this_run)
    try:
        removed = forget_plan_keys(load_datamap(), plans, conninfo_for)
    except Exception as exc:
        log.warning("erasure %s: stored keys of finished plans not removed (%s); the next close retries",
                    request_id, type(exc).__name__)  # fmt: skip
        return
    if removed:
        log.info("erasure %s: removed %d stored keys of finished plans", request_id, removed)


def close_erasure_request(handle: Mapping[str, Any] | None, *, run_id: str) -> dict[str, Any]:
    """Set the request's outcome (the last task; runs after failures too)."""

    if not handle:
        return {"closed": False, "served": False, "detail": "no request: the run configuration was refused"}
    request_id = str(handle["request_id"])
    gov = _gov()
    holder = held_by_another_run(request_id, dag_run_id=run_id, at=_now(), conninfo=gov)
    if holder:  # a live run carries the request out: its outcome stands, this run's is not written
        return {"request_id": request_id, "status": "superseded", "served": False,
                "detail": f"run {holder} carries this request out; its outcome stands"}  # fmt: skip
    with connect(gov) as conn:
        row = store.latest_plan_for_run(conn, request_id, run_id)
        finished = [r[0] for r in conn.execute(
            "SELECT plan_id FROM governance.erasure_plans WHERE request_id = %s AND status <> ALL(%s)",
            (request_id, list(store.CONTINUABLE))).fetchall()]  # fmt: skip
        certificate = None
        if row is not None:
            certificate = conn.execute(
                "SELECT json_uri, verification_passed FROM governance.erasure_certificates WHERE plan_id = %s",
                (row["plan_id"],),
            ).fetchone()
    _forget_keys(request_id, run_id, finished)
    if row is not None and row["dry_run"]:
        log.info("erasure %s: dry run; the request stays open (trigger again with this request id)", request_id)
        return {"request_id": request_id, "outcome": "dry_run", "plan_id": row["plan_id"], "served": True}
    if row is not None and row["status"] == "verified" and certificate is not None and certificate[1]:
        with connect(gov) as conn:  # an offboarding's people are not kept once it is complete
            forget_people(conn, request_id)
        status = close_request(request_id, succeeded=True, at=_now(), result_uri=certificate[0],
                               detail=f"erased; plan {row['plan_id']}", conninfo=gov)  # fmt: skip
        return {"request_id": request_id, "status": status, "result_uri": certificate[0], "plan_id": row["plan_id"],
                "served": True}  # fmt: skip
    if row is None:
        with connect(gov) as conn:
            recorded = conn.execute("SELECT outcome_detail FROM governance.privacy_requests WHERE request_id = %s",
                                    (request_id,)).fetchone()  # fmt: skip
        recorded_detail = str(recorded[0]) if recorded and recorded[0] else ""
        if recorded_detail.startswith(PLANNING_FAILED):
            detail = f"failed before a plan was made: {recorded_detail[len(PLANNING_FAILED):]}"
        else:
            detail = "failed before a plan was made (see the run's task logs)"
    elif row["status"] == "refused":
        detail = str(row["refusal"] or "refused by the safety guard")
    elif row["status"] in ("planned", "approved"):
        detail = "not carried out: the plan was not approved, or the run stopped before executing it"
    elif row["status"] == "verification_failed":
        residue = (row["verification"] or {}).get("residue", [])
        detail = "verification found residue: " + "; ".join(residue) + "; re-run with this request id to erase it"
    else:
        detail = f"stopped while {row['status']}: re-run with this request id to continue where it stopped"
    if certificate is not None:
        detail += f" (certificate {certificate[0]})"
    status = close_request(request_id, succeeded=False, at=_now(), detail=detail, conninfo=gov)
    return {"request_id": request_id, "status": status, "detail": detail, "served": False}
