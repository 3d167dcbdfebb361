"""Every wait has a deadline, configured here and only here.

A governed system that stops answering must fail the task within a bound an operator can reason
about, not hang it: the task then fails (or retries) with a message that names what did not
answer, and the work done so far stays recorded (erasure progress is per step; export stages per
run), so the retry resumes. Each value is read from the environment when a client is made, so a
deployment tunes them without code:

========================================  ==========  ==============================================
variable                                  default     bounds
========================================  ==========  ==============================================
``GOVERNANCE_S3_CONNECT_TIMEOUT_S``       5           opening a connection to the S3 API
``GOVERNANCE_S3_READ_TIMEOUT_S``          30          waiting for any answer from it
``GOVERNANCE_S3_MAX_ATTEMPTS``            3           attempts per call (botocore standard retries)
``GOVERNANCE_HTTP_CONNECT_TIMEOUT_S``     5           opening a connection to a processor's API
``GOVERNANCE_HTTP_READ_TIMEOUT_S``        30          waiting for its answer
``GOVERNANCE_PG_STATEMENT_TIMEOUT_S``     900         one SQL statement (an erasure batch, an export
                                                      page): ``statement_timeout``
``GOVERNANCE_PG_LOCK_TIMEOUT_S``          60          waiting for a row or table lock
``GOVERNANCE_PG_IDLE_IN_TX_TIMEOUT_S``    900         a transaction left open by a stalled worker
``GOVERNANCE_CLAIM_STALE_AFTER_S``        300         a run holding a request that has done nothing
                                                      for this long (and is not working now) is
                                                      taken to be dead: the next run takes over
========================================  ==========  ==============================================

(An export streams objects to the store inside its database snapshot, so the idle-in-transaction
bound must exceed the slowest single upload.) So one S3 call fails after at most ``attempts x (connect or read timeout)`` plus botocore's
backoff (about 95 s with the defaults), well under the five minutes an operator should wait to
hear that the object store is frozen. Task ``execution_timeout`` values (``dag_defaults``) sit
above these, as the last resort for work that is slow rather than stuck.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive")
    return value


@dataclass(frozen=True)
class Deadlines:
    """The bounds every external call of the project runs under (see the module docstring)."""

    s3_connect_s: float = 5.0
    s3_read_s: float = 30.0
    s3_max_attempts: int = 3
    http_connect_s: float = 5.0
    http_read_s: float = 30.0
    pg_statement_s: float = 900.0
    pg_lock_s: float = 60.0
    pg_idle_in_transaction_s: float = 900.0
    claim_stale_after_s: float = 300.0

    @classmethod
    def from_env(cls) -> Deadlines:
        base = cls()
        return cls(
            s3_connect_s=_seconds("GOVERNANCE_S3_CONNECT_TIMEOUT_S", base.s3_connect_s),
            s3_read_s=_seconds("GOVERNANCE_S3_READ_TIMEOUT_S", base.s3_read_s),
            s3_max_attempts=int(_seconds("GOVERNANCE_S3_MAX_ATTEMPTS", base.s3_max_attempts)),
            http_connect_s=_seconds("GOVERNANCE_HTTP_CONNECT_TIMEOUT_S", base.http_connect_s),
            http_read_s=_seconds("GOVERNANCE_HTTP_READ_TIMEOUT_S", base.http_read_s),
            pg_statement_s=_seconds("GOVERNANCE_PG_STATEMENT_TIMEOUT_S", base.pg_statement_s),
            pg_lock_s=_seconds("GOVERNANCE_PG_LOCK_TIMEOUT_S", base.pg_lock_s),
            pg_idle_in_transaction_s=_seconds("GOVERNANCE_PG_IDLE_IN_TX_TIMEOUT_S", base.pg_idle_in_transaction_s),
            claim_stale_after_s=_seconds("GOVERNANCE_CLAIM_STALE_AFTER_S", base.claim_stale_after_s),
        )

    @property
    def http_timeout(self) -> tuple[float, float]:
        """``requests``' (connect, read) timeout."""
        return (self.http_connect_s, self.http_read_s)

    def s3_config(self) -> dict[str, object]:
        """botocore ``Config`` arguments: connect/read timeouts and bounded standard retries."""
        return {
            "connect_timeout": self.s3_connect_s,
            "read_timeout": self.s3_read_s,
            "retries": {"max_attempts": self.s3_max_attempts, "mode": "standard"},
        }

    def pg_options(self) -> str:
        """libpq ``options`` setting the three server-side timeouts for a session."""
        return " ".join(
            f"-c {name}={int(seconds * 1000)}"
            for name, seconds in (
                ("statement_timeout", self.pg_statement_s),
                ("lock_timeout", self.pg_lock_s),
                ("idle_in_transaction_session_timeout", self.pg_idle_in_transaction_s),
            )
        )
