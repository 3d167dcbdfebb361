"""Task-failure alerts for every governance DAG, without personal data.

Attach it to every task through the DAG's ``default_args``::

    from governance.notifier import GovernanceFailureNotifier

    @dag(..., default_args={"owner": "privacy", "retries": 2,
                            "on_failure_callback": [GovernanceFailureNotifier()]})

It runs after a task's last try has failed (in the task's own process; in the DAG processor for
tasks whose process died). Contract:

* Always: one ERROR log line ``task_failed {json}`` with ``dag_id``, ``run_id``, ``task_id``,
  ``try_number``, ``exception_type`` (the exception's class name) and ``request_id`` (from the run
  configuration, when it has the form of a privacy request id, ``era-20261128-0123456789ab``).
* Nothing else from the run configuration is read: a trigger form can hold a person's e-mail or
  phone. The exception's message is never read either (it may quote data); only its class name.
* When the Airflow connection ``governance_alerts`` exists and has a host: a JSON POST of the same
  fields plus ``event`` and ``log_url`` to ``<base url><extra.endpoint>``; extras ``headers`` and
  ``timeout`` (seconds, default 5); login/password, when set, are sent as HTTP basic auth.
* When that connection's extra has ``email_to`` (a list or a comma-separated string): an e-mail
  with the same fields through the SMTP connection named by ``extra.smtp_conn_id`` (default
  ``smtp_default``) with the smtp provider's ``SmtpHook``; sender from ``extra.email_from`` or the
  SMTP connection's own ``from_email``.
* A missing ``governance_alerts`` connection means log only. No delivery problem ever raises out of
  the callback: it is logged as a WARNING naming only the HTTP status code or the error's class
  (never the URL, which may embed a token). The task's own failure is what matters.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from governance.config import ALERTS_CONN_ID
from governance.connections import ConnectionInfo, ConnectionNotConfigured, get_connection

if TYPE_CHECKING:
    from airflow.sdk import Context

logger = logging.getLogger(__name__)

DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
DEFAULT_SMTP_CONN_ID = "smtp_default"

# The form of governance.privacy_requests.REQUEST_ID_RE (``era-20261128-0123456789ab``), repeated
# here so DAG files importing the notifier do not pull in psycopg and the crypto stack at parse time
# (tests/integration/test_notifier.py keeps the two in step). Anything else typed into the
# request_id field (an e-mail, a phone, free text) is not forwarded: it would put what the person
# typed into logs and alert channels.
_REQUEST_ID_PATTERN = re.compile(r"[a-z]{3}-[0-9]{8}-[0-9a-f]{12}")
_TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,250}")


@dataclass(frozen=True)
class TaskFailureAlert:
    """What an alert says about a failed task: identifiers and a class name, never data."""

    dag_id: str | None
    run_id: str | None
    task_id: str | None
    try_number: int | None
    exception_type: str | None
    request_id: str | None
    log_url: str | None = None
    failed_tasks: tuple[str, ...] = ()

    def log_fields(self) -> dict[str, Any]:
        """The fields of the ERROR log line (no URL: the log line already sits beside the task)."""
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "try_number": self.try_number,
            "exception_type": self.exception_type,
            "request_id": self.request_id,
            **({"failed_tasks": list(self.failed_tasks)} if self.failed_tasks else {}),
        }

    def webhook_payload(self) -> dict[str, Any]:
        """The JSON body posted to the webhook: ``event``, the log fields, ``log_url`` when known."""
        payload: dict[str, Any] = {"event": "task_failed", **self.log_fields()}
        if self.log_url:
            payload["log_url"] = self.log_url
        return payload


def safe_request_id(conf: Any) -> str | None:
    """``conf["request_id"]`` when it has the form of a privacy request id, else None.

    Only this one key of the run configuration is ever read.
    """
    if not isinstance(conf, Mapping):
        return None
    value = conf.get("request_id")
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text if _REQUEST_ID_PATTERN.fullmatch(text) else None


def _text_attr(obj: Any, name: str) -> str | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, str) and value else None


def failure_alert_from_context(context: Mapping[str, Any]) -> TaskFailureAlert:
    """Build the alert from an Airflow callback context.

    Reads ``ti`` (or ``task_instance``), ``dag_run``, ``run_id``, ``dag`` and ``exception``; tolerates
    any of them missing (DAG-processor callbacks carry no exception). From ``dag_run.conf`` it reads
    ``request_id`` only.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag = context.get("dag")

    try_number = getattr(ti, "try_number", None)
    exception = context.get("exception")
    try:
        log_url = _text_attr(ti, "log_url")
    except Exception:  # RuntimeTaskInstance.log_url reads config; an alert must not depend on it
        log_url = None

    # A request workflow's last task raises governance.workflows.outcome.RequestNotServed, which
    # carries the request id and the failed steps' task ids (ids only) for the alert.
    fields = getattr(exception, "alert_fields", None)
    fields = fields if isinstance(fields, Mapping) else {}
    request_id = safe_request_id(getattr(dag_run, "conf", None)) or safe_request_id(fields)
    failed = fields.get("failed_tasks")
    failed_tasks = tuple(str(t) for t in failed if _TASK_ID_PATTERN.fullmatch(str(t))) if isinstance(failed, list) else ()
    return TaskFailureAlert(
        dag_id=_text_attr(ti, "dag_id") or _text_attr(dag_run, "dag_id") or _text_attr(dag, "dag_id"),
        run_id=_text_attr(ti, "run_id") or context.get("run_id") or _text_attr(dag_run, "run_id"),
        task_id=_text_attr(ti, "task_id"),
        try_number=try_number if isinstance(try_number, int) and not isinstance(try_number, bool) else None,
        # A string "exception" (a reason message) is not a class name and may quote data: dropped.
        exception_type=type(exception).__name__ if isinstance(exception, BaseException) else None,
        request_id=request_id,
        log_url=log_url,
        failed_tasks=failed_tasks,
    )


