"""Building blocks of an anonymised-insights DAG (re-exported by :mod:`governance.airflow`).

``insights_params()`` is the trigger form; :func:`insights_release` adds ``check_request``,
``stage_release``, ``verify_release`` and ``publish_release`` (the published release is the
``release`` asset's update). Task bodies import :mod:`governance.workflows.aggregate_anonymisation`
when they run, so DAG files stay fast to parse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import Asset, Param, get_current_context, task

if TYPE_CHECKING:
    from airflow.sdk import XComArg

INDUSTRY_INSIGHTS = Asset("industry_insights")


def insights_params() -> dict[str, Param]:
    """The release form: the period, the two thresholds and the optional privacy parameters."""
    return {
        "period_start": Param(None, type=["null", "string"], format="date", title="Period start",
                              description="First day (widened to its ISO week's Monday). Empty: the previous ISO week.",
                              section="Period"),
        "period_end": Param(None, type=["null", "string"], format="date", title="Period end",
                            description="Last day (widened to its ISO week's Sunday); the period must be over.",
                            section="Period"),
        "k_businesses": Param(5, type="integer", minimum=2, title="k businesses",
                              description="Distinct businesses every published cell aggregates (at least 2).",
                              section="Thresholds"),
        "k_callers": Param(10, type="integer", minimum=2, title="k callers",
                           description="Distinct callers every published cell aggregates (at least 2).",
                           section="Thresholds"),
        "epsilon": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Epsilon",
                         description="Differential privacy: the budget this release spends on each week (empty: off).",
                         section="Differential privacy"),
        "delta": Param(None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1, title="Delta",
                       description="Differential privacy: with epsilon, sets the threshold for dropping small cells.",
                       section="Differential privacy"),
    }  # fmt: skip


def insights_release(*, asset: Asset = INDUSTRY_INSIGHTS) -> XComArg:
    """The four tasks of a release; returns the ``publish_release`` result (release id, cells,
    object keys)."""

    @task(task_id="check_request")
    def check_request_task() -> dict[str, Any]:
        from governance.workflows import aggregate_anonymisation as flow

        context = get_current_context()
        dag_run = context["dag_run"]
        return flow.check_release_request(dict(context["params"]), logical_date=dag_run.logical_date,
                                          run_after=dag_run.run_after)  # fmt: skip

    @task(task_id="stage_release")
    def stage_release_task(request: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows import aggregate_anonymisation as flow

        return flow.stage(request, run_id=get_current_context()["dag_run"].run_id)

    @task(task_id="verify_release")
    def verify_release_task(staged: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows import aggregate_anonymisation as flow

        return flow.verify(staged)

    @task(task_id="publish_release", outlets=[asset])
    def publish_release_task(staged: dict[str, Any], _verified: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows import aggregate_anonymisation as flow

        return flow.publish(staged)

    # Airflow resolves each XComArg to its task's result when the task runs.
    staged: Any = stage_release_task(cast(Any, check_request_task()))
    verified: Any = verify_release_task(staged)
    return publish_release_task(staged, verified)
