"""The processor stand-ins over real HTTP: each test drives them as a client would and then asserts on
the state left in the server (``state()``), not only on the answers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from governance_dev.standins import CrmStandin, PaymentsProcessorStandin, start_standins

if TYPE_CHECKING:
    # Imported only for annotations: importing the plugin module here would stop pytest rewriting it.
    from tests.fixtures.standins import Standins

# Registers the fixtures even before the root conftest lists this plugin (no double registration).
pytest_plugins = ["tests.fixtures.standins"]

EMAIL = "Alice.Smith@Example.COM"


class Api:
    """A keep-alive client for one stand-in, with its credentials set."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers.update(headers)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def pay(clean_standins: Standins) -> Iterator[Api]:
    api = Api(clean_standins.payments.url, {"Authorization": f"Bearer {clean_standins.payments.api_key}"})
    yield api
    api.session.close()


@pytest.fixture
def crm(clean_standins: Standins) -> Iterator[Api]:
    api = Api(clean_standins.crm.url, {"X-API-Key": clean_standins.crm.api_key})
    yield api
    api.session.close()


def _customer_ids(server: PaymentsProcessorStandin) -> list[str]:
    return [c["id"] for c in server.state()["customers"]]


# --------------------------------------------------------------------------- admin and plumbing


def test_health_answers_ok_without_api_key(clean_standins: Standins) -> None:
    for server in (clean_standins.payments, clean_standins.crm):
        response = requests.get(server.url + "/_admin/health", timeout=5)
        assert response.status_code == 200
        assert response.json()["ok"] is True
        assert server.request_log() == []  # admin calls are not client traffic


def test_unknown_route_is_404_and_wrong_method_is_405(pay: Api, crm: Api) -> None:
    assert pay.get("/v1/nothing").status_code == 404
    wrong = pay.request("PUT", "/v1/customers")
    assert wrong.status_code == 405
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert crm.get("/api/nothing").status_code == 404
    assert crm.request("PUT", "/api/contacts/1").status_code == 405
    assert crm.get("/api/contacts/not-a-number").status_code == 404


