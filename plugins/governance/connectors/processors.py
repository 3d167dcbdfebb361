"""Third-party processors over HTTP, through the request templates the data map declares.

No processor is coded here: look-up, export and erase calls come from the map
(``processors[].lookup/export/erase``); the Airflow connection, read by the HTTP provider's hook
(:class:`ProcessorHook`), gives the base URL, the secret and every session setting it supports.
The calls go through the hook's session but not through ``HttpHook.run``, which logs each URL, and
a look-up URL carries the identity.
Transient failures (connection errors, 429, 5xx) are retried with exponential backoff, honouring
``Retry-After`` up to a cap; when retries run out, ProcessorUnavailable names the processor and
the last status, never the URL (its path or query can hold an identity). List calls that page
declare it in the map (``paging``); :meth:`ProcessorClient.fetch_records` follows the pages, so a
processor with paging needs only a map edit.

Transport security: a connection that names no scheme is reached over https; plain http is
refused unless the host is a loopback address (the local stand-ins) or the connection's extra says
``"allow_plain_http": true`` (a trusted network, e.g. the compose stand-ins). The session follows
redirects, but a secret header (the map's ``auth.header``, or ``Authorization``) is dropped when a
redirect leaves the host, as ``requests`` does for ``Authorization`` alone.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from airflow.providers.http.hooks.http import HttpHook

from governance.connections import not_configured
from governance.connectors.base import EraseOutcome, ProcessorConnector, ProcessorRecord
from governance.datamap.model import DataMap, Processor
from governance.datamap.plans import ProcessorRequest, build_processor_request, records_at
from governance.deadlines import Deadlines
from governance.identity import SubjectIdentities

if TYPE_CHECKING:
    from airflow.sdk import Connection

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class ProcessorUnavailable(RuntimeError):
    """A processor kept failing after every retry (the run fails; nothing partial is published)."""


class ProcessorRejected(RuntimeError):
    """A processor answered with a status that is neither success, absence nor transient."""


class InsecureProcessorConnection(ValueError):
    """A processor connection would send secrets and personal data over plain http."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_base_url(base_url: str, *, conn_id: str, host: str, schema: str, extra: Mapping[str, Any]) -> str:
    """``base_url`` as :class:`HttpHook` built it (``http`` when the connection names no scheme),
    with https as the default and plain http only where allowed; InsecureProcessorConnection (before
    any request) otherwise. ``host`` and ``schema`` are the connection's own fields."""
    explicit = urlsplit(host).scheme.lower() if "://" in host else schema.lower()
    if not explicit and base_url.startswith("http://"):
        return "https://" + base_url[len("http://") :]
    if urlsplit(base_url).scheme.lower() == "http":
        allowed = str(extra.get("allow_plain_http", "")).lower() in ("true", "1", "yes")
        if not (allowed or _is_loopback(urlsplit(base_url).hostname or "")):
            raise InsecureProcessorConnection(
                f"processor connection {conn_id!r} uses plain http to a host that is not loopback: use https, or "
                'set "allow_plain_http": true in its extra for a trusted network'
            )
    return base_url


class ProcessorSession(requests.Session):
    """A session that drops its secret headers when a redirect leaves the host (``requests``
    itself only drops ``Authorization``)."""

    def __init__(self) -> None:
        super().__init__()
        self.secret_headers: set[str] = {"Authorization"}

    @classmethod
    def from_session(cls, session: requests.Session) -> ProcessorSession:
        """The same settings (headers, auth, adapters, TLS, proxies, hooks) in a ProcessorSession."""
        guarded = cls()
        secret_headers = guarded.secret_headers
        guarded.__dict__.update(session.__dict__)
        guarded.secret_headers = secret_headers
        return guarded

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if self.should_strip_auth(response.request.url or "", prepared_request.url or ""):
            for name in self.secret_headers:
                prepared_request.headers.pop(name, None)
        super().rebuild_auth(prepared_request, response)


