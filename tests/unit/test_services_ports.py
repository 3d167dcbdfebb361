"""The embedded services' port checks (`make demo` twice in a row must work) and their bounded stop."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from governance_dev.services import port_is_free, stop_stack


def _leave_time_wait_on_a_listening_port() -> int:
    """Serve one connection and close it from the server side, as a stopped server does: the
    server's end of it stays in TIME_WAIT on the listening port for a minute."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the active close: TIME_WAIT is on the server's side
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_whose_last_server_stopped_a_moment_ago_counts_as_free() -> None:
    assert port_is_free(_leave_time_wait_on_a_listening_port())


def test_a_port_something_listens_on_counts_as_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert not port_is_free(int(listener.getsockname()[1]))


def test_services_stop_kills_a_process_that_ignores_sigterm_after_the_grace_period_and_says_so(tmp_path: Path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORE_SIGTERM], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # The stubborn one is reaped as init reaps detached services; the polite one is left to
    # stop_stack, as `make demo` leaves the services it started itself (an exited child must count
    # as stopped, not as a process that survived SIGKILL).
    threading.Thread(target=stubborn.wait, daemon=True).start()
    (tmp_path / "services.json").write_text(json.dumps({"s3_pid": stubborn.pid, "standins_pid": polite.pid,
                                                         "pgdata": str(tmp_path / "no-pgdata")}))  # fmt: skip
    started = time.monotonic()
    killed = stop_stack(tmp_path, grace_s=1.0)
    assert killed == [f"the S3 server (pid {stubborn.pid}) did not exit within 1 s of SIGTERM and was killed"]
    # It ignores SIGTERM and would sleep 60 s: gone within seconds, it was killed. (Its exit status
    # is not asserted: whichever of stop_stack's reaping and the waiting thread reaps it first, the
    # other sees no child, and Popen then reports 0.)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{stubborn.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{stubborn.pid}").exists(), "the process that ignores SIGTERM was killed and reaped"
    assert not Path(f"/proc/{polite.pid}").exists(), "the polite child exited and was reaped"
    assert time.monotonic() - started < 10, "the wait is bounded"
    assert "s3_pid" not in json.loads((tmp_path / "services.json").read_text())


IGNORE_SIGTERM = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_default_service_ports_lie_below_the_ephemeral_port_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outgoing connection may take any port of Linux's ephemeral range as its source port, and
    a listener cannot share it even with SO_REUSEADDR: the stack's defaults must lie below it."""
    from governance_dev.services import StackPorts

    for name in ("GOVERNANCE_PG_PORT", "GOVERNANCE_S3_PORT", "GOVERNANCE_PAYMENTS_PORT", "GOVERNANCE_CRM_PORT",
                 "GOVERNANCE_SUPPORT_DESK_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    low = 32768
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ranges.exists():
        low = min(low, int(ranges.read_text().split()[0]))
    ports = StackPorts.from_env().__dict__
    assert len(set(ports.values())) == len(ports), ports
    assert all(1024 < port < low for port in ports.values()), ports
