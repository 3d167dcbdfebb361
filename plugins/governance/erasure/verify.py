"""Verification: after execution, is anything of the person left that the plan did not keep?

Resolution runs again over every system, with the same identities (bound parameters only), and
every finding becomes a small table that Great Expectations checks:

* per table: the person's rows still there, minus what the plan kept or left out (another
  person's rows): expected to be empty;
* per table with mentions: planned mention rows still pointing at the person: empty;
* per mention with an ``orphan`` rule: planned mention-only rows still there (``delete_row``) or
  still holding a field to clear: empty;
* per table under a legal exception: the kept rows, one boolean per minimised field ("was it
  cleared?"): every row present and every value true;
* per object prefix: planned keys (and keys of residual rows) with any version left: empty;
* per processor: records its look-up still returns: empty;
* per DynamoDB table: items the plan's Query (partition key or business index) still finds,
  but those of held businesses: empty.

Great Expectations only ever sees primary keys, object keys, processor record ids and booleans,
never an identity or a personal value, so its results can be stored and shown as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from governance import expectations
from governance.connectors.dynamodb import item_client_for
from governance.connectors.objects import head
from governance.datamap.model import DataMap, PrefixRef, TableRef
from governance.datamap.plans import (
    KEYS,
    MENTION_ONLY_EFFECTS,
    PLAN_ID,
    REFERENCE_VALUES,
    ResolutionPlan,
    build_erasure_plan,
    build_resolution_plan,
)
from governance.erasure.executor import keys_with_versions_under
from governance.erasure.items import item_residue
from governance.erasure.planner import ErasureWork
from governance.erasure.resolve import IdentityMatcher, MatchByBusiness, MatchByIdentity, resolve_subject
from governance.identity import SubjectIdentities
from governance.resolution import plan_systems, system_snapshots

log = logging.getLogger(__name__)


class ResidueFound(RuntimeError):
    """Verification found data of the person the plan did not keep; the message says where."""


@dataclass
class Check:
    """One verified target: ``kind`` rows|mentions|kept_rows|objects|processor_records."""

    where: str
    kind: str
    expected: int
    observed: int = 0
    success: bool = True
    columns: dict[str, list[Any]] = field(default_factory=dict, repr=False)  # what GX validates

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("columns")
        return data


@dataclass
class VerificationResult:
    passed: bool
    checks: list[Check]
    engine: str

    @property
    def residue(self) -> list[str]:
        return [f"{c.where} ({c.observed} {c.kind})" for c in self.checks if not c.success]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "engine": self.engine, "residue": self.residue,
                "checks": [c.public() for c in self.checks]}  # fmt: skip


def _object_has_versions(client: Any, bucket: str, key: str) -> bool:
    try:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry["Key"] == key:
                    return True
        return False
    except Exception:
        return head(client, bucket, key) is not None


def collect_checks(
    datamap: DataMap,
    work: ErasureWork,
    identities: SubjectIdentities | None,
    *,
    system_conninfo: Callable[[str], str],
    object_client: Callable[[str], Any],
    processor_client: Callable[[str], Any],
    as_of: datetime,
    people: Sequence[SubjectIdentities] | None = None,
    item_client: Callable[[str], Any] | None = None,
) -> list[Check]:
    """Look again everywhere; one :class:`Check` per target (not yet validated).

    A business's offboarding (a plan without identity kinds) is resolved again by its business id,
    and ``people`` (its people's identities) are looked up again at each processor."""
    checks: list[Check] = []
    by_business = not work.identity_kinds
    plan = build_resolution_plan(datamap, work.identity_kinds, business_scope=work.business_id is not None,
                                 matching="business" if by_business else "identity")  # fmt: skip
    matcher: IdentityMatcher = MatchByBusiness() if by_business else MatchByIdentity(identities)  # type: ignore[arg-type]
    lookups = list(people or []) if by_business else [identities]
    # The checks of the erasure statements the plan ran (mentions still pointing, fields cleared).
    erasure_statements = dict(enumerate(build_erasure_plan(datamap, plan).statements, start=1))
    checks_by_step = {order: s.check for order, s in erasure_statements.items() if s.check is not None}
    exclude = {_ref(k): set(v) for k, v in work.verification_exclude.items()}
    kept_rows = {(k.where, k.reason): set(k.keys) for k in work.kept if k.kind == "rows"}
    kept_by_table: dict[str, set[Any]] = {}
    for (where, _reason), keys in kept_rows.items():
        kept_by_table.setdefault(where, set()).update(keys)
    residue_rows: dict[TableRef, list[dict[str, Any]]] = {}
    # Every system re-read in its own snapshot, resolved as the plan was (keys found in one
    # system drive the next); rows reached only through another system's deleted rows are
    # checked by their planned keys below (verify_deleted), since re-resolution cannot reach them.
    systems = list(dict.fromkeys([*plan_systems(plan), *work.systems]))
    with system_snapshots(datamap, systems, system_conninfo, application_name="governance-erasure-verify") as dbs:
        resolution = resolve_subject(
            dbs, datamap, plan, matcher, as_of=as_of,
            scope_ids=[work.business_id] if work.business_id is not None else None, narrow=False, exclude=exclude,
        )  # fmt: skip
        for ref, rows in resolution.tables.items():
            left = sorted(k for k in rows.rows if k not in kept_by_table.get(str(ref), set()))
            residue_rows[ref] = [rows.rows[k] for k in left]
            checks.append(Check(str(ref), "rows", 0, columns={rows.primary_key: left}))
        rows_check = {c.where: c for c in checks if c.kind == "rows"}
        unreachable = rows_reached_across_systems(plan)
        for system_name in systems:
            conn = dbs[system_name]
            for step in work.steps_of(system_name):
                check = checks_by_step.get(step.order)
                if step.key_set is not None:  # the keys the plan stored in this database
                    check = erasure_statements[step.order].stored_check if step.order in erasure_statements else None
                if check is None or not step.planned:
                    continue
                if step.effect == "delete_rows" and step.ref not in unreachable:
                    continue  # re-resolution above finds any row left
                values = {KEYS: step.keys, REFERENCE_VALUES: step.reference_values, PLAN_ID: step.key_set}
                pk = datamap.table(step.ref).primary_key
                fetched = conn.execute(check.query, check.bind(values)).fetchall()
                if step.effect == "clear_mention":
                    checks.append(Check(f"{step.system}.{step.table}.{step.reference_field}", "mentions", 0,
                                        columns={pk: [r[0] for r in fetched]}))  # fmt: skip
                elif step.effect in MENTION_ONLY_EFFECTS:  # mention-only rows still there, or not cleared
                    checks.append(Check(f"{step.system}.{step.table}.{step.reference_field}", "mention_only_rows", 0,
                                        columns={pk: [r[0] for r in fetched]}))  # fmt: skip
                elif step.effect == "minimise_kept_rows":
                    columns: dict[str, list[Any]] = {f"{f}_cleared": [bool(r[i + 1]) for r in fetched] for i, f in enumerate(step.fields)}
                    checks.append(Check(f"{step.system}.{step.table}", "kept_rows", step.planned, columns=columns))
                elif step.effect == "delete_rows":  # planned rows still there, found by their keys
                    where = f"{step.system}.{step.table}"
                    target = rows_check.get(where)
                    if target is None:
                        target = rows_check[where] = Check(where, "rows", 0, columns={pk: []})
                        checks.append(target)
                    target.columns[pk] = sorted({*target.columns.get(pk, []), *(r[0] for r in fetched)})
    # Objects: planned keys with any version left, keys of residual rows, export folders.
    for item in work.objects:
        client = object_client(item.system)
        left = [k for k in item.keys if _object_has_versions(client, item.bucket, k)]
        for folder in item.folders:
            left += keys_with_versions_under(client, item.bucket, folder)
        for object_step in plan.objects:
            if object_step.prefix == PrefixRef(item.system, item.prefix):
                left += [k for k in object_step.keys_for(residue_rows.get(object_step.source, [])) if k not in left]
        checks.append(Check(f"{item.system}.{item.prefix}", "objects", 0, columns={"object_key": sorted(set(left))}))
    # Processors: whatever the look-up still returns (records the plan reached, or new ones),
    # but the records a legal hold keeps.
    kept_records = {k.where: set(k.keys) for k in work.kept if k.kind == "processor_records"}
    for processor in work.processors:
        client = processor_client(processor.processor)
        try:
            kept = kept_records.get(processor.processor, set())
            found = sorted({r.record_id for person in lookups if person is not None for r in client.lookup(person)} - kept)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
        checks.append(Check(processor.processor, "processor_records", 0, columns={"record_id": sorted(found)}))
    # DynamoDB: the plan's Queries run again (by identity, or the business index); only held
    # businesses' items may remain. GX sees sort keys (times and event ids), never a partition key.
    if work.items:
        residue = item_residue(datamap, work, [None] if by_business else [identities],
                               client_for=item_client or item_client_for(datamap))  # fmt: skip
        for where, left in residue.items():
            checks.append(Check(where, "items", 0, columns={"sort_key": sorted(left)}))
    return checks


def rows_reached_across_systems(plan: ResolutionPlan) -> set[TableRef]:
    """Tables whose rows resolution reaches through an owner in another database, or through
    such rows: once the owners are erased, resolving again cannot reach them, so verification
    looks their planned keys up instead (the erasure plan's ``verify_deleted`` check)."""
    found: set[TableRef] = set()
    for step in plan.steps:  # parents before children
        if any(e.parent.system != e.child.system or e.parent in found for e in step.owned_via):
            found.add(step.table)
    return found


def _ref(text: str) -> TableRef:
    system, _, table = text.partition(".")
    return TableRef(system, table)


def validate_with_great_expectations(checks: Sequence[Check]) -> VerificationResult:
    """Validate every check with a Great Expectations suite (ephemeral context, pandas frames).

    GX is loaded through :mod:`governance.expectations`: free in a task process forked from a
    scheduler that preloaded it (:class:`governance.executors.PreloadingLocalExecutor`)."""
    import pandas as pd


    gx = expectations.load()
    context = expectations.ephemeral_context()
    source = context.data_sources.add_pandas("erasure_verification")
    asset = source.add_dataframe_asset("findings")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    for index, check in enumerate(checks):
        suite = gx.ExpectationSuite(name=f"erasure_{index}_{check.kind}")
        suite.add_expectation(gx.expectations.ExpectTableRowCountToEqual(value=check.expected))
        if check.kind == "kept_rows":
            for column in check.columns:
                suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=[True]))
        suite = context.suites.add(suite)
        frame = pd.DataFrame(check.columns) if check.columns else pd.DataFrame({"none": []})
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
        check.success = bool(result.success)
        check.observed = int(len(frame))
        if check.kind == "kept_rows":  # observed: kept rows whose every personal field was cleared
            check.observed = int(frame.all(axis=1).sum()) if len(frame.columns) else 0
    return VerificationResult(passed=all(c.success for c in checks), checks=list(checks), engine=f"great_expectations {gx.__version__}")


def verify_erasure(
    datamap: DataMap,
    work: ErasureWork,
    identities: SubjectIdentities | None,
    *,
    system_conninfo: Callable[[str], str],
    object_client: Callable[[str], Any],
    processor_client: Callable[[str], Any],
    as_of: datetime,
    people: Sequence[SubjectIdentities] | None = None,
    item_client: Callable[[str], Any] | None = None,
) -> VerificationResult:
    """Collect and validate every check (see the module docstring)."""
    checks = collect_checks(
        datamap, work, identities, system_conninfo=system_conninfo, object_client=object_client,
        processor_client=processor_client, as_of=as_of, people=people, item_client=item_client,
    )  # fmt: skip
    return validate_with_great_expectations(checks)


def residue_message(result: VerificationResult | Mapping[str, Any]) -> str:
    residue = result.residue if isinstance(result, VerificationResult) else list(result.get("residue", []))
    return "verification found data of the person the plan did not keep: " + "; ".join(residue)
