"""A real ``airflow standalone`` for the benchmarks (loaded by them with importlib; not a benchmark).

``StandaloneAirflow`` starts api-server, scheduler, dag-processor and triggerer on a free loopback
port with its own metadata database on the benchmark's PostgreSQL server, a DAG folder and a
plugins folder of the caller's choosing, and the executor given (LocalExecutor or the project's
``governance.executors.PreloadingLocalExecutor``). Everything it prints goes to one log file.
The scheduler's own "Ran scheduling loop in N ms" lines (DEBUG, switched on for the scheduler's
logger only) are what :meth:`scheduler_loops` reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from governance_dev.services import create_database, drop_database, free_port
from governance_dev.standalone import stop_process_tree

ROOT = Path(__file__).resolve().parents[1]
LOOP_LINE = re.compile(r"^(\S+).*Ran scheduling loop in ([0-9.]+) ms")
USER, ROLE = "bench", "admin"


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} within {timeout_s:.0f} s (last error: {last!r})\n{tail}")


@dataclass
class StandaloneAirflow:
    admin_url: str
    dags_folder: Path
    plugins_folder: Path
    executor: str = "LocalExecutor"
    parallelism: int = 8
    env_extra: dict[str, str] = field(default_factory=dict)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-airflow-")))
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    token: str = ""
    metadata_db: str = ""
    log_ports: tuple[int, int] = (0, 0)

    @property
    def log(self) -> Path:
        return self.home / "standalone.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.metadata_db}"

    def environment(self) -> dict[str, str]:
        info = psycopg.conninfo.conninfo_to_dict(self.metadata_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update({
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
                f"{info.get('port', 5432)}/{info['dbname']}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:{ROLE}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "airflow.jobs.scheduler_job_runner=DEBUG",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            # On 2 cores shared with other work the API server can take more than the default 5 s
            # to answer a task starting; a timeout there fails the task before it runs.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            # Log servers on free ports: several instances (or sessions) may run at once.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_ports[1]),
            "GX_ANALYTICS_ENABLED": "False",
        })  # fmt: skip
        env.update(self.env_extra)
        return env

    def start(self, expect_dags: set[str], timeout_s: float = 900) -> None:
        self.port = free_port()
        self.log_ports = (free_port(), free_port())
        self.metadata_db = f"bench_airflow_{uuid.uuid4().hex[:8]}"
        create_database(self.admin_url, self.metadata_db)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["airflow", "standalone"], cwd=ROOT, env=self.environment(), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.base}/api/v2/monitor/health", timeout=5) as response:
                health = json.load(response)
            return all(health[p]["status"] == "healthy" for p in ("metadatabase", "scheduler"))

        def parsed() -> bool:
            with psycopg.connect(self.metadata_url) as conn:
                found = {r[0] for r in conn.execute("SELECT dag_id FROM dag WHERE NOT is_stale").fetchall()}
            return expect_dags <= found

        _wait(healthy, timeout_s, "airflow standalone was not healthy", self.log)
        _wait(parsed, timeout_s, f"DAGs {sorted(expect_dags)} were not parsed", self.log)
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(_wait(passwords.read_text, 120, "no passwords file", self.log))[USER]
        self.token = str(self.api("/auth/token", method="POST", body={"username": USER, "password": password},
                                  auth=False)["access_token"])  # fmt: skip

    def api(self, path: str, *, method: str = "GET", body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.api(f"/api/v2/dags/{dag_id}/dagRuns", method="POST", body={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 1800) -> str:
        def ended() -> str | None:
            with psycopg.connect(self.metadata_url) as conn:
                row = conn.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                                   (dag_id, run_id)).fetchone()  # fmt: skip
            return str(row[0]) if row and row[0] in ("success", "failed") else None

        return str(_wait(ended, timeout_s, f"run {dag_id}/{run_id} did not end", self.log))

    def task_times(self, dag_id: str, run_id: str) -> list[tuple[str, str, datetime | None, datetime | None]]:
        """(task_id, state, start, end) of every task instance of the run, by start."""
        with psycopg.connect(self.metadata_url) as conn:
            rows = conn.execute(
                "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = %s AND run_id = %s "
                "ORDER BY start_date NULLS LAST", (dag_id, run_id),
            ).fetchall()  # fmt: skip
        return [(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]

    def scheduler_loops(self, after: datetime, before: datetime) -> list[float]:
        """Durations (ms) of the scheduler loops that ended between ``after`` and ``before``."""
        loops: list[float] = []
        for line in self.log.read_text(errors="replace").splitlines():
            text = line.split("|", 1)[-1].strip()
            match = LOOP_LINE.match(text)
            if not match:
                continue
            try:
                at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
            except ValueError:
                continue
            if after <= at <= before:
                loops.append(float(match.group(2)))
        return loops

    def task_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.home / "logs").rglob("*") if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Its whole tree: Airflow's components and executor workers leave the process group.
            stop_process_tree(self.proc.pid, grace_s=90)
            self.proc.wait(timeout=30)
        if self.metadata_db:
            for _ in range(5):
                try:
                    drop_database(self.admin_url, self.metadata_db)
                    break
                except psycopg.Error:
                    time.sleep(2)
