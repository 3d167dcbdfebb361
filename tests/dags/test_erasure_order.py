"""The erasure's order as the README states it: suppression recorded right after the database
step, not after verification (why: README, Erasure, step 3)."""

from __future__ import annotations

from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

ROOT = Path(__file__).resolve().parents[2]


def _ancestors(dag: object, task_id: str) -> set[str]:
    task = dag.get_task(task_id)  # type: ignore[attr-defined]
    return {t.task_id for t in task.get_flat_relatives(upstream=True)}


def test_suppression_follows_the_database_step_and_does_not_wait_for_verification_as_the_readme_says() -> None:
    bag = DagBag(dag_folder=str(ROOT / "dags" / "dsr_erasure.py"))
    assert bag.import_errors == {}
    dag = bag.dags["dsr_erasure"]
    before_suppression = _ancestors(dag, "record_suppression")
    assert "execute_database" in before_suppression
    assert "verify_erasure" not in before_suppression
    assert "record_suppression" not in _ancestors(dag, "verify_erasure")
    readme = (ROOT / "README.md").read_text()
    assert "(`execute_database` → `record_suppression`), beside the object, processor and verification" in readme
    assert "before the person's keyed\n   hashes go on the suppression list" not in readme
