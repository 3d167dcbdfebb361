"""GovernanceFailureNotifier against a real local webhook receiver and a real SMTP listener.

The callback context is built the way Airflow 3.3 builds it for ``on_failure_callback``
(``RuntimeTaskInstance.get_template_context()`` plus ``context["exception"]``), from a run whose
configuration holds what a trigger form would: the person's e-mail and phone beside the request id.
"""

from __future__ import annotations

import email
import json
import logging
import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from governance.notifier import GovernanceFailureNotifier, failure_alert_from_context, safe_request_id

SUBJECT_EMAIL = "jane.doe@example.com"
SUBJECT_PHONE = "+44 7700 900123"
REQUEST_ID = "era-20261128-0123456789ab"
DAG_ID = "dsr_erasure"
TASK_ID = "erase_app_rows"
RUN_ID = "manual__2026-11-28T10:00:00+00:00"
ALERT_TOKEN = "alert-token-not-for-logs"
BASE_URL = "https://airflow.aircalls.test"


# --- a real webhook receiver -----------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    port: int
    status: int = 204
    requests: list[RecordedRequest] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.requests.append(
                RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(state.status)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _alerts_connection(monkeypatch: pytest.MonkeyPatch, port: int, **extra: Any) -> None:
    conn = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": port,
        "extra": {
            "endpoint": "/hooks/airflow",
            "headers": {"X-Alert-Token": ALERT_TOKEN},
            "timeout": 5,
            **extra,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_ALERTS", json.dumps(conn))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the callback context, as Airflow builds it ------------------------------------------------


@pytest.fixture
def failure_context(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The context a failed task's on_failure_callback receives in Airflow 3.3."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, Param
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)  # log_url is built from [api] base_url
    with DAG(
        DAG_ID,
        schedule=None,
        params={"email": Param(None, type=["null", "string"]), "phone": Param(None, type=["null", "string"])},
    ) as dag:
        task = EmptyOperator(task_id=TASK_ID)
    started = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    dag_run = DagRun(
        dag_id=dag.dag_id,
        run_id=RUN_ID,
        logical_date=started,
        data_interval_start=started,
        data_interval_end=started,
        run_after=started,
        start_date=started,
        end_date=None,
        run_type="manual",
        state="running",
        conf={"request_id": REQUEST_ID, "email": SUBJECT_EMAIL, "phone": SUBJECT_PHONE},
        consumed_asset_events=[],
        partition_key=None,
    )
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id=TASK_ID,
        dag_id=DAG_ID,
        run_id=RUN_ID,
        try_number=3,
        map_index=-1,
        task=task,
        _ti_context_from_server=TIRunContext.model_construct(dag_run=dag_run, max_tries=2),
    )
    context: dict[str, Any] = dict(ti.get_template_context())
    # What the task raised: database errors quote the offending value.
    context["exception"] = ValueError(
        f"duplicate key value violates unique constraint: (email)=({SUBJECT_EMAIL})"
    )
    return context


EXPECTED_LOG_URL = (
    f"{BASE_URL}/dags/{DAG_ID}/runs/manual__2026-11-28T10%3A00%3A00%2B00%3A00/tasks/{TASK_ID}?try_number=3"
)
EXPECTED_PAYLOAD = {
    "event": "task_failed",
    "dag_id": DAG_ID,
    "run_id": RUN_ID,
    "task_id": TASK_ID,
    "try_number": 3,
    "exception_type": "ValueError",
    "request_id": REQUEST_ID,
    "log_url": EXPECTED_LOG_URL,
}


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "governance.notifier" and r.levelno == logging.ERROR
    ]


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_receives_exactly_the_failure_identifiers(
    receiver: WebhookReceiver, failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _alerts_connection(monkeypatch, receiver.port)

    GovernanceFailureNotifier().notify(failure_context)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.path == "/hooks/airflow"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-alert-token"] == ALERT_TOKEN
    assert json.loads(request.body) == EXPECTED_PAYLOAD


def test_called_the_way_airflow_calls_callbacks_it_still_posts(
    receiver: WebhookReceiver, failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task runner calls the notifier object itself (BaseNotifier.__call__ renders templates first).
    _alerts_connection(monkeypatch, receiver.port)

    GovernanceFailureNotifier()(failure_context)

    assert [json.loads(r.body) for r in receiver.requests] == [EXPECTED_PAYLOAD]


def test_person_data_from_run_conf_and_exception_reaches_neither_payload_nor_logs(
    receiver: WebhookReceiver,
    failure_context: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _alerts_connection(monkeypatch, receiver.port)
    caplog.set_level(logging.DEBUG)

    GovernanceFailureNotifier().notify(failure_context)

    body = receiver.requests[0].body.decode()
    for secret in (SUBJECT_EMAIL, SUBJECT_PHONE, "duplicate key", ALERT_TOKEN):
        assert secret not in caplog.text
    for secret in (SUBJECT_EMAIL, SUBJECT_PHONE, "duplicate key"):
        assert secret not in body
    # ...while the one structured ERROR line still says what failed, and for which request.
    (line,) = _error_lines(caplog)
    assert line.startswith("task_failed ")
    assert json.loads(line.removeprefix("task_failed ")) == {
        "dag_id": DAG_ID,
        "run_id": RUN_ID,
        "task_id": TASK_ID,
        "try_number": 3,
        "exception_type": "ValueError",
        "request_id": REQUEST_ID,
    }


@pytest.mark.parametrize("status", [500, 404])
def test_receiver_error_status_does_not_raise_and_logs_only_the_status(
    status: int,
    receiver: WebhookReceiver,
    failure_context: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.status = status
    _alerts_connection(monkeypatch, receiver.port)

    GovernanceFailureNotifier().notify(failure_context)

    assert len(receiver.requests) == 1
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "governance.notifier"
    ]
    assert warnings == [f"failure webhook not delivered: HTTP {status}"]
    assert f"127.0.0.1:{receiver.port}" not in caplog.text  # the URL may embed a token: never logged


def test_receiver_down_does_not_raise_and_the_failure_is_still_logged(
    failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _alerts_connection(monkeypatch, _closed_port())

    GovernanceFailureNotifier().notify(failure_context)

    assert len(_error_lines(caplog)) == 1
    assert "failure webhook not delivered: ConnectionError" in caplog.text


def test_without_alerts_connection_nothing_is_sent_and_the_failure_is_logged(
    receiver: WebhookReceiver,
    failure_context: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GOVERNANCE_ALERTS", raising=False)

    GovernanceFailureNotifier().notify(failure_context)

    assert receiver.requests == []
    assert len(_error_lines(caplog)) == 1
    assert not [r for r in caplog.records if r.name == "governance.notifier" and r.levelno == logging.WARNING]


def test_alerts_connection_without_host_only_logs(
    receiver: WebhookReceiver, failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOVERNANCE_ALERTS", json.dumps({"conn_type": "http", "port": receiver.port})
    )

    GovernanceFailureNotifier().notify(failure_context)

    assert receiver.requests == []


# --- what is taken from the context ----------------------------------------------------------


def test_request_id_is_forwarded_only_in_the_privacy_request_id_form() -> None:
    from governance.privacy_requests import REQUEST_ID_RE, new_request_id

    issued = [new_request_id("export", datetime.now(UTC)), new_request_id("erasure", datetime.now(UTC))]
    for request_id in issued:
        assert REQUEST_ID_RE.match(request_id)
        assert safe_request_id({"request_id": request_id}) == request_id
    # What a person might type into the request_id field of a trigger form is not an id.
    for typed in (SUBJECT_EMAIL, SUBJECT_PHONE, "447700900123", "Jane Doe", "", None, 42):
        assert safe_request_id({"request_id": typed}) is None


def test_processor_side_context_without_exception_or_conf_still_identifies_the_task() -> None:
    # Callbacks run by the DAG processor (a task whose process died) carry no "exception".
    ti = type("TI", (), {"dag_id": DAG_ID, "run_id": RUN_ID, "task_id": TASK_ID, "try_number": 1})()

    alert = failure_alert_from_context({"ti": ti, "run_id": RUN_ID, "dag_run": None})

    assert alert.webhook_payload() == {
        "event": "task_failed",
        "dag_id": DAG_ID,
        "run_id": RUN_ID,
        "task_id": TASK_ID,
        "try_number": 1,
        "exception_type": None,
        "request_id": None,
    }


def test_notifier_in_default_args_is_attached_to_every_task() -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG(
        "notifier_wiring", schedule=None, default_args={"on_failure_callback": [GovernanceFailureNotifier()]}
    ) as dag:
        EmptyOperator(task_id="a") >> EmptyOperator(task_id="b")

    for task in dag.tasks:
        assert [type(cb) for cb in task.on_failure_callback] == [GovernanceFailureNotifier]


# --- e-mail through a real SMTP listener -----------------------------------------------------


@dataclass
class SmtpSink:
    port: int
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A minimal SMTP server (RFC 5321 subset smtplib uses, no TLS/auth) that keeps every message."""
    state = SmtpSink(port=0)

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            self.reply("220 sink.aircalls.test ESMTP")
            sender, recipients = "", []
            while line := self.rfile.readline():
                verb = line[:4].decode().upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 sink.aircalls.test")
                elif verb == "MAIL":
                    sender, recipients = line.decode().split(":", 1)[1].strip(), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk
                    state.messages.append((sender, recipients, data))
                    self.reply("250 OK queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("250 OK")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _smtp_connection(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_SMTP", json.dumps(conn))


def test_email_alert_goes_to_the_listed_recipients_without_person_data(
    smtp_sink: SmtpSink, failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _smtp_connection(monkeypatch, smtp_sink.port)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOVERNANCE_ALERTS",
        json.dumps(
            {
                "conn_type": "http",
                "extra": {
                    "email_to": ["privacy-oncall@aircalls.test", "dpo@aircalls.test"],
                    "email_from": "airflow@aircalls.test",
                    "smtp_conn_id": "governance_smtp",
                },
            }
        ),
    )

    GovernanceFailureNotifier().notify(failure_context)

    assert len(smtp_sink.messages) == 1
    sender, recipients, raw = smtp_sink.messages[0]
    assert sender.strip("<>") == "airflow@aircalls.test"
    assert recipients == ["privacy-oncall@aircalls.test", "dpo@aircalls.test"]
    message = email.message_from_bytes(raw)
    assert message["Subject"] == f"[governance] task failed: {DAG_ID}.{TASK_ID}"
    html_body = "".join(
        part.get_payload(decode=True).decode()
        for part in message.walk()
        if part.get_content_type() == "text/html"
    )
    for value in (DAG_ID, TASK_ID, REQUEST_ID, "ValueError"):
        assert value in html_body
    for secret in (SUBJECT_EMAIL, SUBJECT_PHONE, "duplicate key"):
        assert secret not in html_body
        assert secret not in raw.decode(errors="replace")


def test_smtp_server_down_does_not_raise_and_the_webhook_is_still_posted(
    receiver: WebhookReceiver,
    failure_context: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _smtp_connection(monkeypatch, _closed_port())
    _alerts_connection(
        monkeypatch,
        receiver.port,
        email_to="privacy-oncall@aircalls.test",
        email_from="airflow@aircalls.test",
        smtp_conn_id="governance_smtp",
    )

    GovernanceFailureNotifier().notify(failure_context)

    assert len(receiver.requests) == 1
    assert "failure e-mail not sent: ConnectionRefusedError" in caplog.text


def test_a_request_workflows_steps_do_not_alert_only_its_last_task_does(
    receiver: WebhookReceiver, failure_context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _alerts_connection(monkeypatch, receiver.port)
    GovernanceFailureNotifier(only_task_id="request_outcome").notify(failure_context)  # a step of the run
    assert receiver.requests == [], "a failed step is alerted by the run's request_outcome task, not twice"
    GovernanceFailureNotifier(only_task_id=TASK_ID).notify(failure_context)
    assert len(receiver.requests) == 1 and json.loads(receiver.requests[0].body)["task_id"] == TASK_ID


def test_a_deadline_alert_reaches_the_webhook_with_ids_and_dates_only(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from governance.workflows.privacy_request_intake import notifier_sender

    _alerts_connection(monkeypatch, receiver.port)
    alert = {"event": "request_overdue", "request_id": REQUEST_ID, "kind": "erasure", "status": "dispatched",
             "due_at": "2026-12-28T10:00:00+00:00", "days_left": -1}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="governance.notifier"):
        notifier_sender()(alert)
    [posted] = receiver.requests
    assert posted.path == "/hooks/airflow" and json.loads(posted.body) == alert
    assert any("request_overdue" in r.getMessage() and REQUEST_ID in r.getMessage() for r in caplog.records)
