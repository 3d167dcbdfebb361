"""What every governance DAG shares: owner, retries with backoff, the failure notifier, tags.

DAG files import only this module and ``airflow.sdk`` at parse time; task bodies import the
heavy modules they need.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from governance.notifier import GovernanceFailureNotifier

OWNER = "privacy-engineering"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
GOVERNANCE_TAG = "governance"


def default_args(**overrides: Any) -> dict[str, Any]:
    """Task defaults for every DAG: retried with exponential backoff, failures alerted.

    ``GOVERNANCE_RETRY_DELAY_SECONDS`` (default 30) sets the first retry's delay: deployments
    with slow-recovering processors raise it; the test suite lowers it.
    """
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(seconds=float(os.environ.get("GOVERNANCE_RETRY_DELAY_SECONDS", "30"))),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": [GovernanceFailureNotifier()],
    }
    args.update(overrides)
    return args
