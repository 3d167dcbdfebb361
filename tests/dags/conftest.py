"""Helpers for end-to-end DAG runs with ``dag.test()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def get_dag(airflow_db: str) -> Callable[[str], Any]:
    """Load a DAG by id from the session's DAGs folder (the metadata DB is migrated first)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}, bag.import_errors

    def _get(dag_id: str) -> Any:
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"no DAG {dag_id}"
        return dag

    return _get


def task_states(dag_run: Any) -> dict[str, str]:
    """``{task_id: state}`` of a finished run."""
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom_result(dag_run: Any, task_id: str) -> Any:
    """The return value a task of ``dag_run`` pushed."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel.value)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value")
            .scalar()
        )
    return None if row is None else XComModel.deserialize_value(_Row(row))


class _Row:
    def __init__(self, value: Any) -> None:
        self.value = value
