"""Carrying out an erasure plan: databases, object stores, processors, with per-step progress.

Databases: per table and effect the data map's statement (built by
:func:`governance.datamap.plans.build_erasure_plan`, checked against the one the approved plan
recorded: a changed map fails with :class:`PlanOutdated` before anything runs), keyed by the
resolved primary keys, run in bounded batches (``settings.erasure_batch_size`` keys each) or, for a
heavy leaf table whose keys the plan stored in its own database, as one statement joined to them
(after checking they are all there), children before parents, all the
steps of one database in one transaction. Statements are idempotent on their own (a deleted key
deletes nothing; a rewrite only touches rows not rewritten yet; a mention is cleared only where it
still points at the person), and each step is recorded in ``governance.erasure_progress`` (inside
the same transaction when the governance schema lives in that database), so a retry or a re-run
skips what is done and never fails on it.

Object stores: every version and delete marker of each planned key, and everything under the
person's export folders (:func:`governance.connectors.objects.delete_everywhere`).

Processors: the declared erase call per record id; ``absent`` (already gone) counts as done.

Database errors are re-raised without their parameters or row values (PostgreSQL's DETAIL can
quote a value): the SQLSTATE and the table name are enough to act on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from governance.connectors.objects import delete_everywhere, keys_under
from governance.datamap.model import DataMap
from governance.datamap.plans import (
    KEYS,
    PLAN_ID,
    REFERENCE_VALUES,
    ClientKeyedHash,
    Statement,
    build_erasure_plan,
    build_resolution_plan,
    keyed_hash_values_param,
)
from governance.erasure import store
from governance.erasure.planner import DatabaseStep, ErasureWork

log = logging.getLogger(__name__)

RETRYABLE_SQLSTATES = ("40P01", "40001", "55P03")  # deadlock, serialization failure, lock not available


class ErasureStepFailed(RuntimeError):
    """A step failed; the message names the step and the database error class, never a value."""


class StoredKeysLost(ErasureStepFailed):
    """The keys a plan stored in a database are not all there any more (an ``UNLOGGED`` key table
    emptied by a database crash, or removed): the plan cannot be carried out and must be made
    again."""


# SQLSTATE classes of a connection that went away (admin shutdown, crash, network): nothing of the
# open transaction was applied, and a new connection may well succeed.
_CONNECTION_LOST_STATES = ("57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost database connection rather than an error in the statement."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in _CONNECTION_LOST_STATES


class PlanOutdated(RuntimeError):
    """The data map no longer produces the statements the plan was approved with: nothing is
    run, the plan must be made (and approved) again."""


def approved_statements(datamap: DataMap, work: ErasureWork) -> dict[str, Statement]:
    """The statement of every database step of ``work``, built from ``datamap`` by the same plan
    builder that planned it, and checked against what the plan recorded (SQL and constants).

    Raises :class:`PlanOutdated` when any differs (the map changed between plan and execution):
    an approval is of the statements shown, so different ones never run."""
    resolution = build_resolution_plan(
        datamap, work.identity_kinds, business_scope=work.business_id is not None,
        matching="identity" if work.identity_kinds else "business",  # no identities: a business's offboarding
    )  # fmt: skip
    by_order = dict(enumerate(build_erasure_plan(datamap, resolution).statements, start=1))
    statements: dict[str, Statement] = {}
    changed: list[str] = []
    for step in work.database:
        current = by_order.get(step.order)
        statement = current.statement if current is not None else None
        if current is not None and step.key_set is not None:  # keyed by the keys stored for the plan
            statement = current.stored
            if current.key_table is not None:
                statements[stored_count_id(step)] = current.key_table.count()
        if (
            current is None or statement is None or current.table != step.ref or current.effect != step.effect
            or not step.statement_sha256 or statement.sha256 != step.statement_sha256
        ):  # fmt: skip
            changed.append(f"{step.system}.{step.table} {step.effect}")
            continue
        statements[step.step_id] = statement
    if changed:
        raise PlanOutdated(
            f"plan {work.plan_id} was made from data map {work.datamap_version} (sha256 {work.datamap_sha256[:12]}), "
            f"whose statements differ from what the current data map ({datamap.version}, sha256 "
            f"{datamap.version_hash[:12]}) builds for: {', '.join(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            + ". Nothing was changed: plan the erasure again and approve the new plan."
        )
    return statements


def stored_count_id(step: DatabaseStep) -> str:
    """Where :func:`approved_statements` puts the count of a stored-keys step's keys."""
    return f"{step.step_id}:stored_keys"


