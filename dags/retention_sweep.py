"""
### retention_sweep

Enforces the data map's retention schedule (`retention:` in `include/datamap.yaml`, privacy
policy 6) every day, in bounded batches at database speed:

1. **plan_sweep**: the run's input (`as_of`, `rules`) and the live databases are checked; an
   unknown rule, an `as_of` in the future, a table or column missing from the database is refused
   naming the rule, before anything changes. One target per table or object prefix.
2. **sweep_target** (one mapped task per target, in parallel; each fails and retries on its
   own): the target's rules in a fixed order (generalise, null fields, delete objects, delete
   rows), each walking its expired rows once from its watermark; a deleted row takes what it owns
   (children first, objects with every version) and its mentions are cleared; legal holds and
   legal exceptions win and are counted. Prefixes are also swept for orphans (objects whose row
   is gone) older than the grace period. Every SQL system (the app, the analytics warehouse) is
   swept in its own database through its own connection. A DynamoDB table (action `ttl`) is one
   target: every item's TTL kept no later than its age plus the period (set where missing,
   lowered where later; items long past it deleted), held items never expired. Great
   Expectations then checks that nothing past a cutoff remains unless held. Each rule writes a
   row to `governance.retention_runs`.
3. **summarise_sweep**: totals (counts only).

On the schedule the sweep changes data; triggered from the form it is a **dry run** unless you
turn that off: the same counts, nothing changed.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="retention_sweep",
    description="Daily: every retention rule of the data map, in bounded batches, legal holds honoured",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Report what each rule would change, change nothing. Scheduled runs are not dry runs.",
            section="Run",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="As of",
            description="Date the periods count back from (default: the run's logical date). Not in the future.",
            section="Run",
        ),
        "rules": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Rules",
            description="Names of the retention rules to run (empty: every rule of the data map).",
            section="Run",
        ),
        "orphan_grace_days": Param(
            7,
            type="integer",
            minimum=0,
            title="Orphan grace period (days)",
            description="Objects whose row is gone are deleted once they are this old.",
            section="Run",
        ),
    },
    tags=[GOVERNANCE_TAG, "retention"],
    doc_md=__doc__,
)
def retention_sweep() -> None:
    @task
    def plan_sweep() -> dict[str, Any]:
        from governance.workflows.retention_sweep import plan_sweep as plan
        from governance.workflows.retention_sweep import resolve_run_options

        context = get_current_context()
        dag_run = context["dag_run"]
        options = resolve_run_options(
            params=dict(context["params"]), conf=dict(dag_run.conf or {}),
            run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
            logical_date=dag_run.logical_date, run_after=dag_run.run_after,
        )  # fmt: skip
        return {"options": options, "targets": plan(options)}

    @task
    def targets_of(planned: dict[str, Any], wave: int) -> list[dict[str, Any]]:
        return [{"target": t, "options": planned["options"]} for t in planned["targets"] if t["wave"] == wave]

    def sweep(work: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.retention_sweep import sweep_one_target

        context = get_current_context()
        target = work["target"]
        context["retention_target"] = f"{target['kind']} {target['system']}.{target['name']}"  # type: ignore[typeddict-unknown-key]
        return sweep_one_target(target, work["options"], run_id=context["dag_run"].run_id)

    sweep_target = task(sweep, task_id="sweep_target", map_index_template="{{ retention_target }}")
    # Tables whose rules need rows unreferenced (inactive callers) go after the tables referencing them.
    sweep_after_children = task(
        sweep, task_id="sweep_after_children", map_index_template="{{ retention_target }}",
        trigger_rule=TriggerRule.ALL_DONE,
    )  # fmt: skip

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def summarise_sweep(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
        from governance.workflows.retention_sweep import summarise_sweep as summarise

        return summarise([*(first or []), *(second or [])])

    planned = plan_sweep()
    first = sweep_target.expand(work=targets_of.override(task_id="first_wave")(planned, 0))
    second_work = targets_of.override(task_id="second_wave")(planned, 1)
    first >> second_work
    second = sweep_after_children.expand(work=second_work)
    summarise_sweep(first, second)


retention_sweep()
