"""Shared machinery for the processor stand-ins: a threaded HTTP/1.1 JSON server with routing, API-key
checks, fault injection, admin endpoints, a request log and optional persistence.

Contract for subclasses (see ``payments.py`` and ``crm.py``):

* ``service`` names the processor (also the section name in a state file);
* ``_api_routes()`` returns the service's routes; handlers run under the server lock, receive a
  :class:`Request` and return a :class:`Response` or raise :class:`HttpError`;
* ``_authorized()`` checks the credentials of an API request, ``_error_body()`` renders an error in
  the service's own shape;
* ``_reset_data()``, ``_load_data()``, ``_dump_data()`` and ``_restore_data()`` manage the records.

Admin endpoints (``/_admin/...``) need no key, only answer loopback clients, are never subject to
faults and are not written to the request log, so the log shows exactly what the code under test did.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("governance_dev.standins")

FaultMode = Literal["error", "slow", "drop"]
FAULT_MODES: tuple[FaultMode, ...] = ("error", "slow", "drop")

#: Largest request body accepted; a bulk load of tens of thousands of records is a few MB.
MAX_BODY_BYTES = 256 * 1024 * 1024
#: The request log is a ring buffer so a long benchmark or demo cannot grow it without bound.
REQUEST_LOG_LIMIT = 100_000
#: Default delay of a "slow" fault when none is given.
DEFAULT_SLOW_DELAY_S = 1.0

_EMAIL_RE = re.compile(r"[^\s@'\"/?&=]+@[^\s'\"/?&]+")
_QUERY_RE = re.compile(r"\?[^\s'\"]*")


def scrub(text: str) -> str:
    """``text`` without query strings or anything that looks like an e-mail address: used on every
    line the stand-ins log, because query strings and paths can carry personal data."""
    return _EMAIL_RE.sub("<redacted>", _QUERY_RE.sub("?<redacted>", text))


def loggable_path(path: str) -> str:
    """The path as the request log records it: never a query string, and any segment that decodes
    to something holding ``@`` replaced by ``<redacted>`` (a caller bug could put an e-mail there)."""
    path = path.split("?", 1)[0]
    return "/".join("<redacted>" if "@" in unquote(seg) else seg for seg in path.split("/"))


def normalise_email(value: str) -> str:
    """The key e-mail lookups match on: trimmed and case-folded, as the processors' searches do."""
    return value.strip().lower()


