"""`make airflow` as a new user runs it: from the Makefile, on its own services and ports.

It must start every Airflow component (the child processes are launched by the bare name
``airflow``), serve the project's DAGs to a logged-in user, and on Ctrl-C leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from governance_dev.services import free_port, port_is_free

ROOT = Path(__file__).resolve().parents[2]
PROJECT_DAGS = {"dsr_export", "dsr_erasure", "datamap_drift", "governance_healthcheck"}

pytestmark = [pytest.mark.slow(seconds=240), pytest.mark.integration]


def _clean_environment(state_dir: Path, airflow_port: int) -> dict[str, str]:
    """The user's shell: none of the test session's Airflow or governance settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVERNANCE_"))}
    env.update(
        {
            "GOVERNANCE_STATE_DIR": str(state_dir),
            "GOVERNANCE_PG_PORT": str(free_port()),
            "GOVERNANCE_S3_PORT": str(free_port()),
            "GOVERNANCE_PAYMENTS_PORT": str(free_port()),
            "GOVERNANCE_CRM_PORT": str(free_port()),
            "GOVERNANCE_SUPPORT_DESK_PORT": str(free_port()),
            "GOVERNANCE_AIRFLOW_PORT": str(airflow_port),
        }
    )
    return env


def _get_json(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def _wait_for(predicate: Callable[[], object], timeout_s: float, what: str, log: Path,
              proc: subprocess.Popen[bytes] | None = None) -> object:
    deadline = time.monotonic() + timeout_s
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except OSError as exc:  # a busy API server answering late (or a refused connection) is "not yet"
            result, last_error = None, exc
        if result:
            return result
        if proc is not None and proc.poll() is not None:  # it died: no point waiting out the deadline
            raise AssertionError(f"{what}: make airflow exited {proc.returncode}; it printed:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout_s:.0f} s (last error: {last_error!r}); make airflow printed:\n"
                         f"{log.read_text()[-4000:]}")  # fmt: skip


@pytest.fixture
def running_make_airflow(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, Path]]:
    state_dir = tmp_path / "state"
    port = free_port()
    env = _clean_environment(state_dir, port)
    log = tmp_path / "make-airflow.log"
    with open(log, "wb") as out:
        # A session of its own, like a terminal: SIGINT to the group is Ctrl-C.
        proc = subprocess.Popen(["make", "airflow"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc, port, state_dir, log
    finally:
        if proc.poll() is None:
            # Airflow's processes run in a session of their own and rename themselves (their
            # environment is then unreadable): take the tree before the launcher goes.
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            os.killpg(proc.pid, signal.SIGKILL)
            for child in tree:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "governance_dev", "services", "stop"], env=env, cwd=ROOT,
                       check=False, capture_output=True)  # fmt: skip
        for stray in psutil.process_iter(["environ"]):  # nothing of this test may outlive it
            try:
                if (stray.info["environ"] or {}).get("GOVERNANCE_STATE_DIR") == str(state_dir):
                    stray.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

def test_make_airflow_serves_the_dags_to_a_logged_in_user_and_ctrl_c_leaves_no_process(
    running_make_airflow: tuple[subprocess.Popen[bytes], int, Path, Path],
) -> None:
    proc, port, state_dir, log = running_make_airflow
    base = f"http://127.0.0.1:{port}"

    _wait_for(lambda: "Airflow is up" in log.read_text(), 420, "make airflow did not say Airflow is up", log, proc)
    assert proc.poll() is None

    def all_healthy() -> bool:
        health = _get_json(f"{base}/api/v2/monitor/health")
        return all(health[part]["status"] == "healthy" for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    _wait_for(all_healthy, 120, "not every Airflow component was healthy", log)

    passwords = state_dir / "airflow" / "simple_auth_manager_passwords.json.generated"
    assert str(passwords) in log.read_text(), "make airflow must say where the login password is"
    password = json.loads(passwords.read_text())["admin"]
    body = json.dumps({"username": "admin", "password": password}).encode()
    login = urllib.request.Request(f"{base}/auth/token", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=10) as response:
        token = json.load(response)["access_token"]

    def project_dags_listed() -> bool:
        dags = _get_json(f"{base}/api/v2/dags?limit=100", token)["dags"]
        return PROJECT_DAGS <= {d["dag_id"] for d in dags}

    _wait_for(project_dags_listed, 240, "the project's DAGs were not listed", log)

    # The maintenance loop runs beside Airflow, as governance-maintenance does in docker-compose.
    maintenance_log = state_dir / "maintenance.log"
    _wait_for(lambda: maintenance_log.exists() and '"errors": []' in maintenance_log.read_text(), 120,
              "the maintenance loop made no clean pass", maintenance_log)  # fmt: skip

    # The embedded services (S3 server, stand-ins) keep running by design until `services stop`.
    services = json.loads((state_dir / "services.json").read_text())
    service_pids = {services["s3_pid"], services["standins_pid"]}
    tree = [p for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            if p.pid not in service_pids]  # fmt: skip
    assert len(tree) > 4, "api-server, scheduler, dag-processor and triggerer run as processes"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    proc.wait(timeout=90)  # make itself ends by the SIGINT it received (non-zero), as in a terminal
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"processes left after Ctrl-C: {[p.pid for p in alive]}"
    assert port_is_free(port)
    assert "make airflow: Airflow stopped" in log.read_text()


def _processes_of(state_dir: Path, *, besides: set[int]) -> list[psutil.Process]:
    """Every process started for this ``make airflow`` (they all carry its GOVERNANCE_STATE_DIR)
    other than the embedded services, which keep running by design, and their children."""
    services: set[int] = set()
    for pid in besides:
        try:
            services |= {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    found = []
    for process in psutil.process_iter(["environ", "name"]):
        try:
            if (process.info["environ"] or {}).get("GOVERNANCE_STATE_DIR") != str(state_dir):
                continue
            if process.pid in services or process.info["name"] in ("postgres", "pg_ctl"):
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_make_airflow_stop_ends_a_background_make_airflow_during_set_up_and_leaves_no_process(
    running_make_airflow: tuple[subprocess.Popen[bytes], int, Path, Path],
) -> None:
    """`make airflow-stop` from another shell. It signals the launcher, whose one stop handler the
    Ctrl-C test above proves on a running Airflow (every component and task process); here the stop
    arrives during set-up, while `airflow db migrate` runs: that step is ended and Airflow is never
    started (and the test stays short)."""
    proc, port, state_dir, log = running_make_airflow
    _wait_for(lambda: "== migrating Airflow's metadata database" in log.read_text(), 300,
              "make airflow did not reach its set-up steps", log, proc)  # fmt: skip
    services = json.loads((state_dir / "services.json").read_text())
    service_pids = {int(services["s3_pid"]), int(services["standins_pid"])}
    assert (state_dir / "airflow.pid").exists()

    env = _clean_environment(state_dir, port)
    stopped = subprocess.run(["make", "airflow-stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
                             check=False)  # fmt: skip
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "make airflow-stop: Airflow stopped" in stopped.stdout
    proc.wait(timeout=30)
    output = log.read_text()
    assert "make airflow: stopped during set-up; Airflow was not started" in output, output[-3000:]
    assert "== starting airflow standalone" not in output
    left = _processes_of(state_dir, besides=service_pids)
    assert not left, f"processes left after make airflow-stop: {[(p.pid, p.name()) for p in left]}"
    assert port_is_free(port)
    assert not (state_dir / "airflow.pid").exists()
    # Stopping again is harmless and says so.
    again = subprocess.run(["make", "airflow-stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    assert again.returncode == 0 and "no Airflow started by `make airflow` is running" in again.stdout
