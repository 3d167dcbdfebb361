"""Processor connections: https unless plain http is explicitly allowed, and a secret header never
follows a redirect to another host (small loopback HTTP servers stand in for the processor and
for the host it redirects to)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from airflow.sdk import Connection

from governance.connectors.processors import InsecureProcessorConnection, ProcessorClient, ProcessorHook
from governance.datamap import load_datamap

pytestmark = pytest.mark.integration

SECRET = "crm-secret-key-0001"


class Recorder(ThreadingHTTPServer):
    """Answers every request; keeps the path and headers of each. ``redirect_to`` (a base URL)
    makes it answer 307 to the same path there instead, except for ``/landing``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.redirect_to: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.server.redirect_to is not None and self.path != "/landing":
            self.send_response(307)
            self.send_header("Location", f"{self.server.redirect_to}/landing")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    started = [Recorder(), Recorder()]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield started[0], started[1]
    for server in started:
        server.shutdown()
        server.server_close()


def _crm_client(host: str, **extra: Any) -> ProcessorClient:
    crm = next(p for p in load_datamap().processors if p.name == "crm")
    assert crm.auth is not None and crm.auth.type == "header"
    return ProcessorClient(crm, Connection(conn_id="crm", conn_type="http", host=host, password=SECRET, extra=json.dumps(extra) if extra else None),
                           attempts=1)  # fmt: skip


def test_a_connection_without_a_scheme_is_reached_over_https() -> None:
    hook = ProcessorHook("crm", connection=Connection(conn_id="crm", conn_type="http", host="crm.example.com", port=8443))
    assert hook.url_from_endpoint("/api/contacts") == "https://crm.example.com:8443/api/contacts"
    explicit = ProcessorHook("crm", connection=Connection(conn_id="crm", conn_type="http", host="https://crm.example.com"))
    assert explicit.url_from_endpoint("") == "https://crm.example.com"


def test_plain_http_to_a_host_that_is_not_loopback_is_refused_unless_allowed_in_the_extra() -> None:
    with pytest.raises(InsecureProcessorConnection, match="'crm' uses plain http"):
        _crm_client("http://crm.example.com")
    schema_http = ProcessorHook("crm", connection=Connection(conn_id="crm", conn_type="http", host="crm.example.com",
                                                             schema="http"))  # fmt: skip
    with pytest.raises(InsecureProcessorConnection):
        schema_http.url_from_endpoint("")
    allowed = _crm_client("http://processor-standins:8102", allow_plain_http=True)
    assert allowed.base_url == "http://processor-standins:8102"
    assert _crm_client("http://localhost:8102").base_url == "http://localhost:8102"  # loopback stand-ins


def test_the_custom_auth_header_is_dropped_on_a_redirect_to_another_host(servers: tuple[Recorder, Recorder]) -> None:
    processor, elsewhere = servers
    processor.redirect_to = elsewhere.url.replace("127.0.0.1", "localhost")  # another host name and port
    client = _crm_client(processor.url)
    ok, _message = client.test()
    assert ok
    assert processor.seen[0][1].get("x-api-key") == SECRET  # sent to the processor itself
    assert [path for path, _ in elsewhere.seen] == ["/landing"]  # the redirect was followed
    assert "x-api-key" not in elsewhere.seen[0][1] and "authorization" not in elsewhere.seen[0][1]


def test_the_custom_auth_header_is_kept_on_a_redirect_within_the_host(servers: tuple[Recorder, Recorder]) -> None:
    processor, _ = servers
    processor.redirect_to = processor.url
    ok, _message = _crm_client(processor.url).test()
    assert ok
    assert [(path, headers.get("x-api-key")) for path, headers in processor.seen] == [("/", SECRET), ("/landing", SECRET)]