class HttpError(Exception):
    """Raised by a route handler (or the dispatcher) to answer with an error.

    ``code`` is a short machine-readable reason (``resource_missing``, ``not_found``...) and
    ``message`` a human one; the server renders both in the service's own error shape. ``message``
    is sent to the client but never logged.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request. ``path`` has no query string; ``params`` holds the values of the
    ``{name}`` placeholders of the route that matched."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)

    def query_one(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None when absent."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """The body parsed as JSON; 400 when empty or malformed."""
        if not self.body.strip():
            raise HttpError(400, "invalid_body", "The request body must be a JSON document.")
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, "invalid_json", "The request body is not valid JSON.") from None

    def json_object(self) -> dict[str, Any]:
        """The body parsed as a JSON object; 400 when it is anything else."""
        data = self.json()
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_body", "The request body must be a JSON object.")
        return data

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


@dataclass
class Response:
    """What a handler answers: ``body`` None means no body (e.g. 204)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    _encoded: bytes | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        """The body as JSON bytes (empty when there is none). The first call fixes the bytes: the
        server calls it under the lock, so handlers may return live records without copying."""
        if self._encoded is None:
            self._encoded = (
                b"" if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()
            )
        return self._encoded


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """``method`` + a compiled full-match path ``pattern`` -> ``handler``. ``mutates`` routes persist
    the state after a 2xx answer."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    mutates: bool = False


_PLACEHOLDER_RE = re.compile(r"\{(\w+)(?::([^}]+))?\}")


def route(method: str, template: str, handler: Handler, *, mutates: bool = False) -> Route:
    """A :class:`Route` from a template such as ``/v1/customers/{id}`` or ``/api/contacts/{id:\\d+}``
    (the optional part after ``:`` is the placeholder's regex; the default matches one segment)."""
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER_RE.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return Route(method.upper(), re.compile("".join(parts)), handler, mutates)


@dataclass
class Fault:
    """An injected failure for the next matching API requests.

    * ``error``: wait ``delay_s`` (default 0), then answer ``status`` with ``Retry-After: 1``;
    * ``slow``: wait ``delay_s`` (default 1.0), then handle the request normally;
    * ``drop``: wait ``delay_s`` (default 0), then close the connection without any response.

    ``count`` is how many more requests it applies to (None: until cleared); ``methods`` and
    ``path_prefix`` (None: any) restrict which requests match. Faults are checked in the order they
    were set; the first match applies and uses up one of its count.
    """

    mode: FaultMode
    status: int = 503
    delay_s: float = 0.0
    count: int | None = None
    methods: frozenset[str] | None = None
    path_prefix: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether a request ``method path`` is one this fault applies to."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def to_json(self) -> dict[str, Any]:
        """The fault in the shape ``POST /_admin/faults`` takes."""
        return {
            "mode": self.mode,
            "status": self.status,
            "delay_s": self.delay_s,
            "count": self.count,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "path_prefix": self.path_prefix,
        }

    @classmethod
    def build(
        cls,
        mode: str,
        *,
        status: int | None = 503,
        delay_s: float | None = None,
        count: int | None = None,
        methods: Iterable[str] | None = None,
        path_prefix: str | None = None,
    ) -> Fault:
        """A validated fault; ValueError describes what is wrong."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        status = 503 if status is None else status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("status must be an integer from 400 to 599")
        if delay_s is None:
            delay_s = DEFAULT_SLOW_DELAY_S if mode == "slow" else 0.0
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or not 0 <= delay_s <= 3600:
            raise ValueError("delay_s must be a number of seconds from 0 to 3600")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer or null")
        method_set: frozenset[str] | None = None
        if methods is not None:
            if isinstance(methods, str) or not all(isinstance(m, str) and m for m in methods):
                raise ValueError("methods must be a list of HTTP method names or null")
            method_set = frozenset(m.upper() for m in methods)
        if path_prefix is not None and (not isinstance(path_prefix, str) or not path_prefix.startswith("/")):
            raise ValueError("path_prefix must be a path starting with / or null")
        return cls(mode, status, float(delay_s), count, method_set, path_prefix)

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A fault from the JSON body of ``POST /_admin/faults``; ValueError when invalid."""
        if not isinstance(data, dict):
            raise ValueError("the fault must be a JSON object")
        unknown = set(data) - {"mode", "status", "delay_s", "count", "methods", "path_prefix"}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        methods = data.get("methods")
        if methods is not None and not isinstance(methods, list):
            raise ValueError("methods must be a list of HTTP method names or null")
        return cls.build(
            str(data.get("mode")),
            status=data.get("status"),
            delay_s=data.get("delay_s"),
            count=data.get("count"),
            methods=methods,
            path_prefix=data.get("path_prefix"),
        )


class StateStore:
    """A JSON file holding one section per stand-in, rewritten atomically (temp file in the same
    directory + ``os.replace``) on every write, so a crash never leaves a torn file. Several stand-ins
    may share one store (the CLI's ``--state-file``); each write replaces only its own section.

    The file is created with mode 0600 because it holds personal data.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Sections are kept serialised, so writing one section does not re-serialise the others.
        self._sections: dict[str, str] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"stand-in state file {self.path} is unreadable: {exc}") from exc
            sections = doc.get("sections") if isinstance(doc, dict) else None
            if not isinstance(sections, dict):
                raise ValueError(f"stand-in state file {self.path} has no 'sections' object")
            self._sections = {str(k): json.dumps(v, separators=(",", ":")) for k, v in sections.items()}

    def read(self, section: str) -> dict[str, Any] | None:
        """The stored data of ``section``, or None when the file has none."""
        with self._lock:
            text = self._sections.get(section)
        if text is None:
            return None
        data = json.loads(text)
        return data if isinstance(data, dict) else None

    def write(self, section: str, data: Mapping[str, Any]) -> None:
        """Replace ``section`` with ``data`` and rewrite the file atomically."""
        text = json.dumps(data, separators=(",", ":"))
        with self._lock:
            self._sections[section] = text
            body = ",".join(f"{json.dumps(name)}:{value}" for name, value in sorted(self._sections.items()))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write('{"version":1,"sections":{' + body + "}}")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its stand-in and its open connections, so ``stop()`` can close
    idle keep-alive connections: otherwise a client's pooled connection would keep talking to a
    stopped server (and its stale state) after a restart on the same port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], standin: StandinServer) -> None:
        # Must be set before binding; an IPv6 literal needs an AF_INET6 socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN of the host, which can take seconds on a machine
        # with slow reverse DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        """Shut down every open client connection (their handler threads then end)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (or stop() cutting a connection) are normal here; the default prints a
        # traceback to stderr.
        log.debug("%s: connection error", self.standin.service, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP/1.1 requests into :class:`Request` objects for the stand-in and writes its answers."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
    # to each keep-alive request.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 60
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        standin = self.server.standin
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            body = self._read_body()
        except HttpError as exc:
            # The rest of the body is still on the wire: this connection cannot be reused.
            self.close_connection = True
            self._send(standin._error_response(exc))
            return
        request = Request(
            method=self.command.upper(),
            path=path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        if path == "/_admin" or path.startswith("/_admin/"):
            if not self._client_is_loopback():
                self._send(
                    standin._error_response(HttpError(403, "forbidden", "Admin endpoints are loopback only."))
                )
                return
            self._send(standin._handle_admin(request))
            return
        response = standin._handle_api(request)
        if response is None:
            # A "drop" fault: close without writing a single byte.
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise HttpError(400, "invalid_request", "Invalid Content-Length.") from None
        if length < 0:
            raise HttpError(400, "invalid_request", "Invalid Content-Length.")
        if length > MAX_BODY_BYTES:
            raise HttpError(413, "payload_too_large", "Request body too large.")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "invalid_request", "Malformed chunked body.") from None
            if size < 0:
                raise HttpError(400, "invalid_request", "Malformed chunked body.")
            if size == 0:
                # Skip trailers up to the blank line that ends the body.
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise HttpError(413, "payload_too_large", "Request body too large.")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _client_is_loopback(self) -> bool:
        try:
            addr = ipaddress.ip_address(str(self.client_address[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped.is_loopback
        return addr.is_loopback

    def _send(self, response: Response) -> None:
        payload = response.encode()
        self.send_response(response.status)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        if response.status != 204 and not 100 <= response.status < 200:
            self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    # Logging: never the raw request line (its query string can hold an e-mail address).
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # path and command are unset when the request line itself was malformed.
        path = loggable_path(getattr(self, "path", "") or "")
        log.debug("%s %s %s %s", self.server.standin.service, self.command or "-", path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.server.standin.service, scrub(format % args))


class StandinServer:
    """Base class of the processor stand-ins: an HTTP server on ``host:port`` (port 0 picks a free
    port) serving one processor's API plus the ``/_admin`` endpoints, from a background thread.

    State lives in memory, guarded by one lock (all handlers run under it, so requests are
    serialised: simple and plenty fast for tests and the demo). With ``state_file`` (a path or a
    shared :class:`StateStore`) the state is loaded at construction and written after every
    mutation. The request log and the faults are never persisted.
    """

    service: ClassVar[str] = "standin"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "test-key",
        state_file: str | os.PathLike[str] | StateStore | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._host = host
        self._port = port
        self._api_key = api_key
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state_store = (
            state_file if isinstance(state_file, StateStore) or state_file is None else StateStore(state_file)
        )
        self._routes = self._api_routes()
        self._admin_routes = [
            route("GET", "/_admin/health", self._admin_health),
            route("GET", "/_admin/state", self._admin_state),
            route("POST", "/_admin/reset", self._admin_reset),
            route("POST", "/_admin/load", self._admin_load),
            route("GET", "/_admin/faults", self._admin_get_faults),
            route("POST", "/_admin/faults", self._admin_set_fault),
            route("DELETE", "/_admin/faults", self._admin_clear_faults),
        ]
        self._reset_data()
        if self._state_store is not None:
            data = self._state_store.read(self.service)
            if data is not None:
                try:
                    self._restore_data(data)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(
                        f"{self.service}: invalid state in {self._state_store.path}: {exc}"
                    ) from exc

    # ----------------------------------------------------------------- subclass hooks
    def _api_routes(self) -> list[Route]:
        """The service's API routes."""
        raise NotImplementedError

    def _authorized(self, request: Request) -> bool:
        """Whether ``request`` carries the right credentials."""
        raise NotImplementedError

    def _error_body(self, status: int, code: str, message: str, param: str | None) -> Any:
        """An error rendered in the service's shape."""
        raise NotImplementedError

    def _unauthorized_headers(self) -> dict[str, str]:
        """Extra headers of a 401 answer."""
        return {}

    def _reset_data(self) -> None:
        """Empty every record (called under the lock, and once from ``__init__``)."""
        raise NotImplementedError

    def _load_data(self, payload: Mapping[str, Any]) -> dict[str, int]:
        """Bulk-insert records as given; returns how many of each kind. ValueError when invalid
        (nothing is inserted then)."""
        raise NotImplementedError

    def _dump_data(self) -> dict[str, Any]:
        """The records as JSON-ready data (what is persisted, and the core of ``state()``)."""
        raise NotImplementedError

    def _restore_data(self, data: Mapping[str, Any]) -> None:
        """Replace the records with ``data`` as produced by ``_dump_data``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Bind and serve from a daemon thread. Port 0 picks a free port; a restarted server binds
        the port it had before, so its ``url`` stays the same. Returns once it accepts connections."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.service} stand-in is already running")
        httpd = _HTTPServer((self._host, self._port), self)
        self._port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"standin-{self.service}",
            daemon=True,
        )
        self._thread.start()
        log.info("%s stand-in listening on %s", self.service, self.url)

    def stop(self) -> None:
        """Stop serving, close the listening socket and every client connection. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_all_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> StandinServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._httpd is not None

    @property
    def host(self) -> str:
        """The address the server binds."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the requested one, possibly 0, before the first ``start()``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash). Needs a started server or
        an explicit port."""
        if self._port == 0:
            raise RuntimeError(f"{self.service} stand-in has no port yet: call start() first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def api_key(self) -> str:
        """The key clients must present."""
        return self._api_key

    # ----------------------------------------------------------------- Python API
    def reset(self) -> None:
        """Empty the state (records, deleted ids, request log) and clear every fault."""
        with self._lock:
            self._reset_data()
            self._faults.clear()
            self._request_log.clear()
            self._persist()

    def load_payload(self, payload: Mapping[str, Any]) -> dict[str, int]:
        """Bulk-insert records as given (ids kept if present, generated otherwise; an existing id is
        replaced). Returns counts per kind; ValueError when invalid, and then nothing is inserted."""
        with self._lock:
            counts = self._load_data(payload)
            self._persist()
            return counts

    def set_fault(
        self,
        mode: FaultMode,
        *,
        status: int = 503,
        delay_s: float | None = None,
        count: int | None = None,
        methods: Iterable[str] | None = None,
        path_prefix: str | None = None,
    ) -> Fault:
        """Add a :class:`Fault` for the next matching API requests (see there); returns it."""
        fault = Fault.build(
            mode, status=status, delay_s=delay_s, count=count, methods=methods, path_prefix=path_prefix
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The active faults with their remaining counts."""
        with self._lock:
            return [f.to_json() for f in self._faults]

    def request_log(self) -> list[dict[str, Any]]:
        """API requests seen, oldest first: ``{"method", "path", "status"}`` (status None when the
        connection was dropped by a fault). Paths never carry query strings or e-mail addresses."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    def state(self) -> dict[str, Any]:
        """The whole state as JSON-ready data: the records, ``deleted``, ``request_log`` and ``faults``.
        A deep copy: changing it does not change the server."""
        with self._lock:
            # A JSON round trip is both the deep copy and a check that the state is JSON-ready.
            return cast(dict[str, Any], json.loads(json.dumps(self._live_state())))

    def _live_state(self) -> dict[str, Any]:
        # Shares the live records: only for use under the lock.
        data = self._dump_data()
        data["request_log"] = list(self._request_log)
        data["faults"] = [f.to_json() for f in self._faults]
        return data

    # ----------------------------------------------------------------- request handling
    def _persist(self) -> None:
        # Called under the lock, so writes reach the file in mutation order.
        if self._state_store is not None:
            self._state_store.write(self.service, self._dump_data())

    def _error_response(self, exc: HttpError) -> Response:
        return Response(
            exc.status, self._error_body(exc.status, exc.code, exc.message, exc.param), exc.headers
        )

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _log(self, request: Request, status: int | None) -> None:
        with self._lock:
            self._request_log.append(
                {"method": request.method, "path": loggable_path(request.path), "status": status}
            )

    def _match(self, routes: list[Route], request: Request) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for candidate in routes:
            m = candidate.pattern.fullmatch(request.path)
            if m is None:
                continue
            if candidate.method == request.method:
                return candidate, m.groupdict()
            allowed.append(candidate.method)
        if allowed:
            raise HttpError(
                405,
                "method_not_allowed",
                f"Method {request.method} is not allowed here.",
                headers={"Allow": ", ".join(sorted(set(allowed)))},
            )
        raise HttpError(404, "not_found", "Unrecognized request URL.")

    def _run(self, routes: list[Route], request: Request) -> Response:
        try:
            matched, params = self._match(routes, request)
            bound = Request(
                request.method, request.path, request.query, request.headers, request.body, params
            )
            with self._lock:
                response = matched.handler(bound)
                if matched.mutates and 200 <= response.status < 300:
                    self._persist()
                response.encode()
            return response
        except HttpError as exc:
            return self._error_response(exc)
        except Exception:
            # A bug in a stand-in; the traceback names no request data.
            log.exception("%s stand-in: handler failed", self.service)
            return self._error_response(HttpError(500, "internal_error", "Internal stand-in error."))

    def _handle_api(self, request: Request) -> Response | None:
        """Answer an API request, applying faults first; None means drop the connection."""
        fault = self._take_fault(request.method, request.path)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.mode == "drop":
                self._log(request, None)
                return None
            if fault.mode == "error":
                status = fault.status
                try:
                    phrase = HTTPStatus(status).phrase
                except ValueError:
                    phrase = "Error"
                code = re.sub(r"\W+", "_", phrase.lower())
                response = self._error_response(HttpError(status, code, f"Injected fault: {phrase}."))
                response.headers["Retry-After"] = "1"
                self._log(request, status)
                return response
        if not self._authorized(request):
            response = self._error_response(
                HttpError(
                    401, "unauthorized", "Invalid or missing API key.", headers=self._unauthorized_headers()
                )
            )
        else:
            response = self._run(self._routes, request)
        self._log(request, response.status)
        return response

    def _handle_admin(self, request: Request) -> Response:
        return self._run(self._admin_routes, request)

    def _key_matches(self, presented: str | None) -> bool:
        """Constant-time comparison of a presented key with ours."""
        return presented is not None and hmac.compare_digest(presented.encode(), self._api_key.encode())

    # ----------------------------------------------------------------- admin endpoints
    def _admin_health(self, request: Request) -> Response:
        return Response(200, {"ok": True, "service": self.service})

    def _admin_state(self, request: Request) -> Response:
        # No copy needed: the dispatcher encodes the body before it releases the lock.
        return Response(200, self._live_state())

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response(200, {"ok": True})

    def _admin_load(self, request: Request) -> Response:
        try:
            counts = self.load_payload(request.json_object())
        except ValueError as exc:
            raise HttpError(400, "invalid_load", str(exc)) from None
        return Response(200, {"loaded": counts})

    def _admin_get_faults(self, request: Request) -> Response:
        return Response(200, {"faults": self.faults()})

    def _admin_set_fault(self, request: Request) -> Response:
        try:
            fault = Fault.from_json(request.json())
        except ValueError as exc:
            raise HttpError(400, "invalid_fault", str(exc)) from None
        with self._lock:
            self._faults.append(fault)
        return Response(200, {"fault": fault.to_json(), "faults": self.faults()})

    def _admin_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return Response(200, {"faults": []})


def now_ts() -> int:
    """The current unix time in whole seconds."""
    return int(time.time())


def optional_str(record: Mapping[str, Any], name: str) -> str | None:
    """``record[name]`` if it is a string or absent/None; ValueError otherwise."""
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    return value
