"""The Privacy requests page's API, in-process (FastAPI's TestClient) with Airflow's real auth
manager (simple) issuing real JWTs: no session is refused, roles are enforced per action, four
eyes on approval, every passphrase reveal recorded with the authenticated user."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.export.state import ensure_passphrase
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request
from governance.workflows.request_intake import close_request, mark_in_progress

pytestmark = pytest.mark.integration


def use_as_governance_db(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Migrate ``url`` and make it the page's governance database (``governance_db`` connection)."""
    migrate(url)
    info = psycopg.conninfo.conninfo_to_dict(url)
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", json.dumps(
        {"conn_type": "postgres", "host": info.get("host", "127.0.0.1"), "port": int(info.get("port", 5432)),
         "login": info.get("user", "postgres"), "schema": info["dbname"]}))  # fmt: skip
    return url


@contextmanager
def mounted_page(**client_options: Any) -> Iterator[Any]:
    """A TestClient on the page's app, mounted as Airflow's API server mounts a plugin's app."""
    from airflow.api_fastapi.app import init_auth_manager
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from governance.ui.mount import MOUNT, LazyApp

    init_auth_manager()
    server = FastAPI()
    server.mount(MOUNT, LazyApp())
    with TestClient(server, base_url="http://testserver" + MOUNT, **client_options) as c:
        yield c


@pytest.fixture
def governance_db(make_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> str:
    return use_as_governance_db(make_db("uiapi"), monkeypatch)


@pytest.fixture
def client(airflow_db: str) -> Iterator[Any]:
    with mounted_page() as c:
        yield c


def token(name: str, role: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=name, role=role)))


def as_user(name: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(name, role)}"}


