"""retention_sweep: the data map's retention schedule, every day (privacy policy section 6).

Task bodies of ``dags/retention_sweep.py``:

* :func:`plan_sweep` checks the run's input and the live databases (refusing bad input before
  anything changes, naming the rule) and returns one :class:`SweepTarget` per table or prefix;
* :func:`sweep_one_target` runs one target (its rules in their fixed order, then its orphan
  check), reports lineage (the tables and prefixes it changed, with rows and objects affected),
  and verifies with Great Expectations that nothing past a cutoff remains unless held;
* :func:`summarise_sweep` adds up the targets' counts.

XCom carries rule names, counts and dates only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.dynamodb import client_region, item_client_for
from governance.crypto import hasher_from_airflow
from governance.datamap import load_datamap
from governance.datamap.model import PrefixRef
from governance.datamap.plans import build_retention_plan
from governance.db import connect, conninfo_for
from governance.lineage import record_item_read, record_item_write, record_object_write, record_table_write
from governance.migrations import ensure_schema
from governance.objectstore import s3_client
from governance.retention.checks import check_live_columns, check_run_input
from governance.retention.engine import (
    DEFAULT_ORPHAN_GRACE_DAYS,
    RuleOutcome,
    SweepContext,
    SweepTarget,
    remaining_after,
    sweep_target,
    sweep_targets,
)
from governance.retention.holds import load_holds, resolve_person_holds

log = logging.getLogger(__name__)


class RetentionVerificationFailed(RuntimeError):
    """Rows or objects past their cutoff remain that no hold or exception keeps."""


def resolve_run_options(
    *, params: dict[str, Any], conf: dict[str, Any], run_type: str, logical_date: datetime | None, run_after: datetime
) -> dict[str, Any]:
    """The run's options: ``dry_run`` (false on the schedule unless the configuration says
    otherwise, the form's value when triggered), ``as_of`` (the form's value, else the logical
    date), ``rules`` (empty: all), ``orphan_grace_days``."""
    scheduled = run_type == "scheduled"
    dry_run = bool(conf.get("dry_run", False)) if scheduled else bool(params.get("dry_run", True))
    as_of_text = params.get("as_of") or conf.get("as_of")
    as_of = datetime.fromisoformat(str(as_of_text)) if as_of_text else (logical_date or run_after)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC) if not as_of_text else as_of
    return {
        "dry_run": dry_run,
        "as_of": as_of.isoformat(),
        "rules": list(params.get("rules") or []),
        "orphan_grace_days": int(params.get("orphan_grace_days", DEFAULT_ORPHAN_GRACE_DAYS)),
    }


def plan_sweep(options: dict[str, Any], *, now: datetime | None = None) -> list[SweepTarget]:
    """Check the input and the databases; return the targets to map over. Changes nothing
    (besides bringing the governance schema up to date)."""

    datamap = load_datamap()
    as_of = datetime.fromisoformat(options["as_of"])
    rules = check_run_input(datamap, as_of=as_of, now=now or datetime.now(UTC), rules=options["rules"])

    def app(system: str) -> Any:
        return connect(conninfo_for(datamap.postgres_system(system).connection_id), application_name="governance-retention")

    check_live_columns(datamap, rules, app)
    ensure_schema(conninfo_for(GOVERNANCE_CONN_ID))
    plan = build_retention_plan(datamap)
    targets = sweep_targets(datamap, plan, options["rules"] or None)
    log.info("retention sweep as of %s (%s): %d targets, %d rules", options["as_of"],
             "dry run" if options["dry_run"] else "changes", len(targets), len(rules))  # fmt: skip
    return targets


def _verify_with_great_expectations(target: SweepTarget, remaining: dict[str, int]) -> dict[str, Any]:
    """One row per rule (its remaining count), expected to be 0; raises naming the rules left."""
    import logging as _logging

    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _logging.getLogger("great_expectations").setLevel(_logging.WARNING)
    frame = pd.DataFrame({"rule": list(remaining), "remaining": [int(v) for v in remaining.values()]})
    if frame.empty:
        return {"success": True, "rules": 0}
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name=f"retention_{target['kind']}_{target['name']}")
    asset = source.add_dataframe_asset(name="remaining")
    batch_definition = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="nothing_past_cutoff_unless_held"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="remaining", min_value=0, max_value=0))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="retention_verification", data=batch_definition, suite=suite)
    )
    result = validation.run(batch_parameters={"dataframe": frame})
    if not result.success:
        left = {rule: count for rule, count in remaining.items() if count}
        raise RetentionVerificationFailed(
            f"{target['kind']} {target['system']}.{target['name']}: past their cutoff and not held: "
            + ", ".join(f"{rule} ({count})" for rule, count in sorted(left.items()))
        )
    return {"success": True, "rules": len(remaining)}


def _report_lineage(
    datamap: Any, target: SweepTarget, outcomes: Sequence[RuleOutcome], item_client: Any = None
) -> None:
    """The tables and prefixes the target changed, with rows and objects affected."""

    rows: dict[tuple[str, str], int] = {}
    objects: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        if outcome.dry_run:
            continue
        if outcome.action == "ttl":  # a DynamoDB table: read whole, items' TTL set or items deleted
            region = client_region(item_client(outcome.system)) if item_client is not None else "us-east-1"
            record_item_read(region, outcome.target)
            record_item_write(region, outcome.target, items=outcome.rows_affected)
            continue
        if outcome.action in ("delete_rows", "null_fields", "generalise"):
            rows[(outcome.system, outcome.target)] = rows.get((outcome.system, outcome.target), 0) + outcome.rows_affected
            for table, count in outcome.cascade.items():
                if not table.startswith("mentions"):
                    system, name = table.split(".", 1)
                    schema = datamap.postgres_system(system).db_schema
                    rows[(system, f"{schema}.{name}")] = rows.get((system, f"{schema}.{name}"), 0) + count
        else:
            objects[(outcome.system, outcome.target)] = objects.get((outcome.system, outcome.target), 0) + outcome.objects_affected
    for (system, qualified), count in sorted(rows.items()):
        schema, table = qualified.split(".", 1)
        record_table_write(datamap.postgres_system(system).connection_id, schema, table, rows=count)
    for (system, prefix_name), count in sorted(objects.items()):
        spec = datamap.system(system)
        prefix = datamap.prefix(PrefixRef(system, prefix_name))
        record_object_write(spec.bucket.resolve(), prefix.static_prefix, objects=count)


def sweep_one_target(
    target: SweepTarget, options: dict[str, Any], *, run_id: str
) -> dict[str, Any]:
    """Run one target; record lineage; verify (not in a dry run). Returns counts per rule."""
    from contextlib import ExitStack

    import psycopg


    datamap = load_datamap()
    plan = build_retention_plan(datamap)
    as_of = datetime.fromisoformat(options["as_of"])
    infos: dict[str, str] = {}
    clients: dict[str, Any] = {}

    def app_connect(system: str) -> psycopg.Connection[Any]:
        if system not in infos:
            infos[system] = conninfo_for(datamap.postgres_system(system).connection_id, application_name="governance-retention")
        return psycopg.connect(infos[system], application_name="governance-retention")

    def object_client(system: str) -> Any:
        if system not in clients:
            spec = datamap.system(system)
            assert spec is not None
            clients[system] = s3_client(spec.connection_id)
        return clients[system]

    buckets = {s.name: s.bucket.resolve() for s in datamap.object_systems}
    item_client = item_client_for(datamap) if datamap.dynamodb_systems else None
    with psycopg.connect(conninfo_for(GOVERNANCE_CONN_ID), autocommit=True, application_name="governance-retention") as gov:
        holds, persons = load_holds(gov, datamap, as_of=as_of)
        if persons and target["kind"] != "items":  # each held person resolved across every database, one snapshot each
            with ExitStack() as stack:
                conns = {s.name: stack.enter_context(app_connect(s.name)) for s in datamap.postgres_systems}
                resolve_person_holds(conns, datamap, holds, persons)
        ctx = SweepContext(
            datamap=datamap, plan=plan, run_id=run_id, as_of=as_of, dry_run=bool(options["dry_run"]), holds=holds,
            app_connect=app_connect, gov=gov, object_client=object_client, buckets=buckets,
            orphan_grace=timedelta(days=int(options.get("orphan_grace_days", DEFAULT_ORPHAN_GRACE_DAYS))),
            item_client=item_client,
            identity_digest=hasher_from_airflow().hash_with if persons and target["kind"] == "items" else None,
        )  # fmt: skip
        outcomes = sweep_target(ctx, target)
        _report_lineage(datamap, target, outcomes, item_client)
        verification: dict[str, Any] = {"skipped": "dry run"}
        if not ctx.dry_run:
            verification = _verify_with_great_expectations(target, remaining_after(ctx, target, outcomes))
    return {
        "target": f"{target['kind']}:{target['system']}.{target['name']}",
        "dry_run": ctx.dry_run,
        "rules": {o.rule: {"rows": o.rows_affected, "objects": o.objects_affected, "held": o.held,
                           "held_reasons": o.held_reasons, "cascade": o.cascade,
                           "partitions_dropped": o.partitions_dropped} for o in outcomes},  # fmt: skip
        "verification": verification,
    }


def summarise_sweep(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the targets (counts only)."""
    totals = {"rows": 0, "objects": 0, "held": 0}
    for result in results:
        for counts in result["rules"].values():
            for key in totals:
                totals[key] += int(counts[key])
    return {"targets": len(results), **totals, "dry_run": any(r["dry_run"] for r in results)}
