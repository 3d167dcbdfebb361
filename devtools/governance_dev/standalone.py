"""``make airflow``: the Airflow UI (``airflow standalone``) on the embedded reference services.

Starts the embedded services, migrates Airflow's metadata database and the governance schema,
seeds the reference deployment when it is not there yet, then runs ``airflow standalone`` (api-server,
scheduler, dag-processor, triggerer; LocalExecutor) with the services' connections, and the
maintenance loop beside it (``python -m governance maintain``, as the governance-maintenance service
in docker-compose), and prints where to log in once the API server answers.

``airflow standalone`` starts its components by the bare command name ``airflow``, so the venv's
``bin`` goes first on ``PATH``. Airflow runs in a process group of its own: Ctrl-C or SIGTERM
stops every component and every task process with it (SIGTERM, then SIGKILL after a grace period).
``python -m governance_dev airflow --stop`` (``make airflow-stop``) stops one started in the background.
The embedded services keep running afterwards (``make services-stop``); data stays in ``.state``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import psutil

from governance.config import PROJECT_ROOT
from governance_dev.services import HOST, STATE_DIR, ServiceError, port_is_free, start_stack

PRELOADING_EXECUTOR = "governance.executors.PreloadingLocalExecutor"
GRACE_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 300.0


def airflow_port() -> int:
    return int(os.environ.get("GOVERNANCE_AIRFLOW_PORT", "8080"))


def pid_file(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "airflow.pid"


def password_file(airflow_home: str) -> Path:
    return Path(airflow_home) / "simple_auth_manager_passwords.json.generated"


def standalone_environment(stack_env: dict[str, str], port: int) -> dict[str, str]:
    """The environment ``airflow standalone`` and its children run with."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **stack_env}
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__API__HOST"] = HOST
    # Without this, tasks report to :8080 and fail with "connection refused" when the port moves.
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{HOST}:{port}/execution/"
    # LocalExecutor that imports Great Expectations once in the scheduler before forking its
    # workers, so verification and export-gate tasks do not each pay its import.
    env.setdefault("AIRFLOW__CORE__EXECUTOR", PRELOADING_EXECUTOR)
    return env


# The set-up step running now (migrate, seed): a stop during set-up ends it too.
_current_step: subprocess.Popen[bytes] | None = None


def _run_step(title: str, cmd: list[str], env: dict[str, str], *, stopping: Callable[[], bool] = lambda: False) -> None:
    global _current_step
    print(f"== {title}", flush=True)
    _current_step = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    try:
        returncode = _current_step.wait()
    finally:
        _current_step = None
    if returncode != 0 and not stopping():
        raise SystemExit(f"make airflow: `{' '.join(cmd)}` failed with exit code {returncode}")