def _email_recipients(extra: Mapping[str, Any]) -> list[str]:
    raw = extra.get("email_to")
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(raw, list | tuple):
        return [str(part).strip() for part in raw if str(part).strip()]
    return []


class GovernanceFailureNotifier(BaseNotifier):
    """Log every task failure without personal data; optionally alert a webhook and by e-mail.

    See the module docstring for the full contract. ``notify`` never raises.
    """

    def __init__(self, *, conn_id: str = ALERTS_CONN_ID, only_task_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        # Request workflows alert once per run, from their last task (request_outcome), which
        # fails whenever any step failed and names it: the steps' own failures are only logged.
        self.only_task_id = only_task_id

    def notify(self, context: Context) -> None:
        """Log the failure, then deliver it to the configured channels; never raises."""
        ti = context.get("ti") or context.get("task_instance")
        if self.only_task_id and _text_attr(ti, "task_id") not in (None, self.only_task_id):
            logger.info("task failed; the run's %s task alerts for it", self.only_task_id)
            return
        try:
            alert = failure_alert_from_context(context)
        except Exception as exc:  # a malformed context must not hide the task's own failure
            logger.error("task_failed alert could not be built: %s", type(exc).__name__)
            return
        logger.error("task_failed %s", json.dumps(alert.log_fields(), sort_keys=True))

        connection = self._alerts_connection()
        if connection is None:
            return
        if connection.host:
            self._post_webhook(connection, alert)
        if _email_recipients(connection.extra):
            self._send_email(connection, alert)

    def _alerts_connection(self) -> ConnectionInfo | None:
        try:
            return get_connection(self.conn_id)
        except ConnectionNotConfigured:
            return None
        except Exception as exc:
            logger.warning("alerts connection %r unreadable: %s", self.conn_id, type(exc).__name__)
            return None

    def deliver(self, payload: Mapping[str, Any], *, subject: str) -> None:
        """Deliver another governance event (e.g. a request's deadline alert) through the same
        channels as a task failure: one log line, the webhook, the e-mail. ``payload`` must hold
        ids, states and dates only. Never raises."""
        fields = dict(payload)
        logger.warning("%s %s", fields.get("event", "governance_event"), json.dumps(fields, sort_keys=True, default=str))
        connection = self._alerts_connection()
        if connection is None:
            return
        if connection.host:
            self._post_webhook(connection, fields)
        if _email_recipients(connection.extra):
            self._send_email(connection, fields, subject=subject)

    def _post_webhook(self, connection: ConnectionInfo, alert: TaskFailureAlert | Mapping[str, Any]) -> None:
        """POST the payload; a non-2xx answer or a transport error is logged, not raised."""
        import requests

        body = alert.webhook_payload() if isinstance(alert, TaskFailureAlert) else json.loads(json.dumps(alert, default=str))

        extra = connection.extra
        endpoint = str(extra.get("endpoint") or "")
        if endpoint and not endpoint.startswith("/"):
            endpoint = "/" + endpoint
        url = connection.base_url() + endpoint
        headers = {str(k): str(v) for k, v in dict(extra.get("headers") or {}).items()}
        auth = (connection.login, connection.password) if connection.login else None
        try:
            timeout = float(extra.get("timeout", DEFAULT_WEBHOOK_TIMEOUT_S))
            response = requests.post(
                url, json=body, headers=headers, auth=auth, timeout=timeout
            )
        except Exception as exc:
            logger.warning("failure webhook not delivered: %s", type(exc).__name__)
            return
        if not response.ok:
            logger.warning("failure webhook not delivered: HTTP %s", response.status_code)

    def _send_email(
        self, connection: ConnectionInfo, alert: TaskFailureAlert | Mapping[str, Any], *, subject: str | None = None
    ) -> None:
        """Send the alert by e-mail through SmtpHook; any error is logged by class, not raised."""
        extra = connection.extra
        smtp_conn_id = str(extra.get("smtp_conn_id") or DEFAULT_SMTP_CONN_ID)
        if isinstance(alert, TaskFailureAlert):
            fields = alert.webhook_payload()
            subject = f"[governance] task failed: {alert.dag_id}.{alert.task_id}"
        else:
            fields = dict(alert)
            subject = f"[governance] {subject or fields.get('event')}"
        rows = "".join(
            f"<tr><th align='left'>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
            for key, value in fields.items()
        )
        try:
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            with SmtpHook(smtp_conn_id=smtp_conn_id) as smtp:
                smtp.send_email_smtp(
                    to=_email_recipients(extra),
                    subject=subject,
                    html_content=f"<table>{rows}</table>",
                    from_email=extra.get("email_from") or None,
                )
        except Exception as exc:
            logger.warning("failure e-mail not sent: %s", type(exc).__name__)
