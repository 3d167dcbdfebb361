"""Airflow under the CeleryExecutor on loopback, for the CeleryExecutor test and the intake
benchmark: api-server, scheduler, dag-processor and N ``airflow celery worker`` processes.

* metadata database: PostgreSQL (a database of the caller's, never the session's SQLite);
* broker: the Redis that answers on 127.0.0.1:6379 (:func:`redis_answers`); each cluster uses a
  queue of its own (``AIRFLOW__OPERATORS__DEFAULT_QUEUE``, the workers' ``--queues``), so other
  users of that Redis never take its tasks nor it theirs;
* result backend: PostgreSQL (Celery's database backend, a database of the caller's).

Every component runs in a process group of its own with its output in a log file under the
cluster's home; :meth:`CeleryAirflow.stop` ends every group (SIGTERM, then SIGKILL) and is safe to
call after a failed start. The workers skip Airflow's log server (two on one machine would take
the same port) and have their own pid files and Celery host names (``worker1@...``), so the task
logs stay on disk where the tasks wrote them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from governance.config import PROJECT_ROOT
from governance_dev.services import HOST, free_port

REDIS_PORT = 6379


def redis_answers(host: str = HOST, port: int = REDIS_PORT, timeout_s: float = 2.0) -> bool:
    """Whether a Redis server answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class ComponentExited(RuntimeError):
    """An Airflow component of the cluster exited while it should run."""


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except ComponentExited:
            raise
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} within {timeout_s:.0f} s (last error: {last!r})\n{tails}")


def sqlalchemy_url(conninfo: str, driver: str = "postgresql+psycopg") -> str:
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    return f"{driver}://{info.get('user', 'postgres')}@{info.get('host', HOST)}:{info.get('port', 5432)}/{info['dbname']}"


def dags_folder_of(dag_files: list[str], folder: Path) -> Path:
    """A DAGs folder holding only ``dag_files`` (names in the project's ``dags/``, linked): the
    other DAGs would be scheduled too and share the workers."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in dag_files:
        source = PROJECT_ROOT / "dags" / name
        if not source.is_file():
            raise FileNotFoundError(f"no DAG file dags/{name}")
        (folder / name).symlink_to(source)
    return folder


@dataclass
class CeleryAirflow:
    """One Airflow deployment under the CeleryExecutor (see the module's docstring)."""

    metadata_url: str  # postgresql://... of an empty database of the caller's
    result_backend_url: str  # postgresql://... of another
    dags_folder: Path
    plugins_folder: Path = PROJECT_ROOT / "plugins"
    workers: int = 2
    concurrency: int = 2
    parallelism: int = 8
    broker_url: str = f"redis://{HOST}:{REDIS_PORT}/0"
    env_extra: dict[str, str] = field(default_factory=dict)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gov-celery-")))
    queue: str = field(default_factory=lambda: f"governance-{uuid.uuid4().hex[:10]}")
    port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    user: str = "celery-check"
    # Components in separate processes must sign and check the same tokens.
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex * 2)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self, component: str) -> Path:
        return self.home / f"{component}.log"

    @property
    def worker_names(self) -> list[str]:
        return [f"worker{n}" for n in range(1, self.workers + 1)]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") or k in (
            "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES", "AIRFLOW__OPENLINEAGE__TRANSPORT", "AIRFLOW__OPENLINEAGE__NAMESPACE")}  # fmt: skip
        env.update({
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(self.metadata_url),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__API__SECRET_KEY": self.jwt_secret[:32],
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sqlalchemy_url(self.result_backend_url),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            # Parsed once at start: re-parsing every 30 s takes a core's share on a 2-core machine.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "GX_ANALYTICS_ENABLED": "False",
        })  # fmt: skip
        env.update(self.env_extra)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with open(self.log(name), "ab") as out:
            self.processes[name] = subprocess.Popen(["airflow", *args], cwd=PROJECT_ROOT, env=env, stdout=out,
                                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def start(self, expect_dags: set[str], timeout_s: float = 300) -> None:
        """Migrate the metadata database, start every component, return once the API server and
        scheduler are healthy, ``expect_dags`` are parsed and every worker answers a ping."""
        self.port = self.port or free_port()
        env = self.environment()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.log("migrate"), "ab") as out:
            subprocess.run(["airflow", "db", "migrate"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                           check=True, timeout=timeout_s)  # fmt: skip
        self._spawn("api-server", ["api-server"], env)
        self._spawn("scheduler", ["scheduler"], env)
        self._spawn("dag-processor", ["dag-processor"], env)
        for name in self.worker_names:
            self._spawn(name, ["celery", "worker", "--queues", self.queue, "--concurrency", str(self.concurrency),
                               "--celery-hostname", f"{name}@%h", "--pid", str(self.home / f"{name}.pid"),
                               "--skip-serve-logs", "--without-mingle", "--without-gossip"], env)  # fmt: skip
        logs = [self.log(n) for n in self.processes]

        def healthy() -> bool:
            self._check_alive()
            with urllib.request.urlopen(f"{self.base}/api/v2/monitor/health", timeout=5) as response:
                health = json.load(response)
            return all(health[p]["status"] == "healthy" for p in ("metadatabase", "scheduler"))

        def parsed() -> bool:
            self._check_alive()
            with psycopg.connect(self.metadata_url) as conn:
                found = {r[0] for r in conn.execute("SELECT dag_id FROM dag WHERE NOT is_stale").fetchall()}
            return expect_dags <= found

        def workers_ready() -> bool:
            self._check_alive()
            return all("ready." in self.log(n).read_text(errors="replace") for n in self.worker_names)

        _wait(healthy, timeout_s, "the API server and scheduler were not healthy", logs)
        _wait(parsed, timeout_s, f"DAGs {sorted(expect_dags)} were not parsed", logs)
        _wait(workers_ready, timeout_s, "the Celery workers did not start", logs)

    def _check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if dead:
            tails = "\n".join(f"--- {n}\n{self.log(n).read_text(errors='replace')[-2000:]}" for n in dead)
            raise ComponentExited(f"Airflow component(s) exited: {dead}; logs in {self.home}\n{tails}")

    def token(self) -> str:
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())[self.user]
        return str(self.api("/auth/token", method="POST", body={"username": self.user, "password": password},
                            token=None)["access_token"])  # fmt: skip

    def api(self, path: str, *, method: str = "GET", body: Any = None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, token: str | None = None) -> str:
        run = self.api(f"/api/v2/dags/{dag_id}/dagRuns", method="POST", body={"logical_date": None, "conf": conf or {}},
                       token=token or self.token())  # fmt: skip
        return str(run["dag_run_id"])

    def worker_log_text(self, name: str) -> str:
        return self.log(name).read_text(errors="replace") if self.log(name).exists() else ""

    def stop(self) -> list[str]:
        """End every component and its children (SIGTERM, SIGKILL after 20 s); return the names
        of the components that had to be killed."""
        trees: dict[str, list[psutil.Process]] = {}
        for name, proc in self.processes.items():
            try:
                root = psutil.Process(proc.pid)
                trees[name] = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for process in trees[name]:  # children that left the group
                try:
                    process.terminate()
                except psutil.NoSuchProcess:
                    pass
        _gone, alive = psutil.wait_procs([p for tree in trees.values() for p in tree], timeout=20)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return sorted(name for name, tree in trees.items() if any(p in alive for p in tree))
