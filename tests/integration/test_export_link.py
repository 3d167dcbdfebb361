"""``python -m governance export-link``: a new download link for a completed export's bundle,
against a real governance schema and the S3 server (the link is fetched over HTTP)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from governance.cli import main as cli_main
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap
from governance.export.link_command import LinkRefused, refresh_link
from governance.export.storage import bundle_locations
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request
from governance.workflows.request_intake import close_request, mark_in_progress
from tests.fixtures.services import S3_ACCESS_KEY, S3_SECRET_KEY

RECEIVED = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
COMPLETED = RECEIVED + timedelta(days=2)
BUNDLE = b"age-encryption.org/v1\n-> scrypt ...\nnot a real bundle, bytes to compare\n"


@pytest.fixture
def exported(make_db: Callable[[str], str], make_bucket: Callable[[str], str], s3: Any, s3_endpoint: str,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # fmt: skip
    """A completed export request whose bundle is published, and an erasure request."""
    url = make_db("exportlink")
    migrate(url)
    bucket = make_bucket("exportlink")
    info = psycopg.conninfo.conninfo_to_dict(url)
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", bucket)
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", json.dumps(
        {"conn_type": "postgres", "host": info.get("host", "127.0.0.1"), "port": int(info.get("port", 5432)),
         "login": info.get("user", "postgres"), "schema": info["dbname"]}))  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_AIRCALLS_OBJECTS", json.dumps(
        {"conn_type": "aws", "login": S3_ACCESS_KEY, "password": S3_SECRET_KEY,
         "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}))  # fmt: skip
    ids = {}
    with psycopg.connect(url) as conn:
        for kind in ("export", "erasure"):
            ids[kind] = create_request(
                conn, kind=kind, identities=SubjectIdentities.parse(email=f"{kind}.link@example.com"),
                hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=RECEIVED,
            )  # fmt: skip
    mark_in_progress(ids["export"], dag_run_id="run-1", at=COMPLETED, conninfo=url)
    close_request(ids["export"], succeeded=True, at=COMPLETED, result_uri="https://expired.example/link", conninfo=url)
    locations = bundle_locations(load_datamap(), ids["export"])
    assert locations.bucket == bucket
    s3.put_object(Bucket=bucket, Key=locations.published_key, Body=BUNDLE)
    return {"url": url, "s3": s3, "locations": locations, **ids}


def _result_uri(url: str, request_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT result_uri FROM governance.privacy_requests WHERE request_id = %s", (request_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_new_link_replaces_the_result_and_downloads_the_same_bundle_under_its_own_name(exported: dict[str, Any]) -> None:
    at = datetime.now(UTC)
    with psycopg.connect(exported["url"]) as conn:
        issued = refresh_link(conn, exported["s3"], exported["locations"], request_id=exported["export"], days=3, at=at)
    assert issued.expires_at == at + timedelta(days=3)
    link = _result_uri(exported["url"], exported["export"])
    assert link != "https://expired.example/link" and "X-Amz-Expires=259200" in link
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == BUNDLE
        assert exported["locations"].download_name() in response.headers["Content-Disposition"]


def test_cli_writes_the_link_only_to_the_request_and_never_prints_it(
    exported: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["export-link", exported["export"]]) == 0
    out, err = capsys.readouterr()
    link = _result_uri(exported["url"], exported["export"])
    assert "X-Amz-Signature" in link and "X-Amz-Expires=604800" in link
    assert link not in out + err and "Signature" not in out + err and "valid until" in out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("erasure request", "only export bundles have download links"),
        ("not completed", "not completed"),
        ("bundle swept", "no longer in the object store"),
        ("too many days", "between 1 and 7"),
        ("unknown request", "no privacy request"),
    ],
)
def test_no_link_is_issued_when_there_is_no_bundle_to_give(exported: dict[str, Any], case: str, message: str) -> None:
    request_id, days = exported["export"], 7
    if case == "erasure request":
        request_id = exported["erasure"]
    elif case == "not completed":
        with psycopg.connect(exported["url"]) as conn:
            conn.execute("UPDATE governance.privacy_requests SET status = 'verified' WHERE request_id = %s", (request_id,))
    elif case == "bundle swept":
        exported["s3"].delete_object(Bucket=exported["locations"].bucket, Key=exported["locations"].published_key)
    elif case == "too many days":
        days = 8
    elif case == "unknown request":
        request_id = "exp-20261001-000000000000"
    with psycopg.connect(exported["url"]) as conn, pytest.raises(LinkRefused, match=message):
        refresh_link(conn, exported["s3"], exported["locations"], request_id=request_id, days=days, at=COMPLETED)
    assert _result_uri(exported["url"], exported["export"]) == "https://expired.example/link"


def test_a_malformed_request_id_is_a_usage_error_before_anything_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["export-link", "exp-2026-%"])
    assert exited.value.code == 2 and "xxx-YYYYMMDD" in capsys.readouterr().err
