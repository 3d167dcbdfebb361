"""The embedded reference services: PostgreSQL, an S3 API server and the processor stand-ins.

``make demo``, ``make airflow`` and the test harness run the reference deployment without Docker:

* PostgreSQL from the ``pgserver`` wheel's binaries, listening on a loopback TCP port (not 5432).
  ``pgserver`` itself only offers a Unix socket, so its binaries are driven with ``pg_ctl``
  directly. PostgreSQL refuses to run as root, so under root the server runs as a system user.
* moto's S3 server on loopback (MinIO plays this part in docker-compose).
* the processor stand-ins (``governance_dev.standins``).

State (pids, ports) lives in ``.state/services.json``; ``.state/airflow.env`` holds the
``AIRFLOW_CONN_*`` variables that point Airflow and the CLI at these services.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governance.config import AIRFLOW_SENSITIVE_NAMES, PROJECT_ROOT, objects_bucket
from governance.crypto import generate_key_connection
from governance.lineage import openlineage_env

STATE_DIR = Path(os.environ.get("GOVERNANCE_STATE_DIR", PROJECT_ROOT / ".state"))
HOST = "127.0.0.1"
PG_SYSTEM_USER = "pgserver"


class ServiceError(RuntimeError):
    """An embedded service could not be started or reached."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on ``host:port``. SO_REUSEADDR, as the servers themselves bind: a
    previous run's connections still in TIME_WAIT do not make the port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, host: str = HOST, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise ServiceError(f"nothing answered on {host}:{port} within {timeout_s:.0f} s")


def _pg_bin_dir() -> Path:
    """The PostgreSQL binaries shipped in the ``pgserver`` wheel (found without importing it:
    its package import probes runtime directories and warns)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the pgserver package is not installed: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_bin(name: str) -> str:
    return str(_pg_bin_dir() / name)


def _ensure_system_user(name: str) -> Any:
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _ensure_traversable(path: Path) -> None:
    """Let other users traverse every parent of ``path`` (o+x), as the server user must."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o005)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the ``pgserver`` wheel on ``host:port`` with trust authentication.

    ``start()`` initialises ``data_dir`` on first use and is a no-op when the server already runs;
    ``stop()`` is a fast shutdown. Databases are created UTF-8 with the C.UTF-8 locale so
    ``lower()`` folds non-ASCII letters the way the identity normaliser does.
    """

    data_dir: Path
    port: int
    host: str = HOST

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run_as(self) -> dict[str, Any]:
        """subprocess kwargs that drop root privileges (initdb and postgres refuse root)."""
        if os.geteuid() != 0:
            return {}
        entry = _ensure_system_user(PG_SYSTEM_USER)
        _ensure_traversable(_pg_bin_dir().parent)
        _ensure_traversable(self.data_dir.parent)
        for path in (self.data_dir, self.log_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_pg_bin("pg_ctl"), "-D", str(self.data_dir), *args],
            check=check,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            **self._run_as(),
        )

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._pg_ctl("status", check=False).returncode == 0

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        run_as = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = subprocess.run(
                [
                    _pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
                ],
                check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "LC_ALL": "C.UTF-8"}, **run_as,
            )  # fmt: skip
            if initdb.returncode != 0:
                raise ServiceError(f"initdb of {self.data_dir} failed: {initdb.stdout.strip()[-2000:]}")
        if self.is_running():
            return
        if not port_is_free(self.port, self.host):
            raise ServiceError(
                f"port {self.port} on {self.host} is taken: set GOVERNANCE_PG_PORT to a free port"
            )
        options = f"-h {self.host} -p {self.port} -k {self.data_dir} -c fsync=off -c full_page_writes=off"
        result = self._pg_ctl("-w", "-t", "60", "-l", str(self.log_file), "-o", options, "start", check=False)
        if result.returncode != 0:
            tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise ServiceError(f"PostgreSQL did not start: {result.stdout.strip()}\n{tail}")

    def stop(self) -> None:
        if self.is_running():
            self._pg_ctl("-m", "fast", "-w", "stop", check=False)

    def create_database(self, name: str) -> None:
        """Create ``name`` if it does not exist (UTF-8, C.UTF-8 collation)."""
        create_database(self.url(), name)


def create_database(admin_url: str, name: str) -> None:
    """Create database ``name`` (UTF-8, C.UTF-8 locale) on the server of ``admin_url`` if absent."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
            ).format(sql.Identifier(name))
        )


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------------------------
# The demo/UI stack: long-running background processes recorded in .state/services.json
# --------------------------------------------------------------------------------------------

APP_DATABASE = "aircalls"
WAREHOUSE_DATABASE = "aircalls_warehouse"  # the analytics warehouse: a second database on the same server
AIRFLOW_DATABASE = "airflow"