class ProcessorHook(HttpHook):
    """The HTTP provider's hook for one processor's Airflow connection (type ``http``).

    The hook builds the session: base URL from host/schema/port, ``login``/``password`` as basic
    auth, extra headers, ``proxies``, ``verify``, ``cert``, ``trust_env``, keep-alive adapters.
    ``connection`` (optional) is used instead of looking ``http_conn_id`` up, for benchmarks and
    tests that run outside Airflow's configuration. ``test_connection`` GETs ``test_path``
    (default: the base URL) and succeeds on any answer below 500 that is not 401/403: a processor
    API need not answer its root with 200, but bad credentials and a dead server must fail.
    """

    hook_name = "Processor (HTTP)"

    def __init__(self, http_conn_id: str, *, connection: Connection | None = None, test_path: str = "") -> None:
        super().__init__(method="GET", http_conn_id=http_conn_id)
        self._connection = connection
        self.test_path = test_path

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> ProcessorSession:
        """The provider's session, as a :class:`ProcessorSession`."""
        return ProcessorSession.from_session(super().get_conn(headers, extra_options))

    def _set_base_url(self, connection: Any) -> None:
        super()._set_base_url(connection)
        self.base_url = secure_base_url(
            self.base_url, conn_id=self.http_conn_id, host=connection.host or "", schema=connection.schema or "",
            extra=connection.extra_dejson or {},
        )  # fmt: skip

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        if self._connection is not None:
            return self._connection
        try:
            return super().get_connection(conn_id)
        except Exception as exc:
            if type(exc).__name__ == "AirflowNotFoundException":
                raise not_configured(conn_id) from exc
            raise

    def test_connection(self) -> tuple[bool, str]:
        try:
            return probe(self.get_conn(), self.url_from_endpoint(self.test_path))
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"


def probe(session: Any, url: str) -> tuple[bool, str]:
    """GET ``url`` with ``session``: reachable and authorised unless 401/403, 5xx or no answer."""
    try:
        response = session.get(url, timeout=10)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if response.status_code in (401, 403) or response.status_code >= 500:
        return False, f"HTTP {response.status_code}"
    return True, f"reachable (HTTP {response.status_code})"


