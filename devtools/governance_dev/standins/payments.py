"""Stand-in for ``payments_processor``: a Stripe-like API (base path ``/v1``) of customers and charges.

Behaviour copied from Stripe where the governance code depends on it:

* ``GET /v1/customers?email=X`` lists customers newest first in Stripe's list shape, paged with
  ``limit`` (1-100, default 10), ``starting_after`` / ``ending_before`` cursors and ``has_more``.
  Unlike Stripe the e-mail match is trimmed and case-insensitive (as Stripe's search is). An empty
  ``email`` is a 400, never "list everyone": a caller bug must not turn into a mass deletion.
* ``DELETE /v1/customers/{id}`` answers ``{"id", "object": "customer", "deleted": true}``; afterwards
  ``GET`` answers the same deleted stub, and a second ``DELETE`` is a 404 ``resource_missing``.
* Deleting a customer leaves their charges, which only ever hold the customer id.
* ``Authorization: Bearer <key>`` is required; errors use ``{"error": {"type", "code", "message"}}``.
"""

from __future__ import annotations

import json
import random
import string
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from governance_dev.standins.base import (
    HttpError,
    Request,
    Response,
    Route,
    StandinServer,
    normalise_email,
    now_ts,
    optional_str,
    route,
)

_ID_ALPHABET = string.ascii_letters + string.digits
# Ids only need to be unique, not unguessable; secrets.choice made bulk loads of 20k records slow.
_id_random = random.Random()
_CUSTOMER_PARAMS = frozenset({"email", "name", "phone", "address", "metadata"})
_ADDRESS_FIELDS = frozenset({"line1", "line2", "city", "state", "postal_code", "country"})


class _Collection:
    """Records keyed by id, listed the Stripe way: newest first by ``created``, ties broken by
    insertion order. A deleted record keeps its position, so a deleted id still works as a cursor
    (a client paging while it deletes must not get an error)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self._positions: dict[str, tuple[int, int]] = {}
        self._seq = 0
        self._sorted: list[str] | None = None

    def put(self, record: dict[str, Any]) -> None:
        """Insert or replace ``record`` (which has an ``id`` and an integer ``created``)."""
        rid = record["id"]
        seq = self._positions[rid][1] if rid in self._positions else self._next_seq()
        self._positions[rid] = (int(record["created"]), seq)
        self.records[rid] = record
        self._sorted = None

    def remove(self, rid: str) -> dict[str, Any]:
        """Remove and return the record ``rid`` (KeyError when absent); its position stays."""
        record = self.records.pop(rid)
        self._sorted = None
        return record

    def has_position(self, rid: str) -> bool:
        """Whether ``rid`` is, or once was, in the collection."""
        return rid in self._positions

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _key(self, rid: str) -> tuple[int, int]:
        created, seq = self._positions[rid]
        return (-created, -seq)

    def ordered(self, subset: Iterable[str] | None = None) -> list[str]:
        """Ids of live records newest first: all of them, or those of ``subset``."""
        if subset is None:
            if self._sorted is None:
                self._sorted = sorted(self.records, key=self._key)
            return self._sorted
        return sorted((rid for rid in subset if rid in self.records), key=self._key)

    def page(self, ids: list[str], request: Request, kind: str) -> tuple[list[str], bool]:
        """The page of ``ids`` (ordered newest first) that the request's ``limit``,
        ``starting_after`` and ``ending_before`` select, and whether there is more beyond it."""
        limit = _limit(request)
        after = request.query_one("starting_after")
        before = request.query_one("ending_before")
        if after and before:
            raise HttpError(400, "parameter_invalid", "Pass starting_after or ending_before, not both.")
        for name, cursor in (("starting_after", after), ("ending_before", before)):
            if cursor and not self.has_position(cursor):
                raise HttpError(400, "resource_missing", f"No such {kind}: '{cursor}'", param=name)
        if after:
            start = bisect_right(ids, self._key(after), key=self._key)
            return ids[start : start + limit], start + limit < len(ids)
        if before:
            end = bisect_left(ids, self._key(before), key=self._key)
            return ids[max(0, end - limit) : end], end - limit > 0
        return ids[:limit], limit < len(ids)


def _limit(request: Request) -> int:
    raw = request.query_one("limit")
    if raw is None:
        return 10
    try:
        limit = int(raw)
    except ValueError:
        raise HttpError(400, "parameter_invalid_integer", f"Invalid integer: {raw}", param="limit") from None
    if not 1 <= limit <= 100:
        raise HttpError(
            400, "parameter_invalid_integer", "This value must be between 1 and 100.", param="limit"
        )
    return limit


def _new_id(prefix: str, taken: _Collection, length: int) -> str:
    while True:
        candidate = prefix + "".join(_id_random.choices(_ID_ALPHABET, k=length))
        if not taken.has_position(candidate):
            return candidate


def _form_to_params(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: ``email=a`` and one level of nesting ``metadata[plan]=pro``."""
    params: dict[str, Any] = {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "invalid_body", "Malformed form body.") from None
    for key, value in pairs:
        if "[" in key and key.endswith("]"):
            outer, inner = key[:-1].split("[", 1)
            nested = params.setdefault(outer, {})
            if not isinstance(nested, dict):
                raise HttpError(400, "parameter_invalid", f"Invalid hash: {outer}", param=outer)
            nested[inner] = value
        else:
            params[key] = value
    return params


