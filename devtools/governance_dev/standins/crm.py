"""Stand-in for ``crm``: contacts with notes and activities (base path ``/api``, JSON only).

* ``GET /api/contacts/search?email=X`` -> ``{"results": [{id, email, first_name, last_name}], "total"}``,
  trimmed and case-insensitive, ordered by id; several contacts may share an address (CRMs do not
  enforce uniqueness), so callers must handle every result. An empty ``email`` is a 400.
* ``GET /api/contacts/{id}`` -> the contact's fields; ``GET /api/contacts/{id}/export`` -> the full
  record including ``notes`` and ``activities`` (what a data-subject export takes).
* ``POST /api/contacts`` (201), ``PATCH /api/contacts/{id}``, ``POST /api/contacts/{id}/notes`` and
  ``POST /api/contacts/{id}/activities`` (201) create and change records.
* ``DELETE /api/contacts/{id}`` -> 204 with no body; again -> 404 ``{"error": "not_found"}``.
* ``X-API-Key: <key>`` is required; errors are ``{"error": code, "message": text}``.

Ids are integers and are never reused, not even after a deletion and a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from governance_dev.standins.base import (
    HttpError,
    Request,
    Response,
    Route,
    StandinServer,
    normalise_email,
    optional_str,
    route,
)

_CONTACT_FIELDS = ("email", "first_name", "last_name", "phone", "company")
_SUMMARY_FIELDS = ("id", "email", "first_name", "last_name")


def now_iso() -> str:
    """The current UTC time as ``2024-05-01T12:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class CrmStandin(StandinServer):
    """The ``crm`` stand-in; see the module docstring for the API.

    ``state()`` holds ``contacts`` (full records, insertion order), ``deleted`` (ids of contacts
    deleted and not re-created, in deletion order), ``sequences`` (next ids), ``request_log`` and
    ``faults``.
    """

    service = "crm"

    _contacts: dict[int, dict[str, Any]]
    _by_email: dict[str, dict[int, None]]
    _deleted: dict[int, None]
    _next: dict[str, int]

    # ----------------------------------------------------------------- hooks
    def _api_routes(self) -> list[Route]:
        contact = "/api/contacts/{id:[0-9]+}"
        return [
            route("GET", "/api/contacts/search", self._search),
            route("POST", "/api/contacts", self._create, mutates=True),
            route("GET", contact, self._get),
            route("PATCH", contact, self._update, mutates=True),
            route("DELETE", contact, self._delete, mutates=True),
            route("GET", contact + "/export", self._export),
            route("POST", contact + "/notes", self._add_note, mutates=True),
            route("POST", contact + "/activities", self._add_activity, mutates=True),
        ]

    def _authorized(self, request: Request) -> bool:
        return self._key_matches(request.headers.get("X-API-Key"))

    def _error_body(self, status: int, code: str, message: str, param: str | None) -> Any:
        return {"error": code, "message": message}

    def _reset_data(self) -> None:
        self._contacts = {}
        self._by_email = {}
        self._deleted = {}
        self._next = {"contact": 1, "note": 1, "activity": 1}

    def _load_data(self, payload: Mapping[str, Any]) -> dict[str, int]:
        unknown = set(payload) - {"contacts"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))} (expected contacts)")
        contacts = payload.get("contacts") or []
        if not isinstance(contacts, list):
            raise ValueError("contacts must be a list")
        now = now_iso()
        # Validate everything first, so an invalid load inserts nothing.
        prepared = [self._prepare(raw, f"contacts[{i}]", now, strict=False) for i, raw in enumerate(contacts)]
        # Given ids move the sequences on before any id is generated, so generated ids never collide.
        for contact in prepared:
            self._bump("contact", contact.get("id"))
            for note in contact["notes"]:
                self._bump("note", note.get("id"))
            for activity in contact["activities"]:
                self._bump("activity", activity.get("id"))
        for contact in prepared:
            self._assign_ids(contact)
            self._store(contact)
        return {"contacts": len(prepared)}

    def _dump_data(self) -> dict[str, Any]:
        return {
            "contacts": list(self._contacts.values()),
            "deleted": list(self._deleted),
            "sequences": dict(self._next),
        }

    def _restore_data(self, data: Mapping[str, Any]) -> None:
        self._reset_data()
        self._load_data({"contacts": data.get("contacts", [])})
        for cid in data.get("deleted", []):
            if not _is_id(cid):
                raise ValueError("deleted ids must be positive integers")
            self._deleted[cid] = None
            self._bump("contact", cid)
        for kind, value in (data.get("sequences") or {}).items():
            if kind in self._next and _is_id(value):
                self._next[kind] = max(self._next[kind], value)

    # ----------------------------------------------------------------- Python API
    def load(self, contacts: Iterable[Mapping[str, Any]] = ()) -> dict[str, int]:
        """Bulk-insert contacts as given (see ``POST /_admin/load``); returns counts. Missing fields
        default to null / empty lists / now, missing ids (of notes and activities too) are generated;
        ValueError if invalid."""
        # The JSON round trip copies the caller's records and rejects what HTTP could not carry.
        return self.load_payload(json.loads(json.dumps({"contacts": list(contacts)})))

    def contacts(self) -> list[dict[str, Any]]:
        """Live contacts as full records (a copy), insertion order."""
        return list(self.state()["contacts"])

    def deleted_ids(self) -> list[int]:
        """Ids of contacts deleted and not re-created, in deletion order."""
        with self._lock:
            return list(self._deleted)

    # ----------------------------------------------------------------- records
    def _bump(self, kind: str, value: Any) -> None:
        if _is_id(value):
            self._next[kind] = max(self._next[kind], value + 1)

    def _take(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    def _assign_ids(self, contact: dict[str, Any]) -> None:
        if contact["id"] is None:
            contact["id"] = self._take("contact")
        for note in contact["notes"]:
            if note["id"] is None:
                note["id"] = self._take("note")
        for activity in contact["activities"]:
            if activity["id"] is None:
                activity["id"] = self._take("activity")

    @staticmethod
    def _prepare(raw: Any, where: str, now: str, *, strict: bool) -> dict[str, Any]:
        """A full contact record from ``raw``. ``strict`` (the public API) rejects unknown fields and
        given ids; a bulk load keeps whatever it is given."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        allowed = {*_CONTACT_FIELDS, "notes", "activities"}
        if strict:
            unknown = sorted(set(raw) - allowed)
            if unknown:
                raise ValueError(f"{where}: unknown field {unknown[0]}")
        elif raw.get("id") is not None and not _is_id(raw["id"]):
            raise ValueError(f"{where}: id must be a positive integer")
        try:
            for name in _CONTACT_FIELDS:
                optional_str(raw, name)
            for name in ("created_at", "updated_at"):
                optional_str(raw, name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        record: dict[str, Any] = {"id": None, **{name: None for name in _CONTACT_FIELDS}}
        record.update({"notes": [], "activities": [], "created_at": now, "updated_at": now})
        record.update(raw)
        record["notes"] = [
            CrmStandin._prepare_note(n, f"{where}.notes[{i}]", now, strict=strict)
            for i, n in enumerate(raw.get("notes") or [])
        ]
        record["activities"] = [
            CrmStandin._prepare_activity(a, f"{where}.activities[{i}]", now, strict=strict)
            for i, a in enumerate(raw.get("activities") or [])
        ]
        record["created_at"] = record["created_at"] or now
        record["updated_at"] = record["updated_at"] or record["created_at"]
        return record

    @staticmethod
    def _prepare_note(raw: Any, where: str, now: str, *, strict: bool) -> dict[str, Any]:
        if isinstance(raw, str):
            raw = {"body": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("body"), str):
            raise ValueError(f"{where} must be an object with a string body")
        if strict and sorted(set(raw) - {"body"}):
            raise ValueError(f"{where}: only body may be given")
        if raw.get("id") is not None and not _is_id(raw["id"]):
            raise ValueError(f"{where}: id must be a positive integer")
        note: dict[str, Any] = {"id": None, "body": raw["body"], "created_at": None, **raw}
        note["created_at"] = note["created_at"] or now
        return note

    @staticmethod
    def _prepare_activity(raw: Any, where: str, now: str, *, strict: bool) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not raw["type"]:
            raise ValueError(f"{where} must be an object with a non-empty string type")
        if strict and sorted(set(raw) - {"type", "at", "summary"}):
            raise ValueError(f"{where}: only type, at and summary may be given")
        if raw.get("id") is not None and not _is_id(raw["id"]):
            raise ValueError(f"{where}: id must be a positive integer")
        try:
            optional_str(raw, "at")
            optional_str(raw, "summary")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        activity: dict[str, Any] = {"id": None, "type": raw["type"], "at": None, "summary": None, **raw}
        activity["at"] = activity["at"] or now
        return activity

    def _store(self, contact: dict[str, Any]) -> None:
        cid = contact["id"]
        old = self._contacts.get(cid)
        if old is not None:
            self._unindex(old)
        self._contacts[cid] = contact
        self._deleted.pop(cid, None)
        if isinstance(contact.get("email"), str):
            self._by_email.setdefault(normalise_email(contact["email"]), {})[cid] = None

    def _unindex(self, contact: Mapping[str, Any]) -> None:
        email = contact.get("email")
        if isinstance(email, str):
            key = normalise_email(email)
            ids = self._by_email.get(key)
            if ids is not None:
                ids.pop(contact["id"], None)
                if not ids:
                    del self._by_email[key]

    def _contact_or_404(self, request: Request) -> dict[str, Any]:
        contact = self._contacts.get(int(request.params["id"]))
        if contact is None:
            raise HttpError(404, "not_found", "No such contact.")
        return contact

    @staticmethod
    def _fields(contact: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in contact.items() if k not in ("notes", "activities")}

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.content_type and not request.content_type.endswith("json"):
            raise HttpError(
                415, "unsupported_media_type", "Send a JSON body (Content-Type: application/json)."
            )
        return request.json_object()

    # ----------------------------------------------------------------- handlers
    def _search(self, request: Request) -> Response:
        email = request.query_one("email")
        if email is None or not normalise_email(email):
            raise HttpError(400, "bad_request", "The email parameter is required and must not be empty.")
        ids = sorted(self._by_email.get(normalise_email(email), {}))
        results = [{k: self._contacts[i][k] for k in _SUMMARY_FIELDS} for i in ids]
        return Response(200, {"results": results, "total": len(results)})

    def _create(self, request: Request) -> Response:
        try:
            contact = self._prepare(self._body(request), "contact", now_iso(), strict=True)
        except ValueError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        self._assign_ids(contact)
        self._store(contact)
        return Response(201, contact)

    def _get(self, request: Request) -> Response:
        return Response(200, self._fields(self._contact_or_404(request)))

    def _update(self, request: Request) -> Response:
        contact = self._contact_or_404(request)
        changes = self._body(request)
        unknown = sorted(set(changes) - set(_CONTACT_FIELDS))
        if unknown:
            raise HttpError(400, "bad_request", f"Field {unknown[0]} cannot be changed here.")
        try:
            for name in _CONTACT_FIELDS:
                optional_str(changes, name)
        except ValueError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        # Replace the record rather than mutate it, and re-index its e-mail.
        updated = {**contact, **changes, "updated_at": now_iso()}
        self._store(updated)
        return Response(200, self._fields(updated))

    def _delete(self, request: Request) -> Response:
        contact = self._contact_or_404(request)
        self._unindex(contact)
        del self._contacts[contact["id"]]
        self._deleted[contact["id"]] = None
        return Response(204)

    def _export(self, request: Request) -> Response:
        return Response(200, self._contact_or_404(request))

    def _add_note(self, request: Request) -> Response:
        contact = self._contact_or_404(request)
        try:
            note = self._prepare_note(self._body(request), "note", now_iso(), strict=True)
        except ValueError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        note["id"] = self._take("note")
        self._store({**contact, "notes": [*contact["notes"], note], "updated_at": now_iso()})
        return Response(201, note)

    def _add_activity(self, request: Request) -> Response:
        contact = self._contact_or_404(request)
        try:
            activity = self._prepare_activity(self._body(request), "activity", now_iso(), strict=True)
        except ValueError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        activity["id"] = self._take("activity")
        self._store({**contact, "activities": [*contact["activities"], activity], "updated_at": now_iso()})
        return Response(201, activity)