@dataclass(frozen=True)
class StackPorts:
    """Default ports lie below Linux's ephemeral range (32768-60999): a port in it can be taken
    at any moment as the source port of an outgoing connection (which SO_REUSEADDR cannot share),
    so a busy machine made `make demo` fail with "port ... is taken"."""

    postgres: int
    s3: int
    payments: int
    crm: int
    support_desk: int = 29103

    @classmethod
    def from_env(cls) -> StackPorts:
        return cls(
            postgres=int(os.environ.get("GOVERNANCE_PG_PORT", "25432")),
            s3=int(os.environ.get("GOVERNANCE_S3_PORT", "29000")),
            payments=int(os.environ.get("GOVERNANCE_PAYMENTS_PORT", "29101")),
            crm=int(os.environ.get("GOVERNANCE_CRM_PORT", "29102")),
            support_desk=int(os.environ.get("GOVERNANCE_SUPPORT_DESK_PORT", "29103")),
        )


def _spawn(args: list[str], log_path: Path) -> int:
    """Start a detached background process (own session, so Ctrl-C in make does not kill it)."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a child of this process that exited is reaped here (``make demo``
    starts the services and stops them itself), and a zombie counts as gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def airflow_environment(ports: StackPorts, keys: dict[str, Any], state_dir: Path) -> dict[str, str]:
    """The ``AIRFLOW_CONN_*`` and Airflow settings that point at the embedded stack."""

    app = {
        "conn_type": "postgres", "host": HOST, "port": ports.postgres, "login": "postgres",
        "schema": APP_DATABASE,
    }  # fmt: skip
    return {
        "AIRFLOW_CONN_AIRCALLS_APP": json.dumps(app),
        "AIRFLOW_CONN_GOVERNANCE_DB": json.dumps(app),
        "AIRFLOW_CONN_AIRCALLS_WAREHOUSE": json.dumps({**app, "schema": WAREHOUSE_DATABASE}),
        "AIRFLOW_CONN_AIRCALLS_OBJECTS": json.dumps(
            {
                "conn_type": "aws", "login": "demo-access-key", "password": "demo-secret-key",
                "extra": {"endpoint_url": f"http://{HOST}:{ports.s3}", "region_name": "us-east-1"},
            }
        ),  # fmt: skip
        # The call-event store: moto's server serves DynamoDB on the S3 API's port.
        "AIRFLOW_CONN_AIRCALLS_EVENTS": json.dumps(
            {
                "conn_type": "aws", "login": "demo-access-key", "password": "demo-secret-key",
                "extra": {"endpoint_url": f"http://{HOST}:{ports.s3}", "region_name": "us-east-1"},
            }
        ),  # fmt: skip
        "AIRFLOW_CONN_PAYMENTS_PROCESSOR": json.dumps(
            {"conn_type": "http", "host": f"http://{HOST}", "port": ports.payments, "password": keys["standin_api_key"]}
        ),
        "AIRFLOW_CONN_CRM": json.dumps(
            {"conn_type": "http", "host": f"http://{HOST}", "port": ports.crm, "password": keys["standin_api_key"]}
        ),
        # OAuth 2 client credentials: login is the client id, password the client secret.
        "AIRFLOW_CONN_SUPPORT_DESK": json.dumps(
            {"conn_type": "http", "host": f"http://{HOST}", "port": ports.support_desk, "login": "governance",
             "password": keys["standin_api_key"]}  # fmt: skip
        ),
        "AIRFLOW_CONN_GOVERNANCE_HASH_KEY": json.dumps(keys["hash_key"]),
        "AIRFLOW_CONN_GOVERNANCE_ENCRYPTION_KEY": json.dumps(keys["encryption_key"]),
        "AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY": json.dumps(keys["ledger_key"]),
        # Lineage events (redacted) as JSON lines under .state/lineage; Marquez in docker-compose.
        **openlineage_env(events_dir=state_dir / "lineage"),
        "GOVERNANCE_OBJECTS_BUCKET": objects_bucket(),
        # The embedded S3 server keeps objects in memory: ledger anchors are also kept on disk, so
        # tamper evidence survives a restart of the services (governance.ledger.anchor_dir).
        "GOVERNANCE_LEDGER_ANCHOR_DIR": str(state_dir / "ledger-anchors"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://postgres@{HOST}:{ports.postgres}/{AIRFLOW_DATABASE}"
        ),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES": AIRFLOW_SENSITIVE_NAMES,
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW_HOME": str(state_dir / "airflow"),
    }


def _load_or_create_keys(state_dir: Path) -> dict[str, Any]:
    """Demo key material, generated once per checkout into .state (never committed)."""
    import secrets


    path = state_dir / "keys.json"
    keys: dict[str, Any] = dict(json.loads(path.read_text())) if path.exists() else {}
    wanted = {
        "hash_key": lambda: generate_key_connection("hash"),
        "encryption_key": lambda: generate_key_connection("encryption"),
        "ledger_key": lambda: generate_key_connection("hash", "ledger-1"),
        "standin_api_key": lambda: secrets.token_urlsafe(24),
    }
    missing = [name for name in wanted if name not in keys]
    for name in missing:  # keys are never replaced: that would orphan what they protect
        keys[name] = wanted[name]()
    if missing:
        path.write_text(json.dumps(keys, indent=2))
        path.chmod(0o600)
    return keys


def start_stack(state_dir: Path = STATE_DIR) -> dict[str, str]:
    """Start every embedded service (idempotent) and return the Airflow environment for them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = StackPorts.from_env()
    state_file = state_dir / "services.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}

    def save_state() -> None:  # after every spawn: a later failure must not orphan a process
        state_file.write_text(json.dumps(state, indent=2))

    pg = EmbeddedPostgres(state_dir / "pgdata", ports.postgres)
    state.update({"ports": ports.__dict__, "pgdata": str(pg.data_dir)})
    pg.start()
    save_state()
    pg.create_database(APP_DATABASE)
    pg.create_database(WAREHOUSE_DATABASE)
    pg.create_database(AIRFLOW_DATABASE)

    if not (state.get("s3_pid") and _pid_alive(int(state["s3_pid"]))):
        if not port_is_free(ports.s3):
            raise ServiceError(f"port {ports.s3} is taken: set GOVERNANCE_S3_PORT to a free port")
        state["s3_pid"] = _spawn(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports.s3)], state_dir / "s3.log"
        )
        save_state()
    wait_for_port(ports.s3)

    keys = _load_or_create_keys(state_dir)
    if not (state.get("standins_pid") and _pid_alive(int(state["standins_pid"]))):
        for port in (ports.payments, ports.crm, ports.support_desk):
            if not port_is_free(port):
                raise ServiceError(
                    f"port {port} is taken: set GOVERNANCE_PAYMENTS_PORT/GOVERNANCE_CRM_PORT/GOVERNANCE_SUPPORT_DESK_PORT"
                )
        state["standins_pid"] = _spawn(
            [
                sys.executable, "-m", "governance_dev.standins", "--host", HOST,
                "--payments-port", str(ports.payments), "--crm-port", str(ports.crm),
                "--support-desk-port", str(ports.support_desk),
                f"--api-key={keys['standin_api_key']}", f"--state-file={state_dir / 'standins.json'}",
            ],
            state_dir / "standins.log",
        )  # fmt: skip
        save_state()
    wait_for_port(ports.payments)
    wait_for_port(ports.crm)
    wait_for_port(ports.support_desk)

    (state_dir / "lineage").mkdir(exist_ok=True)  # the OpenLineage file transport writes here
    state.update({"ports": ports.__dict__, "pgdata": str(pg.data_dir)})
    save_state()
    env = airflow_environment(ports, keys, state_dir)
    env_file = state_dir / "airflow.env"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    return env