def _check_customer_fields(record: Mapping[str, Any]) -> None:
    """ValueError unless the customer fields present have the types Stripe gives them."""
    for name in ("email", "name", "phone"):
        optional_str(record, name)
    address = record.get("address")
    if address is not None:
        if not isinstance(address, dict) or not all(
            v is None or isinstance(v, str) for v in address.values()
        ):
            raise ValueError("address must be an object of strings or null")
    metadata = record.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise ValueError("metadata must be an object of strings")
    if "created" in record and (
        isinstance(record["created"], bool) or not isinstance(record["created"], int)
    ):
        raise ValueError("created must be an integer unix timestamp")


class PaymentsProcessorStandin(StandinServer):
    """The Stripe-like ``payments_processor``; see the module docstring for the API.

    ``state()`` holds ``customers`` and ``charges`` (insertion order), ``deleted`` (ids of customers
    deleted and not re-created, in deletion order), ``request_log`` and ``faults``.
    """

    service = "payments_processor"

    _customers: _Collection
    _charges: _Collection
    _by_email: dict[str, dict[str, None]]
    _charges_by_customer: dict[str, dict[str, None]]
    _deleted: dict[str, None]

    # ----------------------------------------------------------------- hooks
    def _api_routes(self) -> list[Route]:
        return [
            route("GET", "/v1/customers", self._list_customers),
            route("POST", "/v1/customers", self._create_customer, mutates=True),
            route("GET", "/v1/customers/{id}", self._get_customer),
            route("POST", "/v1/customers/{id}", self._update_customer, mutates=True),
            route("DELETE", "/v1/customers/{id}", self._delete_customer, mutates=True),
            route("GET", "/v1/charges", self._list_charges),
            route("GET", "/v1/charges/{id}", self._get_charge),
        ]

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and self._key_matches(token.strip())

    def _unauthorized_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="Stripe"'}

    def _error_body(self, status: int, code: str, message: str, param: str | None) -> Any:
        # Stripe reports bad keys, bad params and missing objects all as invalid_request_error.
        if status >= 500:
            error_type = "api_error"
        elif status == 429:
            error_type, code = "invalid_request_error", "rate_limit"
        else:
            error_type = "invalid_request_error"
        error: dict[str, Any] = {"type": error_type, "code": code, "message": message}
        if param is not None:
            error["param"] = param
        return {"error": error}

    def _reset_data(self) -> None:
        self._customers = _Collection()
        self._charges = _Collection()
        self._by_email = {}
        self._charges_by_customer = {}
        self._deleted = {}

    def _load_data(self, payload: Mapping[str, Any]) -> dict[str, int]:
        unknown = set(payload) - {"customers", "charges"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))} (expected customers, charges)")
        customers = payload.get("customers") or []
        charges = payload.get("charges") or []
        if not isinstance(customers, list) or not isinstance(charges, list):
            raise ValueError("customers and charges must be lists")
        now = now_ts()
        # Validate everything first, so an invalid load inserts nothing.
        prepared_customers = [self._prepare_customer(c, i, now) for i, c in enumerate(customers)]
        prepared_charges = [self._prepare_charge(c, i, now) for i, c in enumerate(charges)]
        for customer in prepared_customers:
            if customer["id"] is None:
                customer["id"] = _new_id("cus_", self._customers, 14)
            self._store_customer(customer)
        for charge in prepared_charges:
            if charge["id"] is None:
                charge["id"] = _new_id("ch_", self._charges, 24)
            self._store_charge(charge)
        return {"customers": len(prepared_customers), "charges": len(prepared_charges)}

    def _dump_data(self) -> dict[str, Any]:
        return {
            "customers": list(self._customers.records.values()),
            "charges": list(self._charges.records.values()),
            "deleted": list(self._deleted),
        }

    def _restore_data(self, data: Mapping[str, Any]) -> None:
        self._reset_data()
        self._load_data({"customers": data.get("customers", []), "charges": data.get("charges", [])})
        for cid in data.get("deleted", []):
            if not isinstance(cid, str):
                raise ValueError("deleted ids must be strings")
            # A deleted customer still answers GET with the deleted stub, and works as a cursor.
            if not self._customers.has_position(cid):
                self._customers.put({"id": cid, "created": 0})
                self._customers.remove(cid)
            self._deleted[cid] = None

    # ----------------------------------------------------------------- Python API
    def load(
        self,
        customers: Iterable[Mapping[str, Any]] = (),
        charges: Iterable[Mapping[str, Any]] = (),
    ) -> dict[str, int]:
        """Bulk-insert customers and charges as given (see ``POST /_admin/load``); returns counts.
        Missing fields get Stripe's defaults, missing ids are generated; ValueError if invalid."""
        # The JSON round trip copies the caller's records (so later changes to them cannot reach the
        # server) and rejects anything the HTTP API could not carry either.
        payload = json.loads(json.dumps({"customers": list(customers), "charges": list(charges)}))
        return self.load_payload(payload)

    def customers(self) -> list[dict[str, Any]]:
        """Live customers (a copy), insertion order."""
        return list(self.state()["customers"])

    def charges(self) -> list[dict[str, Any]]:
        """All charges (a copy), insertion order."""
        return list(self.state()["charges"])

    def deleted_ids(self) -> list[str]:
        """Ids of customers deleted and not re-created, in deletion order."""
        with self._lock:
            return list(self._deleted)

    # ----------------------------------------------------------------- records
    @staticmethod
    def _prepare_customer(raw: Any, index: int, now: int) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ValueError(f"customers[{index}] must be an object")
        try:
            _check_customer_fields(raw)
            if raw.get("id") is not None and (not isinstance(raw["id"], str) or not raw["id"]):
                raise ValueError("id must be a non-empty string")
        except ValueError as exc:
            raise ValueError(f"customers[{index}]: {exc}") from None
        record: dict[str, Any] = {
            "id": None,
            "object": "customer",
            "email": None,
            "name": None,
            "phone": None,
            "address": None,
            "created": now,
            "metadata": {},
        }
        record.update(raw)
        record["object"] = "customer"
        record.pop("deleted", None)
        if record["metadata"] is None:
            record["metadata"] = {}
        return record

    @staticmethod
    def _prepare_charge(raw: Any, index: int, now: int) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ValueError(f"charges[{index}] must be an object")
        problems: list[str] = []
        if raw.get("id") is not None and (not isinstance(raw["id"], str) or not raw["id"]):
            problems.append("id must be a non-empty string")
        if raw.get("customer") is not None and not isinstance(raw["customer"], str):
            problems.append("customer must be a customer id or null")
        if "amount" in raw and (isinstance(raw["amount"], bool) or not isinstance(raw["amount"], int)):
            problems.append("amount must be an integer (smallest currency unit)")
        if "created" in raw and (isinstance(raw["created"], bool) or not isinstance(raw["created"], int)):
            problems.append("created must be an integer unix timestamp")
        if problems:
            raise ValueError(f"charges[{index}]: {'; '.join(problems)}")
        record: dict[str, Any] = {
            "id": None,
            "object": "charge",
            "customer": None,
            "amount": 0,
            "currency": "usd",
            "created": now,
            "description": None,
            "payment_method_details": {"card": {"last4": None, "brand": None}},
        }
        record.update(raw)
        record["object"] = "charge"
        return record

    def _store_customer(self, customer: dict[str, Any]) -> None:
        cid = customer["id"]
        old = self._customers.records.get(cid)
        if old is not None:
            self._unindex_customer(old)
        self._customers.put(customer)
        self._deleted.pop(cid, None)
        if isinstance(customer.get("email"), str):
            self._by_email.setdefault(normalise_email(customer["email"]), {})[cid] = None

    def _unindex_customer(self, customer: Mapping[str, Any]) -> None:
        email = customer.get("email")
        if isinstance(email, str):
            key = normalise_email(email)
            ids = self._by_email.get(key)
            if ids is not None:
                ids.pop(customer["id"], None)
                if not ids:
                    del self._by_email[key]

    def _store_charge(self, charge: dict[str, Any]) -> None:
        old = self._charges.records.get(charge["id"])
        if old is not None and old.get("customer") is not None:
            self._charges_by_customer.get(old["customer"], {}).pop(charge["id"], None)
        self._charges.put(charge)
        if charge.get("customer") is not None:
            self._charges_by_customer.setdefault(charge["customer"], {})[charge["id"]] = None

    def _params(self, request: Request) -> dict[str, Any]:
        """Customer parameters from a JSON or form-encoded body, checked like Stripe checks them."""
        if request.content_type == "application/json":
            params = request.json_object()
        else:
            params = _form_to_params(request.body)
        unknown = sorted(set(params) - _CUSTOMER_PARAMS)
        if unknown:
            raise HttpError(
                400, "parameter_unknown", f"Received unknown parameter: {unknown[0]}", param=unknown[0]
            )
        address = params.get("address")
        if isinstance(address, dict):
            bad = sorted(set(address) - _ADDRESS_FIELDS)
            if bad:
                raise HttpError(400, "parameter_unknown", f"Received unknown parameter: address[{bad[0]}]")
        try:
            _check_customer_fields(params)
        except ValueError as exc:
            raise HttpError(400, "parameter_invalid", str(exc)) from None
        return params

    def _customer_or_404(self, cid: str) -> dict[str, Any]:
        customer = self._customers.records.get(cid)
        if customer is None:
            raise HttpError(404, "resource_missing", f"No such customer: '{cid}'", param="id")
        return customer

    @staticmethod
    def _list(items: list[dict[str, Any]], has_more: bool, url: str) -> Response:
        return Response(200, {"object": "list", "data": items, "has_more": has_more, "url": url})

    # ----------------------------------------------------------------- handlers
    def _list_customers(self, request: Request) -> Response:
        email = request.query_one("email")
        if email is not None:
            key = normalise_email(email)
            if not key:
                raise HttpError(400, "parameter_invalid_empty", "email must not be empty.", param="email")
            ids = self._customers.ordered(self._by_email.get(key, {}))
        else:
            ids = self._customers.ordered()
        page, has_more = self._customers.page(ids, request, "customer")
        return self._list([self._customers.records[i] for i in page], has_more, "/v1/customers")

    def _create_customer(self, request: Request) -> Response:
        params = self._params(request)
        customer = self._prepare_customer(params, 0, now_ts())
        customer["id"] = _new_id("cus_", self._customers, 14)
        self._store_customer(customer)
        return Response(200, customer)

    def _get_customer(self, request: Request) -> Response:
        cid = request.params["id"]
        if cid in self._deleted:
            return Response(200, {"id": cid, "object": "customer", "deleted": True})
        return Response(200, self._customer_or_404(cid))

    def _update_customer(self, request: Request) -> Response:
        customer = dict(self._customer_or_404(request.params["id"]))
        params = self._params(request)
        if "metadata" in params and params["metadata"] is None:
            params["metadata"] = {}
        elif isinstance(params.get("metadata"), dict):
            # Stripe merges metadata; an empty value removes a key.
            merged = {**customer.get("metadata", {}), **params.pop("metadata")}
            customer["metadata"] = {k: v for k, v in merged.items() if v != ""}
        customer.update(params)
        self._store_customer(customer)
        return Response(200, customer)

    def _delete_customer(self, request: Request) -> Response:
        cid = request.params["id"]
        customer = self._customer_or_404(cid)
        self._unindex_customer(customer)
        self._customers.remove(cid)
        self._deleted[cid] = None
        return Response(200, {"id": cid, "object": "customer", "deleted": True})

    def _list_charges(self, request: Request) -> Response:
        customer = request.query_one("customer")
        if customer is not None:
            if not customer.strip():
                raise HttpError(
                    400, "parameter_invalid_empty", "customer must not be empty.", param="customer"
                )
            ids = self._charges.ordered(self._charges_by_customer.get(customer, {}))
        else:
            ids = self._charges.ordered()
        page, has_more = self._charges.page(ids, request, "charge")
        return self._list([self._charges.records[i] for i in page], has_more, "/v1/charges")

    def _get_charge(self, request: Request) -> Response:
        charge = self._charges.records.get(request.params["id"])
        if charge is None:
            raise HttpError(404, "resource_missing", f"No such charge: '{request.params['id']}'", param="id")
        return Response(200, charge)
