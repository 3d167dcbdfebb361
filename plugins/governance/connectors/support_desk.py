"""``support_desk``: a Python connector, the data map's escape hatch in use.

The help desk's API needs what request templates cannot express: OAuth 2 client-credentials
tokens (fetched, cached until shortly before they expire, refreshed on a 401), a JSON request body
for the look-up (so the identity is never in a URL), and an erasure that is an asynchronous job,
started once and polled until the desk reports it completed. The map declares it as::

    - name: support_desk
      connector: python
      class: governance.connectors.support_desk:SupportDeskConnector
      connection_id: support_desk
      lookup_by: [email]

The Airflow connection (type ``http``) gives the base URL (host, port), the OAuth client id
(login) and client secret (password), and whatever else ``HttpHook`` reads (TLS, proxies, extra
headers). Erasure is idempotent: the desk keeps one job per requester, so a retried erase gets the
same job back, and one already completed is reported ``absent`` (nothing new done).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from governance.connectors.base import EraseOutcome, ProcessorConnector, ProcessorRecord
from governance.connectors.processors import ProcessorHook, ProcessorRejected, ProcessorUnavailable
from governance.deadlines import Deadlines

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from governance.datamap.model import Processor
    from governance.identity import SubjectIdentities

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class SupportDeskConnector(ProcessorConnector):
    """Look-up, export and erasure at the support desk (see the module docstring)."""

    token_path = "/oauth/token"
    # Refresh a token this long before the desk says it expires.
    token_margin_s = 30.0

    def __init__(
        self,
        processor: Processor,
        connection: Connection | None = None,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float | tuple[float, float] | None = None,
        poll_interval_s: float = 0.2,
        poll_timeout_s: float = 600.0,
    ) -> None:

        self.processor = processor
        self.hook = ProcessorHook(processor.connection_id, connection=connection)
        self.session = self.hook.get_conn()
        # The client credentials go to the token endpoint only; API calls carry the bearer token.
        self.session.auth = None
        conn = self.hook.get_connection(processor.connection_id)
        self._client = (conn.login or "", conn.password or "")
        self.base_url = self.hook.url_from_endpoint("").rstrip("/")
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # (connect, read) seconds per call: governance.deadlines unless given.
        self.timeout_s = timeout_s if timeout_s is not None else Deadlines.from_env().http_timeout
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self._token: str | None = None
        self._token_expires = 0.0

    def close(self) -> None:
        self.session.close()

    # -- OAuth ----------------------------------------------------------------------------------

    def _fetch_token(self) -> str:
        status, body = self._send("POST", self.token_path, "token", data={"grant_type": "client_credentials"},
                                  auth=self._client, authenticated=False)  # fmt: skip
        if status != 200 or not isinstance(body, Mapping) or not body.get("access_token"):
            raise ProcessorRejected(f"{self.processor.name} token: HTTP {status} (check the connection's login/password)")
        self._token = str(body["access_token"])
        self._token_expires = time.monotonic() + max(0.0, float(body.get("expires_in", 60)) - self.token_margin_s)
        return self._token

    def _bearer(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            return self._fetch_token()
        return self._token

    # -- transport ------------------------------------------------------------------------------

    def _send(self, method: str, path: str, what: str, *, authenticated: bool = True, **kwargs: Any) -> tuple[int, Any]:
        """Send with retries (transient statuses, connection errors) and one token refresh on 401;
        return (status, decoded JSON or None). Errors name the call, never the URL or body."""
        import requests


        if authenticated:  # the token call carries no personal data
            self.report_lineage(self.base_url, changes=what.startswith("erase"))
        last = "no answer"
        refreshed = False
        attempt = 0
        while attempt < self.attempts:
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            attempt += 1
            headers = {"Authorization": f"Bearer {self._bearer()}"} if authenticated else {}
            try:
                response = self.session.request(method, self.base_url + path, headers=headers, timeout=self.timeout_s, **kwargs)
            except requests.RequestException as exc:
                last = type(exc).__name__
                continue
            status = response.status_code
            if status == 401 and authenticated and not refreshed:
                refreshed = True  # the token expired or was revoked: fetch a new one, once
                self._token = None
                attempt -= 1
                continue
            if status in RETRY_STATUSES:
                last = f"HTTP {status}"
                continue
            try:
                body = response.json() if response.content else None
            except ValueError:
                body = None
            return status, body
        raise ProcessorUnavailable(f"{self.processor.name} {what}: still failing after {self.attempts} attempts ({last})")

    def _expect(self, status: int, allowed: tuple[int, ...], what: str) -> None:
        if status not in allowed:
            raise ProcessorRejected(f"{self.processor.name} {what}: unexpected HTTP {status}")

    # -- the contract ---------------------------------------------------------------------------

    def test(self) -> tuple[bool, str]:
        """A token can be fetched with the connection's client credentials."""
        try:
            self._fetch_token()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "OAuth client credentials accepted"

    def lookup(self, identities: SubjectIdentities) -> list[ProcessorRecord]:
        given = dict(identities.items())
        found: dict[str, ProcessorRecord] = {}
        for kind in self.processor.lookup_identity_kinds:
            if kind not in given:
                continue
            status, body = self._send("POST", "/api/v2/requesters/search", "lookup",
                                      json={"identity": {"type": kind, "value": given[kind]}})  # fmt: skip
            self._expect(status, (200,), "lookup")
            for requester in (body or {}).get("requesters", []):
                if isinstance(requester, Mapping) and requester.get("id") is not None:
                    record_id = str(requester["id"])
                    found.setdefault(record_id, ProcessorRecord(self.processor.name, record_id, requester))
        return [found[k] for k in sorted(found, key=lambda k: (len(k), k))]

    def export(self, record_id: str) -> dict[str, list[Any]]:
        status, body = self._send("GET", f"/api/v2/requesters/{int(record_id)}", "export")
        self._expect(status, (200, 404), "export")
        return {"requester": [body] if status == 200 else []}

    def erase(self, record_id: str) -> EraseOutcome:
        """Start (or get back) the requester's erasure job and poll it until completed."""

        status, body = self._send("POST", f"/api/v2/requesters/{int(record_id)}/erasure_jobs", "erase")
        if status == 404:
            return "absent"  # no such requester and no job: nothing held
        self._expect(status, (200, 202), "erase")
        job = (body or {}).get("job") or {}
        if job.get("status") == "completed" and status == 200:
            return "absent"  # erased by an earlier attempt: a retry is a no-op
        deadline = time.monotonic() + self.poll_timeout_s
        while job.get("status") != "completed":
            if job.get("status") == "failed":
                raise ProcessorRejected(f"{self.processor.name} erase: the erasure job failed")
            if time.monotonic() > deadline:
                raise ProcessorUnavailable(f"{self.processor.name} erase: job not completed after {self.poll_timeout_s:.0f} s")
            time.sleep(self.poll_interval_s)
            status, body = self._send("GET", f"/api/v2/erasure_jobs/{int(job['id'])}", "erase poll")
            self._expect(status, (200,), "erase poll")
            job = (body or {}).get("job") or {}
        return "erased"
