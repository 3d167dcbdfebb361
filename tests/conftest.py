"""Test harness: real PostgreSQL, a real S3 API server and stateful processor stand-ins.

Airflow reads its configuration when first imported, so the environment is fixed here, at
collection time, before any test module imports Airflow: a throw-away AIRFLOW_HOME with its own
metadata database, this checkout's dags/ and plugins/, and test keys for the keyed-hash and
encryption connections. Services start once per session; tests isolate themselves with their own
databases and buckets (``make_db``, ``make_bucket``) instead of re-seeding.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="gov-test-airflow-"))
# dag.test() needs a DAG inside the configured DAGs folder: the session's folder links the
# project's DAGs and the test-only DAGs of tests/dag_fixtures/ (never shipped in dags/).
_DAGS_FOLDER = _AIRFLOW_HOME / "dags"
_DAGS_FOLDER.mkdir()
for _source in [*sorted((ROOT / "dags").glob("*.py")), *sorted((ROOT / "tests" / "dag_fixtures").glob("*.py"))]:
    (_DAGS_FOLDER / _source.name).symlink_to(_source)

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES": "email,phone",  # governance.config.AIRFLOW_SENSITIVE_NAMES
        "AIRFLOW__CORE__DAGS_FOLDER": str(_DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_AIRFLOW_HOME / "logs"),
        "GOVERNANCE_STATE_DIR": str(_AIRFLOW_HOME / "state"),
        # Retries stay on (they are part of what is tested) but do not wait 30 s each.
        "GOVERNANCE_RETRY_DELAY_SECONDS": "0.2",
    }
)
os.environ.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)

# Test-only key material (random per session): never the demo's or a deployment's keys.
from governance.crypto import generate_key_connection  # noqa: E402

os.environ.setdefault("AIRFLOW_CONN_GOVERNANCE_HASH_KEY", json.dumps(generate_key_connection("hash", "test-hash-1")))
os.environ.setdefault(
    "AIRFLOW_CONN_GOVERNANCE_ENCRYPTION_KEY", json.dumps(generate_key_connection("encryption", "test-enc-1"))
)

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.standins",
    "tests.fixtures.reference",
    "tests.fixtures.lineage",
]


def module_seconds(item: Any) -> float:
    """The expected run time a module declares with ``pytest.mark.slow(seconds=N)`` (0 if none)."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 60)) if marker else 0.0


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Longest modules first. ``make test`` runs pytest-xdist with ``--dist loadfile
    --no-loadscope-reorder``: modules go to workers in this order, so a module that runs for
    minutes starts at once instead of last (xdist's own order, by number of tests, put the
    one-test browser module at the end: a 15-minute tail on one worker). The sort is stable, so
    modules keep their order otherwise and a module's tests stay together."""
    weight: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        weight[module] = max(weight.get(module, 0.0), module_seconds(item))
    items.sort(key=lambda item: -weight[item.nodeid.split("::", 1)[0]])


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Nothing a test session started outlives it. ``dag.test()`` runs Airflow's DAG-run listeners
    in this process, and the OpenLineage listener submits their events to a process pool of its own
    (forked workers that read a pipe they also hold open): when an xdist worker exits without
    shutting that pool down, its workers wait forever, holding the session's output open. Shut the
    pool down, then stop any child process still running."""
    import psutil
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener

    listener = get_openlineage_listener()
    pool, listener._executor = getattr(listener, "_executor", None), None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