class ProcessorClient(ProcessorConnector):
    """The templated connector (``connector: http``): calls one processor's declared templates.
    Thread-compatible, not thread-safe."""

    def __init__(
        self,
        processor: Processor,
        connection: Connection | None = None,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float | tuple[float, float] | None = None,
    ) -> None:

        assert processor.auth is not None, "the map validates that a templated processor declares auth"
        self.processor = processor
        self.hook = ProcessorHook(processor.connection_id, connection=connection)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # (connect, read) seconds per attempt: governance.deadlines unless given.
        self.timeout_s = timeout_s if timeout_s is not None else Deadlines.from_env().http_timeout
        # The hook's session: base URL, TLS, proxies, extra headers, basic auth from login/password.
        self.session = self.hook.get_conn()
        self.base_url = self.hook.url_from_endpoint("").rstrip("/")
        conn = self.hook.get_connection(processor.connection_id)
        login, password = conn.login or "", conn.password or ""
        secret = password if processor.auth.secret == "password" else login
        if processor.auth.type == "bearer":
            self.session.auth = None
            self.session.headers["Authorization"] = f"Bearer {secret}"
        elif processor.auth.type == "header":
            assert processor.auth.header, "the map validates that header auth names its header"
            self.session.auth = None
            self.session.headers[processor.auth.header] = secret
            self.session.secret_headers.add(processor.auth.header)
        else:
            self.session.auth = (login, password)

    @classmethod
    def from_airflow(cls, processor: Processor, **kwargs: Any) -> ProcessorClient:
        return cls(processor, **kwargs)

    def test(self) -> tuple[bool, str]:
        """GET the base URL with the session and the map's auth: fails on 401/403, 5xx, no answer."""
        return probe(self.session, self.base_url + "/")

    def close(self) -> None:
        self.session.close()

    # -- transport ----------------------------------------------------------------------------

    def _send(self, request: ProcessorRequest, what: str) -> tuple[int, Any]:
        """Send with retries; return (status, decoded JSON or None). The call is reported to
        lineage (the processor as a dataset, read or written) once per connector and direction."""
        import requests

        self.report_lineage(self.base_url, changes=request.method.upper() not in ("GET", "HEAD"))

        last = "no answer"
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                response = self.session.request(
                    request.method, self.base_url + request.path, params=dict(request.query), timeout=self.timeout_s
                )
            except requests.RequestException as exc:
                last = type(exc).__name__
                continue
            status = response.status_code
            if status in request.success_status or status in request.absent_status:
                try:
                    body = response.json() if response.content else None
                except ValueError:
                    body = None
                return status, body
            if status in RETRY_STATUSES:
                last = f"HTTP {status}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    time.sleep(min(self.max_backoff_s, float(retry_after)))
                continue
            raise ProcessorRejected(f"{self.processor.name} {what}: unexpected HTTP {status}")
        raise ProcessorUnavailable(f"{self.processor.name} {what}: still failing after {self.attempts} attempts ({last})")

    def fetch_records(self, request: ProcessorRequest, what: str) -> list[Any]:
        """Every record a call returns (at its ``records_path``), following its declared paging
        page by page; an empty list when the processor answers with an absent status. Each page
        is retried like any call; a cursor that does not advance or more than ``max_pages`` pages
        raise ProcessorRejected rather than return part of the records."""
        records: list[Any] = []
        seen: set[str] = set()
        page_request: ProcessorRequest | None = request
        pages = 0
        while page_request is not None:
            pages += 1
            if request.paging is not None and pages > request.paging.max_pages:
                raise ProcessorRejected(f"{self.processor.name} {what}: more than {request.paging.max_pages} pages")
            status, body = self._send(page_request, what)
            if status in request.absent_status:
                if pages > 1:  # the records seen so far would be silently incomplete
                    raise ProcessorRejected(f"{self.processor.name} {what}: page {pages} answered absent")
                break
            page = records_at(body, request.records_path)
            records += page
            page_request = page_request.next_page(body, page)
            if page_request is not None and request.paging is not None:
                cursor = page_request.query[request.paging.cursor_param]
                if cursor in seen:
                    raise ProcessorRejected(f"{self.processor.name} {what}: paging did not advance")
                seen.add(cursor)
        return records

    # -- the contract -------------------------------------------------------------------------

    def lookup(self, identities: SubjectIdentities) -> list[ProcessorRecord]:
        """Records the processor holds for any of the person's identities it can look up by
        (deduplicated by record id). Identities of kinds the template does not take are skipped."""
        assert self.processor.lookup is not None, "the map validates that templated processors declare lookup"
        given = dict(identities.items())
        found: dict[str, ProcessorRecord] = {}
        for kind in self.processor.lookup_identity_kinds:
            if kind not in given:
                continue
            request = build_processor_request(self.processor.lookup, {kind: given[kind]})
            for record in self.fetch_records(request, "lookup"):
                record_id = str(record.get(request.id_field or "id")) if isinstance(record, Mapping) else None
                if record_id:
                    found.setdefault(record_id, ProcessorRecord(self.processor.name, record_id, record))
        return [found[k] for k in sorted(found)]

    def export(self, record_id: str) -> dict[str, list[Any]]:
        """Every declared export call for one record, every page of each:
        ``{export name: [records]}``."""
        return {
            template.name: self.fetch_records(build_processor_request(template, {"id": record_id}), f"export {template.name}")
            for template in self.processor.export
        }

    def erase(self, record_id: str) -> EraseOutcome:
        """Erase one record; 'absent' when the processor says it is already gone (idempotent)."""
        if self.processor.erase is None:  # the map validates that templated processors declare one
            raise ProcessorRejected(f"{self.processor.name} declares no erase call")
        request = build_processor_request(self.processor.erase, {"id": record_id})
        status, _body = self._send(request, "erase")
        return "absent" if status in request.absent_status else "erased"


__all__ = [
    "InsecureProcessorConnection",
    "ProcessorClient",
    "ProcessorHook",
    "ProcessorRecord",
    "ProcessorRejected",
    "ProcessorSession",
    "ProcessorUnavailable",
]


def processor_clients(datamap: DataMap, names: list[str] | None = None, **kwargs: Any) -> dict[str, ProcessorClient]:
    """A client per processor of the map (or of ``names``), connections from Airflow."""
    return {
        p.name: ProcessorClient.from_airflow(p, **kwargs)
        for p in datamap.processors
        if names is None or p.name in names
    }
