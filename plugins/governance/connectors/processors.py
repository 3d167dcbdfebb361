"""Third-party processors over HTTP, through the request templates the data map declares.

No processor is coded here: look-up, export and erase calls come from the map
(``processors[].lookup/export/erase``); the Airflow connection gives the base URL and the secret.
Transient failures (connection errors, 429, 5xx) are retried with exponential backoff, honouring
``Retry-After`` up to a cap; when retries run out, ProcessorUnavailable names the processor and
the last status, never the URL (its path or query can hold an identity). List calls that page
declare it in the map (``paging``); :meth:`ProcessorClient.fetch_records` follows the pages, so a
processor with paging needs only a map edit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from governance.connections import ConnectionInfo, get_connection
from governance.datamap.model import DataMap, Processor
from governance.datamap.plans import ProcessorRequest, build_processor_request, records_at
from governance.identity import SubjectIdentities

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class ProcessorUnavailable(RuntimeError):
    """A processor kept failing after every retry (the run fails; nothing partial is published)."""


class ProcessorRejected(RuntimeError):
    """A processor answered with a status that is neither success, absence nor transient."""


@dataclass(frozen=True)
class ProcessorRecord:
    """One record a processor holds for the person: its id and the look-up's JSON."""

    processor: str
    record_id: str
    document: Mapping[str, Any]

    def __repr__(self) -> str:
        return f"ProcessorRecord({self.processor}, {self.record_id})"


class ProcessorClient:
    """Calls one processor's declared templates. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        processor: Processor,
        connection: ConnectionInfo,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 15.0,
    ) -> None:
        import requests

        self.processor = processor
        self.base_url = connection.base_url()
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.session = requests.Session()
        secret = connection.password if processor.auth.secret == "password" else connection.login
        if processor.auth.type == "bearer":
            self.session.headers["Authorization"] = f"Bearer {secret}"
        elif processor.auth.type == "header":
            assert processor.auth.header, "the map validates that header auth names its header"
            self.session.headers[processor.auth.header] = secret
        else:
            self.session.auth = (connection.login, connection.password)

    @classmethod
    def from_airflow(cls, processor: Processor, **kwargs: Any) -> ProcessorClient:
        return cls(processor, get_connection(processor.connection_id), **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ProcessorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def _send(self, request: ProcessorRequest, what: str) -> tuple[int, Any]:
        """Send with retries; return (status, decoded JSON or None)."""
        import requests

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

    def erase(self, record_id: str) -> Literal["erased", "absent"]:
        """Erase one record; 'absent' when the processor says it is already gone (idempotent)."""
        if self.processor.erase is None:
            raise ProcessorRejected(f"{self.processor.name} declares no erase call")
        request = build_processor_request(self.processor.erase, {"id": record_id})
        status, _body = self._send(request, "erase")
        return "absent" if status in request.absent_status else "erased"


def processor_clients(datamap: DataMap, names: list[str] | None = None, **kwargs: Any) -> dict[str, ProcessorClient]:
    """A client per processor of the map (or of ``names``), connections from Airflow."""
    return {
        p.name: ProcessorClient.from_airflow(p, **kwargs)
        for p in datamap.processors
        if names is None or p.name in names
    }