def test_no_session_is_refused_before_anything_runs(client: Any) -> None:
    for method, path in [("get", "/"), ("get", "/api/requests"), ("post", "/api/requests"),
                         ("post", "/api/requests/era-20261128-0123456789ab/approve"),
                         ("post", "/requests/exp-20261128-0123456789ab/passphrase")]:  # fmt: skip
        response = getattr(client, method)(path)
        assert response.status_code == 401, (method, path, response.status_code)
    bad = client.get("/api/requests", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 403
    cookie = client.get("/api/requests", cookies={"_token": "forged"})
    assert cookie.status_code == 403


def test_roles_are_enforced_per_action_and_four_eyes_on_approval(client: Any, governance_db: str) -> None:
    viewer = as_user("vera", "viewer")
    assert client.get("/api/requests", headers=viewer).status_code == 200
    refused = client.post("/api/requests", headers=viewer, json={"kind": "erasure", "email": "x@example.com"})
    assert refused.status_code == 403 and "record" in refused.json()["detail"]

    recorder = as_user("rita", "op")
    created = client.post("/api/requests", headers=recorder,
                          json={"kind": "erasure", "email": "  Odd.Case@Example.COM ", "start": False})  # fmt: skip
    assert created.status_code == 200, created.text
    request_id = created.json()["request_id"]
    with psycopg.connect(governance_db) as conn:
        stored = conn.execute("SELECT email_hash, email_encrypted, source FROM governance.privacy_requests WHERE request_id = %s",
                              (request_id,)).fetchone()  # fmt: skip
        actions = conn.execute("SELECT action, actor, actor_role FROM governance.request_actions WHERE request_id = %s",
                               (request_id,)).fetchall()  # fmt: skip
    assert stored[0] == hasher_from_airflow().hash("email", "odd.case@example.com") and "odd" not in stored[1].lower()
    assert stored[2] == "api" and actions == [("recorded", "rita", "op")]

    # A role that may not approve (user: records, may not approve) is refused before anything else.
    user_role = client.post(f"/api/requests/{request_id}/approve", headers=as_user("uma", "user"),
                            json={"verification_method": "email_link"})  # fmt: skip
    assert user_role.status_code == 403
    # The recorder may not approve their own request.
    own = client.post(f"/api/requests/{request_id}/approve", headers=recorder, json={"verification_method": "email_link"})
    assert own.status_code == 403 and "Four eyes" in own.json()["detail"]
    # Someone else may, once a run waits for the approval (none was started here).
    other = client.post(f"/api/requests/{request_id}/approve", headers=as_user("otto", "admin"),
                        json={"verification_method": "email_link"})  # fmt: skip
    assert other.status_code == 409 and "waiting for approval" in other.json()["detail"]

    listed = client.get("/api/requests?kind=erasure&sort=received&desc=true", headers=viewer).json()
    assert [r["request_id"] for r in listed] == [request_id] and listed[0]["days_left"] == 30
    assert "email" not in json.dumps(listed).replace("has_email", "")
    page = client.get(f"/requests/{request_id}", headers=viewer)
    assert page.status_code == 200 and "odd.case" not in page.text.lower() and "rita" in page.text


def test_passphrase_reveal_is_recorded_with_the_user_and_refused_to_other_roles(client: Any, governance_db: str) -> None:
    at = datetime(2026, 11, 28, 9, tzinfo=UTC)
    with psycopg.connect(governance_db) as conn:
        request_id = create_request(conn, kind="export", identities=SubjectIdentities.parse(email="reveal@example.com"),
                                    hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at)  # fmt: skip
        passphrase = ensure_passphrase(conn, request_id, cipher=cipher_from_airflow(), at=at)
    mark_in_progress(request_id, dag_run_id="run-1", at=at, conninfo=governance_db)
    close_request(request_id, succeeded=True, at=at, result_uri="https://objects.example/bundle?sig=1", conninfo=governance_db)

    assert client.post(f"/api/requests/{request_id}/passphrase", headers=as_user("vera", "viewer")).status_code == 403
    revealed = client.post(f"/api/requests/{request_id}/passphrase", headers=as_user("paula", "op"))
    assert revealed.status_code == 200 and revealed.json() == {"passphrase": passphrase}
    assert revealed.headers["cache-control"] == "no-store"
    html = client.post(f"/requests/{request_id}/passphrase", headers=as_user("otto", "admin"))
    assert html.status_code == 200 and passphrase in html.text
    link = client.post(f"/requests/{request_id}/link", headers=as_user("otto", "admin"))
    assert link.status_code == 200 and "https://objects.example/bundle?sig=1" in link.text
    with psycopg.connect(governance_db) as conn:
        actions = conn.execute("SELECT action, actor FROM governance.request_actions WHERE request_id = %s ORDER BY action_id",
                               (request_id,)).fetchall()  # fmt: skip
        counted = conn.execute("SELECT reveal_count, last_revealed_by FROM governance.export_passphrases WHERE request_id = %s",
                               (request_id,)).fetchone()  # fmt: skip
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("DELETE FROM governance.request_actions WHERE request_id = %s", (request_id,))
    assert actions == [("passphrase_revealed", "paula"), ("passphrase_revealed", "otto"), ("link_viewed", "otto")]
    assert counted == (2, "otto")


def test_a_cookie_signed_post_from_another_site_is_refused_before_anything_changes(client: Any, governance_db: str) -> None:
    at = datetime(2026, 11, 28, 9, tzinfo=UTC)
    with psycopg.connect(governance_db) as conn:
        request_id = create_request(conn, kind="export", identities=SubjectIdentities.parse(email="csrf@example.com"),
                                    hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at)  # fmt: skip
        ensure_passphrase(conn, request_id, cipher=cipher_from_airflow(), at=at)
    mark_in_progress(request_id, dag_run_id="run-1", at=at, conninfo=governance_db)
    close_request(request_id, succeeded=True, at=at, result_uri="https://objects.example/bundle?sig=1", conninfo=governance_db)
    client.cookies.set("_token", token("paula", "op"))  # signed in through the UI, as a browser is
    path = f"/requests/{request_id}/passphrase"
    try:
        for headers in ({"Origin": "https://attacker.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"}):  # fmt: skip
            refused = client.post(path, headers=headers)
            assert refused.status_code == 403 and "Refused" in refused.text, headers
        with psycopg.connect(governance_db) as conn:
            assert conn.execute("SELECT count(*) FROM governance.request_actions WHERE request_id = %s",
                                (request_id,)).fetchone() == (0,)  # fmt: skip
        # The page's own forms: same origin.
        own = client.post(path, headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 200
    finally:
        client.cookies.clear()
    with psycopg.connect(governance_db) as conn:
        actions = conn.execute("SELECT action, actor FROM governance.request_actions WHERE request_id = %s",
                               (request_id,)).fetchall()  # fmt: skip
    assert actions == [("passphrase_revealed", "paula")]