def _run_stored(cur: psycopg.Cursor[Any], statements: Mapping[str, Statement], step: DatabaseStep) -> int:
    """A step keyed by the keys its plan stored in this database: one set-based statement joined
    to them. When it changes fewer rows than planned, the stored keys are counted: if some are
    missing (an ``UNLOGGED`` key table is emptied by a crash) the step fails and the transaction is
    rolled back; if they are all there, the rest were gone already (idempotent)."""
    values = {PLAN_ID: step.key_set}
    statement = statements[step.step_id]
    # Without a hash join the planner joins the key table's (plan, key) index to the table's primary
    # key in key order (a merge), or looks few keys up by index: a hash join of a million keys spills
    # to disk and then deletes in random heap order, about twice as slow (benchmarks/erasure.py).
    previous = cur.execute("SELECT current_setting('enable_hashjoin')").fetchone()
    cur.execute("SELECT set_config('enable_hashjoin', 'off', true)")
    cur.execute(statement.query, statement.bind(values))
    affected = max(0, cur.rowcount)
    cur.execute("SELECT set_config('enable_hashjoin', %s, true)", (previous[0] if previous else "on",))
    if affected != step.stored_rows:
        count = statements[stored_count_id(step)]
        row = cur.execute(count.query, count.bind(values)).fetchone()
        found = int(row[0]) if row else 0
        if found != step.stored_rows:
            raise StoredKeysLost(
                f"{step.step_id}: the plan stored {step.stored_rows} keys in its database and {found} are there "
                "(lost with a database crash, or removed); the transaction is rolled back: plan the erasure again"
            )
    return affected


def step_params(step: DatabaseStep) -> dict[str, Any]:
    """The run-time values of one step (``keys`` is bound per batch)."""
    return {REFERENCE_VALUES: list(step.reference_values)}


def keyed_hash_digests(cur: psycopg.Cursor[Any], statement: Statement, values: Mapping[str, Any],
                       digest: ClientKeyedHash) -> dict[str, str]:  # fmt: skip
    """For a rewrite to keyed hashes: lock and read the batch's values still to rewrite, hash them
    here, and return ``kh_values_<field>`` parameters (``{primary key as text: digest}`` as JSON).
    Only digests are bound; the key stays in this process."""
    assert statement.keyed_hash_inputs is not None
    inputs = statement.keyed_hash_inputs
    by_field: dict[str, dict[str, str]] = {name: {} for name in statement.keyed_hash_fields}
    for row in cur.execute(inputs.query, inputs.bind(values)).fetchall():
        for name, value in zip(statement.keyed_hash_fields, row[1:], strict=True):
            if value is not None:
                by_field[name][str(row[0])] = digest(value)
    return {keyed_hash_values_param(name): json.dumps(found) for name, found in by_field.items()}


def _batches(keys: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size])


