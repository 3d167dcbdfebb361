"""Every wait has a deadline (governance.deadlines): a system that accepts connections and never
answers fails the call within the configured bound, saying what did not answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from governance.connectors.processors import ProcessorClient, ProcessorUnavailable
from governance.datamap import load_datamap
from governance.db import conninfo_for
from governance.erasure.executor import connection_lost
from governance.identity import SubjectIdentities
from governance.objectstore import ObjectStoreUnavailable, not_answering, s3_client

pytestmark = pytest.mark.integration


@pytest.fixture
def frozen_endpoint() -> Iterator[str]:
    """A TCP server on loopback that accepts every connection and never answers: what a frozen
    (SIGSTOPped) server looks like from the client, once the kernel has accepted the connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        listener.close()


def test_a_frozen_object_store_fails_a_call_within_the_configured_deadline_naming_its_endpoint(
    frozen_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FROZEN_OBJECTS", json.dumps(
        {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": frozen_endpoint,
                                                                      "region_name": "us-east-1"}}))  # fmt: skip
    monkeypatch.setenv("GOVERNANCE_S3_READ_TIMEOUT_S", "1")
    monkeypatch.setenv("GOVERNANCE_S3_MAX_ATTEMPTS", "2")
    client = s3_client("frozen_objects")
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        client.head_object(Bucket="aircalls-data", Key="recordings/1.wav")
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 15, f"two attempts of 1 s each, not botocore's 60 s default ({elapsed:.1f} s)"
    unavailable = not_answering(raised.value, client)
    assert isinstance(unavailable, ObjectStoreUnavailable)
    assert f"object store not answering at {frozen_endpoint}" in str(unavailable) and "2 attempt(s)" in str(unavailable)
    assert not_answering(ValueError("not a timeout"), client) is None


def test_a_frozen_processor_fails_a_look_up_within_the_configured_deadline(
    frozen_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = load_datamap().processor("crm")
    assert processor is not None
    monkeypatch.setenv(f"AIRFLOW_CONN_{processor.connection_id.upper()}",
                       json.dumps({"conn_type": "http", "host": frozen_endpoint, "password": "key"}))  # fmt: skip
    monkeypatch.setenv("GOVERNANCE_HTTP_READ_TIMEOUT_S", "1")
    client = ProcessorClient.from_airflow(processor, attempts=2, backoff_s=0.1)
    assert client.timeout_s == (5.0, 1.0)
    started = time.monotonic()
    with pytest.raises(ProcessorUnavailable, match="still failing after 2 attempts"):
        client.lookup(SubjectIdentities.parse(email="someone@example.com"))
    assert time.monotonic() - started < 10


def test_sessions_carry_the_statement_lock_and_idle_deadlines_and_a_long_statement_is_cancelled(
    make_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_db("deadlines")
    parts = psycopg.conninfo.conninfo_to_dict(url)
    monkeypatch.setenv("AIRFLOW_CONN_DEADLINE_DB", json.dumps(
        {"conn_type": "postgres", "host": parts.get("host", "127.0.0.1"), "port": int(parts.get("port", 5432)),
         "login": parts.get("user", "postgres"), "schema": parts["dbname"]}))  # fmt: skip
    monkeypatch.setenv("GOVERNANCE_PG_STATEMENT_TIMEOUT_S", "1")
    monkeypatch.setenv("GOVERNANCE_PG_LOCK_TIMEOUT_S", "2")
    with psycopg.connect(conninfo_for("deadline_db")) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")}
        assert settings == {"statement_timeout": "1s", "lock_timeout": "2s", "idle_in_transaction_session_timeout": "15min"}
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")


def test_a_terminated_connection_counts_as_lost_and_a_statement_error_does_not(
    make_db: Callable[[str], str],
) -> None:
    url = make_db("lost")
    with psycopg.connect(url, autocommit=True) as victim, psycopg.connect(url, autocommit=True) as admin:
        pid = victim.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError) as lost:
            victim.execute("SELECT 1")
        assert connection_lost(lost.value)
        with pytest.raises(psycopg.Error) as bad:
            admin.execute("SELECT 1/0")
        assert not connection_lost(bad.value)