def test_malformed_json_is_400_and_changes_nothing(clean_standins: Standins, pay: Api, crm: Api) -> None:
    bad = b'{"email": "x@example.com",'
    response = pay.post("/v1/customers", data=bad, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    response = crm.post("/api/contacts", data=bad, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert requests.post(clean_standins.crm.url + "/_admin/load", data=bad, timeout=5).status_code == 400
    assert clean_standins.payments.state()["customers"] == []
    assert clean_standins.crm.state()["contacts"] == []


def test_reset_empties_records_deleted_log_and_faults(clean_standins: Standins, pay: Api) -> None:
    payments = clean_standins.payments
    payments.load(customers=[{"id": "cus_keep", "email": EMAIL}, {"id": "cus_gone", "email": EMAIL}])
    assert pay.delete("/v1/customers/cus_gone").status_code == 200
    payments.set_fault("error", status=500)
    response = requests.post(payments.url + "/_admin/reset", timeout=5)
    assert response.status_code == 200
    state = payments.state()
    assert (state["customers"], state["charges"], state["deleted"]) == ([], [], [])
    assert (state["request_log"], state["faults"]) == ([], [])
    assert pay.get("/v1/customers").status_code == 200  # the fault went too


def test_stop_closes_keepalive_connections_so_a_restart_serves_fresh_state() -> None:
    first = PaymentsProcessorStandin()
    first.start()
    first.load(customers=[{"id": "cus_old"}])
    client = Api(first.url, {"Authorization": "Bearer test-key"})
    assert client.get("/v1/customers/cus_old").status_code == 200
    first.stop()
    second = PaymentsProcessorStandin(port=first.port)
    second.start()
    try:
        # The pooled connection to the stopped server must not answer with its old state.
        assert client.get("/v1/customers/cus_old").status_code == 404
    finally:
        client.session.close()
        second.stop()


# --------------------------------------------------------------------------- payments_processor


def test_payments_email_lookup_is_case_insensitive_and_trims_whitespace(
    clean_standins: Standins, pay: Api
) -> None:
    clean_standins.payments.load(
        customers=[{"id": "cus_alice", "email": EMAIL}, {"id": "cus_bob", "email": "bob@example.com"}]
    )
    response = pay.get("/v1/customers", params={"email": "  alice.smith@example.com\t"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["url"] == "/v1/customers" and body["has_more"] is False
    assert [c["id"] for c in body["data"]] == ["cus_alice"]
    assert body["data"][0]["email"] == EMAIL  # stored as typed
    assert pay.get("/v1/customers", params={"email": "nobody@example.com"}).json()["data"] == []


def test_payments_empty_email_filter_is_rejected_rather_than_listing_everyone(
    clean_standins: Standins, pay: Api
) -> None:
    clean_standins.payments.load(customers=[{"email": EMAIL}])
    response = pay.get("/v1/customers", params={"email": "  "})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "email"


def test_payments_list_pages_with_limit_and_cursors_newest_first(clean_standins: Standins, pay: Api) -> None:
    customers = [{"id": f"cus_{i:03d}", "email": EMAIL, "created": 1_700_000_000 + i} for i in range(25)]
    clean_standins.payments.load(customers=customers)
    newest_first = [f"cus_{i:03d}" for i in reversed(range(25))]

    seen: list[str] = []
    has_more_flags: list[bool] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"email": EMAIL.lower(), "limit": 10}
        if cursor:
            params["starting_after"] = cursor
        body = pay.get("/v1/customers", params=params).json()
        seen += [c["id"] for c in body["data"]]
        has_more_flags.append(body["has_more"])
        if not body["has_more"]:
            break
        cursor = body["data"][-1]["id"]
    assert seen == newest_first
    assert has_more_flags == [True, True, False]

    back = pay.get("/v1/customers", params={"limit": 10, "ending_before": newest_first[10]}).json()
    assert [c["id"] for c in back["data"]] == newest_first[:10]
    assert back["has_more"] is False
    assert len(pay.get("/v1/customers").json()["data"]) == 10  # default limit


def test_payments_limit_outside_1_to_100_is_rejected(pay: Api) -> None:
    for limit in ("0", "101", "ten"):
        response = pay.get("/v1/customers", params={"limit": limit})
        assert response.status_code == 400, limit
        assert response.json()["error"]["param"] == "limit"
    assert pay.get("/v1/customers", params={"limit": 100}).status_code == 200


def test_payments_delete_then_get_shows_deleted_stub_and_second_delete_is_404(
    clean_standins: Standins, pay: Api
) -> None:
    clean_standins.payments.load(customers=[{"id": "cus_a", "email": EMAIL}, {"id": "cus_b", "email": EMAIL}])
    first = pay.delete("/v1/customers/cus_a")
    assert first.status_code == 200
    assert first.json() == {"id": "cus_a", "object": "customer", "deleted": True}
    assert pay.get("/v1/customers/cus_a").json() == {"id": "cus_a", "object": "customer", "deleted": True}
    again = pay.delete("/v1/customers/cus_a")
    assert again.status_code == 404
    assert again.json()["error"]["type"] == "invalid_request_error"
    assert again.json()["error"]["code"] == "resource_missing"
    assert pay.get("/v1/customers/cus_never").status_code == 404
    assert [c["id"] for c in pay.get("/v1/customers", params={"email": EMAIL}).json()["data"]] == ["cus_b"]

    state = clean_standins.payments.state()
    assert [c["id"] for c in state["customers"]] == ["cus_b"]
    assert state["deleted"] == ["cus_a"]


def test_payments_deleted_customer_still_works_as_a_paging_cursor(clean_standins: Standins, pay: Api) -> None:
    clean_standins.payments.load(customers=[{"id": f"cus_{i}", "created": 100 + i} for i in range(4)])
    assert pay.delete("/v1/customers/cus_2").status_code == 200
    body = pay.get("/v1/customers", params={"starting_after": "cus_2"}).json()
    assert [c["id"] for c in body["data"]] == ["cus_1", "cus_0"]
    assert pay.get("/v1/customers", params={"starting_after": "cus_unknown"}).status_code == 400


def test_payments_deleting_a_customer_keeps_their_charges_with_only_the_id(
    clean_standins: Standins, pay: Api
) -> None:
    payments = clean_standins.payments
    payments.load(
        customers=[{"id": "cus_a", "email": EMAIL}, {"id": "cus_b", "email": "b@example.com"}],
        charges=[
            {"id": "ch_1", "customer": "cus_a", "amount": 1000, "created": 10},
            {
                "id": "ch_2",
                "customer": "cus_a",
                "amount": 2500,
                "created": 20,
                "payment_method_details": {"card": {"last4": "4242", "brand": "visa"}},
            },
            {"id": "ch_3", "customer": "cus_b", "amount": 700},
        ],
    )
    assert pay.delete("/v1/customers/cus_a").status_code == 200
    listed = pay.get("/v1/charges", params={"customer": "cus_a"}).json()
    assert [c["id"] for c in listed["data"]] == ["ch_2", "ch_1"]
    assert listed["url"] == "/v1/charges"
    assert pay.get("/v1/charges/ch_2").json()["payment_method_details"]["card"]["last4"] == "4242"

    state = payments.state()
    assert sorted(c["id"] for c in state["charges"]) == ["ch_1", "ch_2", "ch_3"]
    assert EMAIL not in json.dumps(state["charges"])
    assert {c["customer"] for c in state["charges"]} == {"cus_a", "cus_b"}


def test_payments_create_accepts_form_encoded_and_json_bodies(clean_standins: Standins, pay: Api) -> None:
    form = pay.post(
        "/v1/customers",
        data={"email": EMAIL, "name": "Alice Smith", "metadata[user_id]": "42", "address[city]": "Leeds"},
    )
    assert form.status_code == 200
    created = form.json()
    assert created["id"].startswith("cus_") and created["object"] == "customer"
    assert created["metadata"] == {"user_id": "42"} and created["address"] == {"city": "Leeds"}
    assert isinstance(created["created"], int)

    as_json = pay.post("/v1/customers", json={"email": "bob@example.com", "phone": "+441234567890"})
    assert as_json.status_code == 200
    assert as_json.json()["phone"] == "+441234567890"

    stored = {c["id"]: c for c in clean_standins.payments.state()["customers"]}
    assert stored[created["id"]]["email"] == EMAIL
    assert len(stored) == 2


def test_payments_create_rejects_unknown_parameters(clean_standins: Standins, pay: Api) -> None:
    response = pay.post("/v1/customers", data={"email": EMAIL, "emial": "typo"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parameter_unknown"
    assert clean_standins.payments.state()["customers"] == []


def test_payments_update_reindexes_the_email_lookup(clean_standins: Standins, pay: Api) -> None:
    clean_standins.payments.load(customers=[{"id": "cus_a", "email": EMAIL, "metadata": {"a": "1"}}])
    response = pay.post("/v1/customers/cus_a", data={"email": "new@example.com", "metadata[b]": "2"})
    assert response.status_code == 200
    assert response.json()["metadata"] == {"a": "1", "b": "2"}
    assert pay.get("/v1/customers", params={"email": EMAIL}).json()["data"] == []
    assert [
        c["id"] for c in pay.get("/v1/customers", params={"email": "NEW@example.com"}).json()["data"]
    ] == ["cus_a"]


def test_payments_rejects_missing_or_wrong_bearer_key_without_touching_state(
    clean_standins: Standins, pay: Api
) -> None:
    payments = clean_standins.payments
    payments.load(customers=[{"id": "cus_a", "email": EMAIL}])
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {payments.api_key}"},
    ):
        response = requests.delete(payments.url + "/v1/customers/cus_a", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert _customer_ids(payments) == ["cus_a"]
    assert [e["status"] for e in payments.request_log()] == [401, 401, 401]


# --------------------------------------------------------------------------- crm


def test_crm_search_is_case_insensitive_trimmed_and_returns_every_match(
    clean_standins: Standins, crm: Api
) -> None:
    first = crm.post("/api/contacts", json={"email": EMAIL, "first_name": "Alice", "last_name": "Smith"})
    assert first.status_code == 201
    crm.post("/api/contacts", json={"email": EMAIL.lower(), "company": "Acme"})
    crm.post("/api/contacts", json={"email": "bob@example.com"})
    body = crm.get("/api/contacts/search", params={"email": " ALICE.SMITH@example.com "}).json()
    assert body["total"] == 2
    assert body["results"][0] == {
        "id": first.json()["id"],
        "email": EMAIL,
        "first_name": "Alice",
        "last_name": "Smith",
    }
    assert crm.get("/api/contacts/search", params={"email": ""}).status_code == 400
    assert len(clean_standins.crm.state()["contacts"]) == 3


def test_crm_export_includes_notes_and_activities(clean_standins: Standins, crm: Api) -> None:
    created = crm.post(
        "/api/contacts",
        json={
            "email": EMAIL,
            "notes": [{"body": "Prefers mornings"}],
            "activities": [{"type": "call", "summary": "Intro"}],
        },
    ).json()
    cid = created["id"]
    assert crm.post(f"/api/contacts/{cid}/notes", json={"body": "Asked about pricing"}).status_code == 201
    assert (
        crm.post(
            f"/api/contacts/{cid}/activities", json={"type": "email", "at": "2024-05-01T09:00:00Z"}
        ).status_code
        == 201
    )

    export = crm.get(f"/api/contacts/{cid}/export").json()
    assert export["email"] == EMAIL
    assert [n["body"] for n in export["notes"]] == ["Prefers mornings", "Asked about pricing"]
    assert [a["type"] for a in export["activities"]] == ["call", "email"]
    assert all({"id", "body", "created_at"} <= set(n) for n in export["notes"])
    assert all({"id", "type", "at", "summary"} <= set(a) for a in export["activities"])
    assert "notes" not in crm.get(f"/api/contacts/{cid}").json()  # only the export carries them
    assert clean_standins.crm.state()["contacts"][0]["notes"] == export["notes"]


def test_crm_patch_updates_fields_and_search_follows_the_new_email(
    clean_standins: Standins, crm: Api
) -> None:
    cid = crm.post("/api/contacts", json={"email": EMAIL, "phone": "+44 20 7946 0000"}).json()["id"]
    response = crm.patch(f"/api/contacts/{cid}", json={"email": "alice@new.example", "phone": None})
    assert response.status_code == 200
    assert response.json()["email"] == "alice@new.example"
    assert crm.get("/api/contacts/search", params={"email": EMAIL}).json()["total"] == 0
    assert crm.get("/api/contacts/search", params={"email": "ALICE@new.example"}).json()["total"] == 1
    assert crm.patch(f"/api/contacts/{cid}", json={"notes": []}).status_code == 400
    stored = clean_standins.crm.state()["contacts"][0]
    assert (stored["email"], stored["phone"]) == ("alice@new.example", None)


def test_crm_delete_is_204_then_404_not_found(clean_standins: Standins, crm: Api) -> None:
    keep = crm.post("/api/contacts", json={"email": "keep@example.com"}).json()["id"]
    gone = crm.post("/api/contacts", json={"email": EMAIL}).json()["id"]
    first = crm.delete(f"/api/contacts/{gone}")
    assert first.status_code == 204 and first.content == b""
    again = crm.delete(f"/api/contacts/{gone}")
    assert again.status_code == 404
    assert again.json()["error"] == "not_found"
    assert crm.get(f"/api/contacts/{gone}/export").status_code == 404
    assert crm.get("/api/contacts/search", params={"email": EMAIL}).json() == {"results": [], "total": 0}

    state = clean_standins.crm.state()
    assert [c["id"] for c in state["contacts"]] == [keep]
    assert state["deleted"] == [gone]


def test_crm_rejects_missing_or_wrong_api_key_without_touching_state(clean_standins: Standins) -> None:
    server = clean_standins.crm
    server.load(contacts=[{"id": 7, "email": EMAIL}])
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Bearer {server.api_key}"}):
        response = requests.delete(server.url + "/api/contacts/7", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert [c["id"] for c in server.state()["contacts"]] == [7]


# --------------------------------------------------------------------------- faults


def test_error_fault_fails_only_count_matching_requests_with_retry_after(
    clean_standins: Standins, pay: Api
) -> None:
    payments = clean_standins.payments
    payments.load(customers=[{"id": "cus_a", "email": EMAIL}])
    payments.set_fault("error", status=503, count=2, methods=["DELETE"])

    assert pay.get("/v1/customers/cus_a").status_code == 200  # GET does not match the fault
    for _ in range(2):
        failed = pay.delete("/v1/customers/cus_a")
        assert failed.status_code == 503
        assert failed.headers["Retry-After"] == "1"
        assert failed.json()["error"]["type"] == "api_error"
        assert _customer_ids(payments) == ["cus_a"]  # nothing was deleted
    assert pay.delete("/v1/customers/cus_a").status_code == 200

    state = payments.state()
    assert state["customers"] == [] and state["deleted"] == ["cus_a"]
    assert state["faults"] == []  # used up
    assert [e["status"] for e in state["request_log"]] == [200, 503, 503, 200]


def test_error_fault_with_path_prefix_leaves_other_paths_alone(clean_standins: Standins, crm: Api) -> None:
    clean_standins.crm.set_fault("error", status=429, path_prefix="/api/contacts/search")
    assert crm.post("/api/contacts", json={"email": EMAIL}).status_code == 201
    for _ in range(3):  # count None: until cleared
        assert crm.get("/api/contacts/search", params={"email": EMAIL}).status_code == 429
    clean_standins.crm.clear_faults()
    assert crm.get("/api/contacts/search", params={"email": EMAIL}).json()["total"] == 1


def test_slow_fault_delays_then_answers_normally(clean_standins: Standins, crm: Api) -> None:
    clean_standins.crm.load(contacts=[{"id": 1, "email": EMAIL}])
    clean_standins.crm.set_fault("slow", delay_s=0.5, count=1)
    started = time.monotonic()
    response = crm.get("/api/contacts/1/export")
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["id"] == 1
    assert elapsed >= 0.45
    assert clean_standins.crm.faults() == []


def test_drop_fault_closes_the_connection_without_a_response(clean_standins: Standins, pay: Api) -> None:
    payments = clean_standins.payments
    payments.load(customers=[{"id": "cus_a", "email": EMAIL}])
    payments.set_fault("drop", count=1, methods=["DELETE"], path_prefix="/v1/customers")
    with pytest.raises(requests.ConnectionError):
        pay.delete("/v1/customers/cus_a")
    assert _customer_ids(payments) == ["cus_a"]  # dropped before it was handled
    assert payments.request_log() == [{"method": "DELETE", "path": "/v1/customers/cus_a", "status": None}]
    assert pay.delete("/v1/customers/cus_a").status_code == 200


def test_faults_are_set_listed_and_cleared_over_admin_http(clean_standins: Standins, pay: Api) -> None:
    url = clean_standins.payments.url + "/_admin/faults"
    fault = {"mode": "error", "status": 500, "count": 1, "methods": ["get"], "path_prefix": "/v1/charges"}
    assert requests.post(url, json=fault, timeout=5).status_code == 200
    listed = requests.get(url, timeout=5).json()["faults"]
    assert listed == [{**fault, "methods": ["GET"], "delay_s": 0.0}]
    assert requests.post(url, json={"mode": "explode"}, timeout=5).status_code == 400
    assert requests.post(url, json={"mode": "error", "count": 0}, timeout=5).status_code == 400
    assert requests.delete(url, timeout=5).json() == {"faults": []}
    assert pay.get("/v1/charges").status_code == 200


# --------------------------------------------------------------------------- load, persistence, logs


def test_bulk_load_of_20k_records_in_one_call_keeps_given_ids(clean_standins: Standins) -> None:
    n = 20_000
    customers = [{"email": f"user{i}@example.com", "name": f"User {i}"} for i in range(n)]
    customers[0]["id"] = "cus_given"
    charges = [{"customer": "cus_given", "amount": i} for i in range(n)]
    payments_url = clean_standins.payments.url
    loaded = requests.post(
        payments_url + "/_admin/load", json={"customers": customers, "charges": charges}, timeout=120
    )
    assert loaded.status_code == 200
    assert loaded.json() == {"loaded": {"customers": n, "charges": n}}

    contacts: list[dict[str, Any]] = [
        {"email": f"user{i}@example.com", "notes": [{"body": "seeded"}]} for i in range(n)
    ]
    contacts[0]["id"] = 90_000
    loaded = requests.post(clean_standins.crm.url + "/_admin/load", json={"contacts": contacts}, timeout=120)
    assert loaded.json() == {"loaded": {"contacts": n}}

    payments_state = requests.get(payments_url + "/_admin/state", timeout=120).json()
    assert len(payments_state["customers"]) == n and len(payments_state["charges"]) == n
    assert len({c["id"] for c in payments_state["customers"]}) == n
    assert payments_state["customers"][0]["id"] == "cus_given"
    crm_state = clean_standins.crm.state()
    assert len(crm_state["contacts"]) == n
    assert crm_state["contacts"][0]["id"] == 90_000
    assert len({c["id"] for c in crm_state["contacts"]}) == n

    found = requests.get(
        payments_url + "/v1/customers",
        params={"email": "USER19999@example.com"},
        headers={"Authorization": "Bearer test-key"},
        timeout=5,
    ).json()["data"]
    assert [c["name"] for c in found] == ["User 19999"]


def test_bulk_load_with_an_invalid_record_inserts_nothing(clean_standins: Standins) -> None:
    url = clean_standins.crm.url + "/_admin/load"
    response = requests.post(
        url, json={"contacts": [{"email": "ok@example.com"}, {"id": "seven"}]}, timeout=5
    )
    assert response.status_code == 400
    assert "contacts[1]" in response.json()["message"]
    assert clean_standins.crm.state()["contacts"] == []


def test_state_survives_a_restart_with_the_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "standins.json"
    payments = PaymentsProcessorStandin(state_file=state_file)
    crm_server = CrmStandin(state_file=tmp_path / "crm.json")
    payments.start()
    crm_server.start()
    try:
        pay = Api(payments.url, {"Authorization": "Bearer test-key"})
        kept = pay.post("/v1/customers", data={"email": EMAIL}).json()["id"]
        gone = pay.post("/v1/customers", data={"email": "gone@example.com"}).json()["id"]
        pay.delete(f"/v1/customers/{gone}")
        crm_api = Api(crm_server.url, {"X-API-Key": "test-key"})
        crm_api.post("/api/contacts", json={"email": EMAIL})
        last = crm_api.post("/api/contacts", json={"email": "gone@example.com"}).json()["id"]
        crm_api.delete(f"/api/contacts/{last}")
    finally:
        payments.stop()
        crm_server.stop()
    assert state_file.stat().st_mode & 0o077 == 0  # personal data: owner-only
    assert not list(tmp_path.glob(".*.tmp"))  # temp files were renamed into place

    payments = PaymentsProcessorStandin(state_file=state_file)
    crm_server = CrmStandin(state_file=tmp_path / "crm.json")
    payments.start()
    crm_server.start()
    try:
        pay = Api(payments.url, {"Authorization": "Bearer test-key"})
        assert pay.get(f"/v1/customers/{kept}").json()["email"] == EMAIL
        assert pay.get(f"/v1/customers/{gone}").json()["deleted"] is True
        assert payments.state()["deleted"] == [gone]
        crm_api = Api(crm_server.url, {"X-API-Key": "test-key"})
        assert crm_api.get("/api/contacts/search", params={"email": EMAIL}).json()["total"] == 1
        # Ids are never reused, even that of the last contact, deleted before the restart.
        assert crm_api.post("/api/contacts", json={"email": "new@example.com"}).json()["id"] == last + 1
    finally:
        payments.stop()
        crm_server.stop()


def test_start_standins_with_state_dir_keeps_one_file_per_service(tmp_path: Path) -> None:
    payments, crm_server = start_standins(api_key="k", state_dir=tmp_path / "state")
    try:
        assert payments.url != crm_server.url and payments.api_key == "k"
        payments.load(customers=[{"id": "cus_a"}])
        crm_server.load(contacts=[{"id": 3}])
    finally:
        payments.stop()
        crm_server.stop()
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["crm.json", "payments_processor.json"]
    payments, crm_server = start_standins(api_key="k", state_dir=tmp_path / "state")
    try:
        assert _customer_ids(payments) == ["cus_a"]
        assert [c["id"] for c in crm_server.state()["contacts"]] == [3]
    finally:
        payments.stop()
        crm_server.stop()


def test_request_log_and_server_logs_never_hold_emails_or_query_strings(
    clean_standins: Standins, pay: Api, crm: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="governance_dev.standins")
    secret = "private.person@example.org"
    pay.post("/v1/customers", data={"email": secret})
    pay.get("/v1/customers", params={"email": secret})
    pay.get(f"/v1/customers/{secret}")  # a caller bug: the address in the path
    requests.get(clean_standins.payments.url + f"/v1/customers?email={secret}", timeout=5)  # no key: 401
    crm.post("/api/contacts", json={"email": secret})
    crm.get("/api/contacts/search", params={"email": secret})
    crm.get("/api/contacts/search", params={"email": ""})  # a 400

    for server in (clean_standins.payments, clean_standins.crm):
        log_entries = server.state()["request_log"]
        assert log_entries, "requests should have been logged"
        dumped = json.dumps(log_entries)
        assert secret not in dumped and "private.person" not in dumped and "%40" not in dumped
        assert all("?" not in e["path"] for e in log_entries)
    assert {"method": "GET", "path": "/v1/customers", "status": 200} in clean_standins.payments.request_log()
    assert "private.person" not in caplog.text


def test_cli_prints_urls_serves_until_sigterm_and_keeps_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "demo-standins.json"
    cmd = [
        sys.executable,
        "-m",
        "governance_dev.standins",
        "--payments-port",
        "0",
        "--crm-port",
        "0",
        "--api-key",
        "demo-key",
        "--state-file",
        str(state_file),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run_once(check: Any) -> None:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            urls = json.loads(proc.stdout.readline())
            assert set(urls) == {"payments_url", "crm_url"}
            check(urls)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def first(urls: dict[str, str]) -> None:
        response = requests.post(
            urls["payments_url"] + "/v1/customers",
            data={"email": EMAIL},
            headers={"Authorization": "Bearer demo-key"},
            timeout=5,
        )
        assert response.status_code == 200
        response = requests.post(
            urls["crm_url"] + "/api/contacts",
            json={"email": EMAIL},
            headers={"X-API-Key": "demo-key"},
            timeout=5,
        )
        assert response.status_code == 201

    def second(urls: dict[str, str]) -> None:
        assert len(requests.get(urls["payments_url"] + "/_admin/state", timeout=5).json()["customers"]) == 1
        assert len(requests.get(urls["crm_url"] + "/_admin/state", timeout=5).json()["contacts"]) == 1

    run_once(first)
    assert set(json.loads(state_file.read_text())["sections"]) == {"crm", "payments_processor"}
    run_once(second)