def run_database_steps(
    conn: psycopg.Connection[Any],
    statements: Mapping[str, Statement],
    steps: Sequence[DatabaseStep],
    *,
    batch_size: int,
    keyed_hash_pads: Mapping[str, bytes] | None = None,
    done: Iterable[str] = (),
) -> dict[str, int]:
    """Run ``steps`` (in order) on ``conn`` inside the caller's transaction, each with its
    approved statement (see :func:`approved_statements`); return rows affected per step id.
    Steps in ``done`` are skipped. ``keyed_hash_pads`` (:func:`keyed_hash_params`) hash values of
    rewrites to keyed hashes here, in this process: they are never bound to a statement."""
    finished = set(done)
    digest = ClientKeyedHash(keyed_hash_pads) if keyed_hash_pads is not None else None
    affected: dict[str, int] = {}
    with conn.cursor() as cur:
        for step in steps:
            if step.step_id in finished:
                continue
            count = 0
            if step.key_set is not None and step.stored_rows:
                try:
                    count = _run_stored(cur, statements, step)
                except psycopg.Error as exc:
                    state = getattr(exc, "sqlstate", None) or "?"
                    if state in RETRYABLE_SQLSTATES or connection_lost(exc):
                        raise
                    raise ErasureStepFailed(f"{step.step_id} failed: {type(exc).__name__} (SQLSTATE {state})") from None
            elif step.keys:
                statement = statements[step.step_id]
                values = step_params(step)
                if statement.keyed_hash_inputs is not None and digest is None:
                    raise ValueError(f"{step.step_id} rewrites a field with a keyed hash: pass keyed_hash_pads")
                for batch in _batches(step.keys, batch_size):
                    try:
                        batch_values = {**values, KEYS: batch}
                        if digest is not None and statement.keyed_hash_inputs is not None:
                            batch_values.update(keyed_hash_digests(cur, statement, batch_values, digest))
                        cur.execute(statement.query, statement.bind(batch_values))
                    except psycopg.Error as exc:
                        state = getattr(exc, "sqlstate", None) or "?"
                        if state in RETRYABLE_SQLSTATES or connection_lost(exc):
                            raise
                        raise ErasureStepFailed(
                            f"{step.step_id} failed: {type(exc).__name__} (SQLSTATE {state})"
                        ) from None
                    count += max(0, cur.rowcount)
            affected[step.step_id] = count
    return affected


def _same_database(a: str, b: str) -> bool:
    return a == b


def execute_database_work(
    datamap: DataMap,
    work: ErasureWork,
    *,
    governance_conninfo: str,
    system_conninfo: Callable[[str], str],
    at: Callable[[], datetime],
    keyed_hash_pads: Mapping[str, bytes] | None = None,
    attempts: int = 3,
) -> dict[str, dict[str, Any]]:
    """Every database of the plan, one transaction each, progress recorded; returns, per system,
    ``{"rows": {step id: affected}, "skipped": bool}`` (a system done before is skipped)."""
    statements = approved_statements(datamap, work)  # before anything changes
    with psycopg.connect(governance_conninfo) as gov:
        done = store.progress(gov, work.plan_id)
    results: dict[str, dict[str, Any]] = {}
    for system_name in work.systems:
        marker = f"db:{system_name}"
        if marker in done:
            results[system_name] = {"rows": dict(done[marker]["detail"].get("rows", {})), "skipped": True}
            continue
        system = datamap.postgres_system(system_name)
        conninfo = system_conninfo(system.connection_id)
        same = _same_database(conninfo, governance_conninfo)
        steps = work.steps_of(system_name)
        for attempt in range(1, attempts + 1):
            try:
                rows = _run_system(datamap, work, statements, steps, conninfo, governance_conninfo, same=same,
                                   done=done, at=at, keyed_hash_pads=keyed_hash_pads, marker=marker)  # fmt: skip
                break
            except psycopg.Error as exc:
                state = getattr(exc, "sqlstate", None) or "?"
                lost = connection_lost(exc)
                if lost and attempt == attempts:
                    # A lost connection quotes no data: its cause stays chained for the operator.
                    raise ErasureStepFailed(
                        f"erasure in {system_name}: the database connection was lost ({type(exc).__name__}, "
                        f"SQLSTATE {state}) {attempts} time(s); each transaction was rolled back, so nothing of "
                        "this step was applied; the task will retry"
                    ) from exc
                if not (lost or state in RETRYABLE_SQLSTATES) or attempt == attempts:
                    # Statement errors can quote row values (constraint details): class and SQLSTATE only.
                    raise ErasureStepFailed(
                        f"erasure in {system_name} failed: {type(exc).__name__} (SQLSTATE {state}); the "
                        "transaction was rolled back, nothing of this step was applied"
                    ) from None
                what = "the connection was lost" if lost else f"{type(exc).__name__} (SQLSTATE {state})"
                log.warning("erasure in %s: %s; the transaction was rolled back, retrying in %.1f s", system_name,
                            what, 0.5 * attempt)  # fmt: skip
                time.sleep(0.5 * attempt)
        results[system_name] = {"rows": rows, "skipped": False}
    return results


