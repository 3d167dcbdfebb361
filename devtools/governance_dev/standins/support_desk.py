"""Stand-in for ``support_desk``: a help desk whose API the data map's request templates cannot
express, so it is reached through a Python connector (``governance.connectors.support_desk``).

* ``POST /oauth/token`` (OAuth 2 client credentials): ``grant_type=client_credentials`` as a form
  or JSON body, the client id and secret as HTTP basic auth (or ``client_id``/``client_secret``
  in the body) -> ``{"access_token", "token_type": "Bearer", "expires_in"}``; a bad client is
  401 ``invalid_client``. Tokens expire after ``token_ttl_s`` (an expired token is a 401).
* ``POST /api/v2/requesters/search`` with a JSON body ``{"identity": {"type": "email", "value": X}}``
  -> ``{"requesters": [{id, email, name}]}`` (trimmed, case-insensitive; ``type`` may also be
  ``phone``, matched exactly).
* ``GET /api/v2/requesters/{id}`` -> the requester with its ``tickets`` (what an export takes).
* ``POST /api/v2/requesters/{id}/erasure_jobs`` -> 202 ``{"job": {id, requester_id, status}}``: an
  asynchronous deletion job. Asking again for a requester that already has a job returns that job
  (200), whatever its status, so a retried erase starts nothing new; 404 for an unknown requester
  without a job.
* ``GET /api/v2/erasure_jobs/{id}`` -> the job: ``queued``, then ``running``, then ``completed``
  (each poll moves it on; ``polls_to_complete`` polls in all). The requester and its tickets are
  deleted when the job completes.

Every ``/api`` call needs ``Authorization: Bearer <access token>``; the client secret is the
stand-in's API key and the client id ``CLIENT_ID``. Ids are integers and are never reused.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

from governance_dev.standins.base import (
    HttpError,
    Request,
    Response,
    Route,
    StandinServer,
    normalise_email,
    route,
)

CLIENT_ID = "governance"
_SUMMARY_FIELDS = ("id", "email", "name")


class SupportDeskStandin(StandinServer):
    """The ``support_desk`` stand-in; see the module docstring for the API.

    ``state()`` holds ``requesters`` (with tickets), ``jobs`` (erasure jobs by id), ``deleted``
    (requester ids erased), ``sequences``, ``tokens_issued``, ``request_log`` and ``faults``.
    """

    service = "support_desk"
    token_ttl_s: float = 300.0
    polls_to_complete: int = 2

    _requesters: dict[int, dict[str, Any]]
    _jobs: dict[int, dict[str, Any]]
    _deleted: dict[int, None]
    _tokens: dict[str, float]
    _tokens_issued: int
    _next: dict[str, int]

    # ----------------------------------------------------------------- hooks
    def _api_routes(self) -> list[Route]:
        requester = "/api/v2/requesters/{id:[0-9]+}"
        return [
            route("POST", "/oauth/token", self._token),
            route("POST", "/api/v2/requesters/search", self._search),
            route("GET", requester, self._get),
            route("POST", requester + "/erasure_jobs", self._start_erasure, mutates=True),
            route("GET", "/api/v2/erasure_jobs/{id:[0-9]+}", self._poll, mutates=True),
        ]

    def _authorized(self, request: Request) -> bool:
        if request.path == "/oauth/token":
            return True  # the token endpoint checks the client credentials itself
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            return False
        with self._lock:
            expires = self._tokens.get(header[len("Bearer ") :])
            return expires is not None and expires > time.monotonic()

    def _unauthorized_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}

    def _error_body(self, status: int, code: str, message: str, param: str | None) -> Any:
        return {"error": code, "error_description": message}

    def _reset_data(self) -> None:
        self._requesters = {}
        self._jobs = {}
        self._deleted = {}
        self._tokens = {}
        self._tokens_issued = 0
        self._next = {"requester": 1, "ticket": 1, "job": 1}

    def _load_data(self, payload: Mapping[str, Any]) -> dict[str, int]:
        unknown = set(payload) - {"requesters"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))} (expected requesters)")
        raw = payload.get("requesters") or []
        if not isinstance(raw, list):
            raise ValueError("requesters must be a list")
        prepared: list[dict[str, Any]] = []
        for index, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise ValueError(f"requesters[{index}] must be an object")
            email, phone, name = item.get("email"), item.get("phone"), item.get("name")
            for key, value in (("email", email), ("phone", phone), ("name", name)):
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"requesters[{index}].{key} must be a string")
            tickets = item.get("tickets") or []
            if not isinstance(tickets, list) or not all(isinstance(t, Mapping) for t in tickets):
                raise ValueError(f"requesters[{index}].tickets must be a list of objects")
            prepared.append({"id": item.get("id"), "email": email, "phone": phone, "name": name,
                             "tickets": [dict(t) for t in tickets]})  # fmt: skip
        for requester in prepared:
            if requester["id"] is None:
                requester["id"] = self._take("requester")
            else:
                self._next["requester"] = max(self._next["requester"], int(requester["id"]) + 1)
            for ticket in requester["tickets"]:
                ticket.setdefault("id", self._take("ticket"))
            self._requesters[int(requester["id"])] = requester
            self._deleted.pop(int(requester["id"]), None)
        return {"requesters": len(prepared)}

    def _dump_data(self) -> dict[str, Any]:
        return {
            "requesters": list(self._requesters.values()),
            "jobs": list(self._jobs.values()),
            "deleted": list(self._deleted),
            "sequences": dict(self._next),
            "tokens_issued": self._tokens_issued,
        }

    def _restore_data(self, data: Mapping[str, Any]) -> None:
        self._reset_data()
        self._load_data({"requesters": data.get("requesters", [])})
        self._jobs = {int(j["id"]): dict(j) for j in data.get("jobs", [])}
        self._deleted = {int(i): None for i in data.get("deleted", [])}
        self._next.update({k: int(v) for k, v in data.get("sequences", {}).items()})

    # ----------------------------------------------------------------- helpers for tests and seeding
    def load(self, requesters: Iterable[Mapping[str, Any]] = ()) -> dict[str, int]:
        """Bulk-insert requesters (see ``POST /_admin/load``); returns counts."""
        return self.load_payload(json.loads(json.dumps({"requesters": list(requesters)})))

    def requesters(self) -> list[dict[str, Any]]:
        """Live requesters with their tickets (a copy)."""
        return list(self.state()["requesters"])

    def jobs(self) -> list[dict[str, Any]]:
        """Every erasure job (a copy), in creation order."""
        return list(self.state()["jobs"])

    def deleted_ids(self) -> list[int]:
        with self._lock:
            return list(self._deleted)

    def expire_tokens(self) -> None:
        """Make every issued token invalid (to test a connector's refresh)."""
        with self._lock:
            self._tokens.clear()

    # ----------------------------------------------------------------- handlers
    def _take(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    def _token(self, request: Request) -> Response:
        if request.content_type == "application/json":
            body = {k: str(v) for k, v in request.json_object().items()}
        else:
            body = {k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if body.get("grant_type") != "client_credentials":
            raise HttpError(400, "unsupported_grant_type", "Only grant_type=client_credentials is supported.")
        client_id, secret = body.get("client_id"), body.get("client_secret")
        header = request.headers.get("Authorization") or ""
        if header.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise HttpError(401, "invalid_client", "Malformed basic credentials.") from None
        if client_id != CLIENT_ID or not self._key_matches(secret):
            raise HttpError(401, "invalid_client", "Unknown client or wrong secret.")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_ttl_s
        self._tokens_issued += 1
        return Response(200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl_s)})

    def _search(self, request: Request) -> Response:
        identity = request.json_object().get("identity")
        if not isinstance(identity, Mapping) or identity.get("type") not in ("email", "phone"):
            raise HttpError(400, "invalid_request", 'Body must be {"identity": {"type": "email"|"phone", "value": ...}}.')
        value = identity.get("value")
        if not isinstance(value, str) or not value.strip():
            raise HttpError(400, "invalid_request", "identity.value must be a non-empty string.")
        if identity["type"] == "email":
            wanted = normalise_email(value)
            found = [r for r in self._requesters.values() if r.get("email") and normalise_email(r["email"]) == wanted]
        else:
            found = [r for r in self._requesters.values() if r.get("phone") == value.strip()]
        found.sort(key=lambda r: r["id"])
        return Response(200, {"requesters": [{k: r.get(k) for k in _SUMMARY_FIELDS} for r in found]})

    def _requester_or_404(self, request: Request) -> dict[str, Any]:
        requester = self._requesters.get(int(request.params["id"]))
        if requester is None:
            raise HttpError(404, "not_found", "No such requester.")
        return requester

    def _get(self, request: Request) -> Response:
        return Response(200, self._requester_or_404(request))

    def _start_erasure(self, request: Request) -> Response:
        requester_id = int(request.params["id"])
        for job in self._jobs.values():
            if job["requester_id"] == requester_id:
                return Response(200, {"job": job})  # one job per requester: a retry starts nothing
        self._requester_or_404(request)
        job = {"id": self._take("job"), "requester_id": requester_id, "status": "queued", "polls": 0}
        self._jobs[job["id"]] = job
        return Response(202, {"job": job})

    def _poll(self, request: Request) -> Response:
        job = self._jobs.get(int(request.params["id"]))
        if job is None:
            raise HttpError(404, "not_found", "No such erasure job.")
        if job["status"] != "completed":
            job["polls"] += 1
            if job["polls"] >= self.polls_to_complete:
                self._requesters.pop(job["requester_id"], None)
                self._deleted[job["requester_id"]] = None
                job["status"] = "completed"
            else:
                job["status"] = "running"
        return Response(200, {"job": job})