# How long `services stop` lets a process exit after SIGTERM before it sends SIGKILL.
STOP_GRACE_S = float(os.environ.get("GOVERNANCE_STOP_GRACE_SECONDS", "15"))


def stop_process(pid: int, *, grace_s: float = STOP_GRACE_S) -> str:
    """SIGTERM ``pid``, wait up to ``grace_s`` for it to exit, then SIGKILL it (and wait up to 5 s).

    Returns ``"gone"`` (it was not running), ``"stopped"`` or ``"killed"``; raises ServiceError
    when it survives SIGKILL too.
    """
    if not _pid_alive(pid):
        return "gone"
    os.kill(pid, signal.SIGTERM)
    for signal_sent, wait_s in (("stopped", grace_s), ("killed", 5.0)):
        if signal_sent == "killed":
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return signal_sent
            time.sleep(0.1)
    raise ServiceError(f"process {pid} did not exit even after SIGKILL")


def stop_stack(state_dir: Path = STATE_DIR, *, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop what start_stack started, each process given ``grace_s`` to exit before it is killed;
    data stays in .state for the next start. Returns what had to be killed, in words."""
    state_file = state_dir / "services.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    killed: list[str] = []
    for key, name in (("standins_pid", "the processor stand-ins"), ("s3_pid", "the S3 server")):
        pid = state.pop(key, None)
        if pid and stop_process(int(pid), grace_s=grace_s) == "killed":
            killed.append(f"{name} (pid {pid}) did not exit within {grace_s:g} s of SIGTERM and was killed")
    ports = StackPorts(**state["ports"]) if "ports" in state else StackPorts.from_env()
    EmbeddedPostgres(Path(state.get("pgdata", state_dir / "pgdata")), ports.postgres).stop()
    state_file.write_text(json.dumps(state, indent=2))
    return killed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "env"], help="start/stop the stack, or print its environment")


def run(args: argparse.Namespace) -> int:
    if args.action == "start":
        env = start_stack()
        print(f"services running; environment in {STATE_DIR / 'airflow.env'} (source it)")
        print(f"  PostgreSQL  {json.loads(env['AIRFLOW_CONN_AIRCALLS_APP'])['port']} (databases aircalls, aircalls_warehouse, airflow)")
        print(f"  S3 API      {json.loads(env['AIRFLOW_CONN_AIRCALLS_OBJECTS'])['extra']['endpoint_url']}")
    elif args.action == "stop":
        for line in stop_stack():
            print(f"warning: {line}", file=sys.stderr)
        print("services stopped")
    else:
        env_file = STATE_DIR / "airflow.env"
        if not env_file.exists():
            print("services were never started: run `python -m governance_dev services start`", file=sys.stderr)
            return 1
        print(env_file.read_text(), end="")
    return 0