def _is_make_airflow(pid: int) -> bool:
    """Whether ``pid`` is a ``make airflow`` launcher (a stale pid file may name a pid reused by
    anything else, which must not be signalled)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "governance_dev" in cmdline and "airflow" in cmdline and "--stop" not in cmdline


def _api_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/v2/monitor/health", timeout=2) as response:
            health = json.load(response)
    except (OSError, ValueError):
        return False
    return bool(health.get("metadatabase", {}).get("status") == "healthy")


def stop_process_tree(root_pid: int, grace_s: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM ``root_pid``'s process group and every descendant, SIGKILL what is left after
    ``grace_s``; return the pids that had to be killed."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    try:
        os.killpg(root_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for process in processes:  # descendants that moved to a process group of their own
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [process.pid for process in alive]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stop", action="store_true", help="stop an Airflow started by `make airflow` (in the background)")


def run(args: argparse.Namespace) -> int:
    if args.stop:
        return stop()
    port = airflow_port()
    if not port_is_free(port):
        print(f"make airflow: port {port} is taken (another Airflow?): set GOVERNANCE_AIRFLOW_PORT", file=sys.stderr)
        return 1
    # From here a stop (Ctrl-C, SIGTERM, `make airflow-stop`) is honoured, during set-up too: the
    # set-up step running is ended, Airflow is not started, or Airflow and its tasks are stopped.
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pid_file().write_text(f"{os.getpid()}\n")
    stopping = False
    children: list[subprocess.Popen[bytes]] = []  # airflow standalone, the maintenance loop

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print(f"\nmake airflow: {signal.Signals(signum).name}: stopping Airflow and its task processes", flush=True)
        step = _current_step
        killed = stop_process_tree(step.pid, grace_s=10) if step is not None else []
        for child in list(children):
            killed += stop_process_tree(child.pid)
        if killed:
            print(f"make airflow: {len(killed)} process(es) did not stop within {GRACE_SECONDS:.0f} s and were killed")

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        print("== starting embedded services (PostgreSQL, S3 API, processor stand-ins)", flush=True)
        try:
            env = standalone_environment(start_stack(), port)
        except ServiceError as exc:
            print(f"make airflow: {exc}", file=sys.stderr)
            return 1
        for title, cmd in (
            ("migrating Airflow's metadata database", [sys.executable, "-m", "airflow", "db", "migrate"]),
            ("migrating the governance schema", [sys.executable, "-m", "governance", "migrate"]),
            ("seeding the reference deployment (small) unless it is there",
             [sys.executable, "-m", "governance_dev", "seed", "--scale", "small", "--if-needed"]),
        ):  # fmt: skip
            if stopping:
                break
            _run_step(title, cmd, env, stopping=lambda: stopping)
        if stopping:
            print("make airflow: stopped during set-up; Airflow was not started", flush=True)
            return 130
        print(f"== starting airflow standalone on http://{HOST}:{port}", flush=True)
        proc = subprocess.Popen(["airflow", "standalone"], env=env, cwd=PROJECT_ROOT, start_new_session=True)
        children.append(proc)
        # What the governance-maintenance service does in docker-compose: scrub ended runs' identities,
        # reconcile and anchor the audit ledger, every minute (its output in .state/maintenance.log).
        with open(STATE_DIR / "maintenance.log", "ab") as maintenance_log:
            maintenance = subprocess.Popen(
                [sys.executable, "-m", "governance", "maintain", "--every", "60"], env=env, cwd=PROJECT_ROOT,
                stdout=maintenance_log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        children.append(maintenance)
        if stopping:  # a stop that arrived while they were starting
            stop_process_tree(proc.pid)
            stop_process_tree(maintenance.pid)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while proc.poll() is None and not stopping and not _api_ready(port):
            if time.monotonic() > deadline:
                print(f"make airflow: the API server did not answer within {READY_TIMEOUT_SECONDS:.0f} s", file=sys.stderr)
                _stop(signal.SIGTERM, None)
                break
            time.sleep(1)
        if proc.poll() is None and not stopping:
            passwords = password_file(env["AIRFLOW_HOME"])
            print(
                f"\nAirflow is up: http://{HOST}:{port}\n"
                f"  log in as admin; the password is in {passwords}\n"
                f"  shell with the same connections: source {STATE_DIR / 'airflow.env'}\n"
                "  stop: Ctrl-C here (or `make airflow-stop`); the services keep running until `make services-stop`\n",
                flush=True,
            )
        while proc.poll() is None:
            time.sleep(0.5)
    finally:
        if not stopping:
            for child in children:
                stop_process_tree(child.pid)
        pid_file().unlink(missing_ok=True)
    print("make airflow: Airflow stopped", flush=True)
    return 0


def stop() -> int:
    path = pid_file()
    if not path.exists():
        print("make airflow-stop: no Airflow started by `make airflow` is running")
        return 0
    pid = int(path.read_text().strip())
    if not _is_make_airflow(pid):  # gone, or the pid now belongs to something else
        path.unlink(missing_ok=True)
        print("make airflow-stop: no Airflow started by `make airflow` is running")
        return 0
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout=GRACE_SECONDS + 15)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        print(f"make airflow-stop: process {pid} did not stop", file=sys.stderr)
        return 1
    print("make airflow-stop: Airflow stopped")
    return 0