def _run_system(
    datamap: DataMap,
    work: ErasureWork,
    statements: Mapping[str, Statement],
    steps: Sequence[DatabaseStep],
    conninfo: str,
    governance_conninfo: str,
    *,
    same: bool,
    done: Mapping[str, Any],
    at: Callable[[], datetime],
    keyed_hash_pads: Mapping[str, bytes] | None,
    marker: str,
) -> dict[str, int]:
    # The lock wait is bounded by the connection's own lock_timeout (GOVERNANCE_PG_LOCK_TIMEOUT_S,
    # set by the connection options of governance.db): no fixed value here overrides it.
    with psycopg.connect(conninfo, application_name="governance-erasure") as conn:
        rows = run_database_steps(
            conn, statements, steps, batch_size=datamap.settings.erasure_batch_size, keyed_hash_pads=keyed_hash_pads,
            done=done if same else (),
        )  # fmt: skip
        previous = {s.step_id: int(done[s.step_id]["affected"]) for s in steps if same and s.step_id in done}
        all_rows = {**previous, **rows}
        records: dict[str, tuple[int, Mapping[str, Any]]] = {
            s.step_id: (all_rows.get(s.step_id, 0), {"table": f"{s.system}.{s.table}", "effect": s.effect}) for s in steps
        }
        records[marker] = (sum(all_rows.values()), {"rows": all_rows})
        if same:  # progress commits with the erasure itself: exactly once
            store.record_progress_many(conn, work.plan_id, records, at=at())
    if not same:
        with psycopg.connect(governance_conninfo) as gov:
            store.record_progress_many(gov, work.plan_id, records, at=at())
    return all_rows


# --------------------------------------------------------------------------------------------
# Objects


def keys_with_versions_under(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` that has a current object, an old version or a delete marker."""
    keys: set[str] = set()
    try:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(v["Key"] for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])])
    except Exception:  # a server without versioning support: current objects only
        keys.update(keys_under(client, bucket, prefix))
    return sorted(keys)


def delete_planned_objects(
    work: ErasureWork,
    *,
    client_for: Callable[[str], Any],
    done: Iterable[str] = (),
    on_step: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Delete every planned object (all versions) and the person's export folders; return the
    number of keys that had something, per step id. Steps in ``done`` are skipped."""

    finished = set(done)
    deleted: dict[str, int] = {}
    for item in work.objects:
        if item.step_id in finished:
            continue
        client = client_for(item.system)
        keys = list(item.keys)
        for folder in item.folders:
            keys += keys_with_versions_under(client, item.bucket, folder)
        count = delete_everywhere(client, item.bucket, keys)
        deleted[item.step_id] = count
        if on_step is not None:
            on_step(item.step_id, count, {"bucket": item.bucket, "prefix": item.prefix, "planned": len(item.keys) + len(item.folders)})
    return deleted


# --------------------------------------------------------------------------------------------
# Processors


def processor_step_id(processor: str, record_id: str) -> str:
    return f"processor:{processor}:{record_id}"


def erase_processor_records(
    work: ErasureWork,
    *,
    client_for: Callable[[str], Any],
    done: Iterable[str] = (),
    on_step: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Erase every planned processor record; ``{processor: {"erased": n, "absent": m}}``."""
    finished = set(done)
    outcome: dict[str, dict[str, int]] = {}
    for item in work.processors:
        counts = outcome.setdefault(item.processor, {"erased": 0, "absent": 0, "done_before": 0})
        pending = [r for r in item.record_ids if processor_step_id(item.processor, r) not in finished]
        counts["done_before"] += len(item.record_ids) - len(pending)
        if not pending:
            continue
        client = client_for(item.processor)
        try:
            for record_id in pending:
                result = client.erase(record_id)
                counts[result] += 1
                if on_step is not None:
                    on_step(processor_step_id(item.processor, record_id), 1 if result == "erased" else 0, {"outcome": result})
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
    return outcome
