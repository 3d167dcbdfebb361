"""Keyed hashes are computed in the client: no key-derived value reaches PostgreSQL.

Every byte the workflows send to the database passes through a loopback proxy that records it
(what ``log_statement = all`` or ``auto_explain`` would see, and more). An erasure that rewrites a
field to its keyed hash, and the re-erasure after a restore that finds the person by the keyed
hashes of the suppression list, both run through it. The hash key, HMAC's padded keys (which are
as good as the key) and their hex and base64 forms never appear in that stream; the rewritten
values are exactly HMAC-SHA256 of the originals under the key, as the SQL HMAC wrote them before.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from governance.config import INCLUDE_DIR
from governance.crypto import hasher_from_airflow
from governance.datamap.plans import keyed_hash_params, keyed_hash_reference
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_restore import _pg_tool
from tests.integration.test_erasure_support import conf_for, run_erasure

pytestmark = pytest.mark.integration


class RecordingProxy:
    """A loopback TCP proxy to PostgreSQL keeping every byte clients send (SSL is off here, so the
    stream is the protocol itself: queries, bind parameters, COPY data)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += chunk
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing = True
        self._server.close()


@pytest.fixture
def proxied(reference_clone: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RecordingProxy]:
    """The clone's app and governance connections through the recording proxy, and a data map in
    which a kept payment's billing address is rewritten to its keyed hash."""
    proxy = RecordingProxy((reference_clone.pg.host, int(reference_clone.pg.port)))
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": proxy.port, "login": "postgres",
                  "schema": reference_clone.database}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_AIRCALLS_APP", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", json.dumps(connection))
    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    payments = next(t for t in data["systems"][0]["tables"] if t["name"] == "payments")
    next(f for f in payments["fields"] if f["name"] == "billing_address")["erasure"] = "keyed_hash"
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(path))
    yield proxy
    proxy.close()


def _key_material(key: bytes) -> list[bytes]:
    """The key and everything as good as it, in the forms a driver or a log could carry them."""
    raw = [key, *keyed_hash_params(key).values()]
    out: list[bytes] = []
    for value in raw:
        out += [value, value.hex().encode(), value.hex().upper().encode(), base64.b64encode(value)]
    return out


def test_keyed_hash_rewrite_and_matching_send_no_key_derived_value_to_the_database(
    proxied: RecordingProxy, reference_clone: Deployment, tmp_path: Path
) -> None:
    from governance.erasure import reapply

    key = hasher_from_airflow().keyring.active_key
    subject = cast_member("both_user_and_caller")
    url = reference_clone.app_url  # direct, for the test's own reads
    with psycopg.connect(url) as conn:
        originals = dict(conn.execute(
            "SELECT id, billing_address FROM app.payments WHERE user_id = %s AND billing_address IS NOT NULL",
            (subject.user_id,),
        ).fetchall())  # fmt: skip
    hashes = {pk: keyed_hash_reference(key, address) for pk, address in originals.items()}
    dump = tmp_path / "app.dump"
    subprocess.run([_pg_tool("pg_dump", url), "-Fc", "-n", "app", "-f", str(dump), url], check=True)

    run = run_erasure(conf_for("both_user_and_caller"), "kh-wire")
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"
    with psycopg.connect(url) as conn:
        rewritten = dict(conn.execute("SELECT id, billing_address FROM app.payments WHERE id = ANY(%s)",
                                      (list(originals),)).fetchall())  # fmt: skip
    # Recent payments are kept by tax law, minimised: the address becomes its keyed hash.
    assert rewritten, "the subject has recent payments with an address"
    expected = {pk: hashes[pk] for pk in rewritten}
    assert rewritten == expected

    # A backup brings the person back; the suppression list (keyed hashes only) finds them again.
    subprocess.run([_pg_tool("pg_restore", url), "--clean", "--if-exists", "-n", "app", "-d", url, str(dump)], check=True)
    assert reapply.run(argparse.Namespace(dry_run=False, as_of=None, request_id=None)) == 0
    with psycopg.connect(url) as conn:
        users = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone()[0]
        again = dict(conn.execute("SELECT id, billing_address FROM app.payments WHERE id = ANY(%s)",
                                  (list(originals),)).fetchall())  # fmt: skip
    assert users == 0 and again == expected

    sent = bytes(proxied.sent)
    assert b'"app"."payments"' in sent and b'"app"."users"' in sent  # the workflows' traffic went through
    leaked = [n for n, material in enumerate(_key_material(key)) if material in sent]
    assert leaked == [], "key material was sent to the database"
    assert b'normalize("email", NFC))::text FROM "app"."users"' in sent  # the client-side scan
    assert b'->> "id"::text' in sent  # the rewrite binding the client's digests
