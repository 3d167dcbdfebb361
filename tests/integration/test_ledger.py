"""The audit ledger against a real PostgreSQL and S3 server: append-only in the database,
serialised gap-free appends, and ``verify-ledger`` catching what an attacker with database
access (but not the key, nor the object store) can do: edit, delete, delete the tail, reorder,
rebuild the chain."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import multiprocessing
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.crypto import Keyring
from governance.ledger import (
    ANCHOR_PREFIX,
    GENESIS_MAC,
    LEDGER_WRITER_ROLE,
    LedgerAnchor,
    LedgerEntry,
    LedgerWriter,
    anchor_if_due,
    compute_mac,
    latest_anchor,
    read_anchors,
    reconcile_run,
    verify_ledger,
    write_anchor,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REQUEST_ID = "era-20260301-00112233aabb"


def new_keyring(key_id: str = "ledger-test-1") -> Keyring:
    return Keyring.from_parts(key_id, base64.b64encode(secrets.token_bytes(32)).decode())


def entry(task: str, state: str = "success", *, run: str = "manual__1", attempt: int = 1, **kw: Any) -> LedgerEntry:
    return LedgerEntry(
        dag_id="dsr_erasure", run_id=run, task_id=task, map_index=-1, try_number=attempt, state=state,
        started_at=T0, ended_at=T0 + timedelta(seconds=3), **kw,
    )  # fmt: skip


@pytest.fixture
def keyring() -> Keyring:
    return new_keyring()


@pytest.fixture
def filled(ledger_db: str, keyring: Keyring) -> str:
    """A ledger with six chained rows."""
    with LedgerWriter.connect(ledger_db, keyring) as writer:
        writer.append(
            [
                entry("resolve_identities", inputs=("postgres://db:5432/aircalls/app/users",), request_id=REQUEST_ID),
                entry("erase_calls", outputs=("postgres://db:5432/aircalls/app/calls",), rows_affected=4),
                entry("erase_recordings", outputs=("s3://aircalls-data/recordings/7",), rows_affected=2),
                entry("notify_processors", "up_for_retry"),
                entry("notify_processors", attempt=2),
                entry("report", "skipped", attempt=0, source="reconciled"),
            ]
        )
    return ledger_db


@contextmanager
def attacker(url: str) -> Iterator[psycopg.Connection]:
    """A database superuser who switches the ledger's triggers off to rewrite history."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE governance.audit_ledger DISABLE TRIGGER USER")
        try:
            yield conn
        finally:
            conn.execute("ALTER TABLE governance.audit_ledger ENABLE TRIGGER USER")


def rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM governance.audit_ledger ORDER BY seq")
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def verify(url: str, keyring: Keyring, anchors: list[LedgerAnchor] | None = None) -> Any:
    with psycopg.connect(url) as conn:
        return verify_ledger(conn, keyring, anchors)


def test_appends_are_gap_free_chained_rows_that_verify(filled: str, keyring: Keyring) -> None:
    stored = rows(filled)
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0]["prev_mac"] == GENESIS_MAC
    assert all(b["prev_mac"] == a["mac"] for a, b in zip(stored, stored[1:], strict=False))
    assert {r["key_id"] for r in stored} == {keyring.active_id}
    assert stored[0]["inputs"] == ["postgres://db:5432/aircalls/app/users"] and stored[0]["request_id"] == REQUEST_ID
    assert (stored[1]["outputs"], stored[1]["rows_affected"]) == (["postgres://db:5432/aircalls/app/calls"], 4)
    assert [(r["task_id"], r["try_number"], r["state"]) for r in stored[3:]] == [
        ("notify_processors", 1, "up_for_retry"), ("notify_processors", 2, "success"), ("report", 0, "skipped"),
    ]  # fmt: skip
    report = verify(filled, keyring)
    assert report.ok and report.rows == 6 and report.head_seq == 6, report.summary()


def test_the_same_final_state_is_recorded_once(filled: str, keyring: Keyring) -> None:
    with LedgerWriter.connect(filled, keyring) as writer:
        assert writer.append([entry("erase_calls", outputs=("postgres://db:5432/aircalls/app/calls",))]) == []
        written = writer.append([entry("erase_calls", "failed", attempt=2), entry("erase_calls", "failed", attempt=2)])
    assert [r.seq for r in written] == [7]
    assert verify(filled, keyring).ok


def test_reconciliation_adds_only_missing_states_and_is_idempotent(filled: str, keyring: Keyring) -> None:
    final = [entry("erase_calls", source="reconciled"), entry("report", "skipped", attempt=0, source="reconciled"),
             entry("archive", "upstream_failed", attempt=0, source="reconciled")]  # fmt: skip
    # History keeps the retried try as failed; the listener recorded it as up_for_retry.
    earlier = [entry("notify_processors", "up_for_retry", source="reconciled"),
               entry("erase_recordings", "up_for_retry", attempt=0, source="reconciled")]  # fmt: skip
    with LedgerWriter.connect(filled, keyring) as writer:
        first = reconcile_run(writer, dag_id="dsr_erasure", run_id="manual__1", final_states=final, earlier_tries=earlier)
        again = reconcile_run(writer, dag_id="dsr_erasure", run_id="manual__1", final_states=final, earlier_tries=earlier)
    assert [(r.entry.task_id, r.entry.state, r.entry.source) for r in first] == [
        ("archive", "upstream_failed", "reconciled"), ("erase_recordings", "up_for_retry", "reconciled"),
    ]  # fmt: skip
    assert again == []
    assert verify(filled, keyring).ok


def test_database_refuses_update_delete_and_truncate_even_for_the_owner(filled: str) -> None:
    with psycopg.connect(filled, autocommit=True) as conn:
        for statement in (
            "UPDATE governance.audit_ledger SET rows_affected = 0 WHERE seq = 2",
            "DELETE FROM governance.audit_ledger WHERE seq = 6",
            "TRUNCATE governance.audit_ledger",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
    assert len(rows(filled)) == 6


def test_writer_role_may_only_insert_and_select(filled: str, keyring: Keyring) -> None:
    with LedgerWriter.connect(filled, keyring) as writer:
        assert writer.role == LEDGER_WRITER_ROLE
        assert writer.conn.execute("SELECT current_user").fetchone() == (LEDGER_WRITER_ROLE,)
        for statement in (
            "ALTER TABLE governance.audit_ledger DISABLE TRIGGER USER",
            "UPDATE governance.audit_ledger SET rows_affected = 0 WHERE seq = 2",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.conn.execute(statement)
        assert len(writer.append([entry("late_task")])) == 1


def test_an_insert_that_does_not_extend_the_head_is_refused(filled: str, keyring: Keyring) -> None:
    head = rows(filled)[-1]
    with psycopg.connect(filled, autocommit=True) as conn:
        for seq, prev in ((8, head["mac"]), (7, GENESIS_MAC)):
            with pytest.raises(psycopg.errors.SerializationFailure, match="audit ledger append"):
                conn.execute(
                    "INSERT INTO governance.audit_ledger (seq, recorded_at, dag_id, run_id, task_id, try_number, state,"
                    " source, key_id, prev_mac, mac) VALUES (%s, now(), 'd', 'r', 't', 1, 'success', 'listener', 'k',"
                    " %s, %s)",
                    (seq, prev, "a" * 64),
                )


def test_concurrent_writers_are_serialised_into_one_gap_free_chain(ledger_db: str, keyring: Keyring) -> None:
    errors: list[BaseException] = []

    def writer_thread(n: int) -> None:
        try:
            with LedgerWriter.connect(ledger_db, keyring) as writer:
                for i in range(15):
                    writer.append([entry(f"task_{n}_{i}")])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r["seq"] for r in rows(ledger_db)] == list(range(1, 61))
    assert verify(ledger_db, keyring).ok


def _append_from_process(url: str, key_id: str, key_b64: str, writer: int, appends: int, shared: int,
                         start: Any, returned: Any) -> None:  # fmt: skip
    """A writer process (as each Airflow task is): its own facts, then facts every writer appends."""
    count = 0
    with LedgerWriter.connect(url, Keyring.from_parts(key_id, key_b64)) as ledger:
        start.wait()
        for i in range(appends):
            count += len(ledger.append([entry(f"task_{writer}_{i}", run="concurrent")]))
            if i < shared:
                count += len(ledger.append([entry(f"shared_{i}", run="concurrent")]))
    returned.put(count)


def test_concurrent_writer_processes_chain_every_fact_once_gap_free(ledger_db: str, keyring: Keyring) -> None:
    """Four processes append at once, each its own facts plus the same shared facts: one gap-free
    chain that verifies, one row per fact, each reported by exactly one call."""
    writers, appends, shared = 4, 30, 10
    ctx = multiprocessing.get_context("spawn")
    start, returned = ctx.Event(), ctx.Queue()
    key_b64 = base64.b64encode(keyring.active_key).decode()
    procs = [ctx.Process(target=_append_from_process,
                         args=(ledger_db, keyring.active_id, key_b64, n, appends, shared, start, returned))
             for n in range(writers)]  # fmt: skip
    for p in procs:
        p.start()
    start.set()
    counts = [returned.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * writers
    stored = rows(ledger_db)
    facts = writers * appends + shared
    assert [r["seq"] for r in stored] == list(range(1, facts + 1))
    assert len({(r["task_id"], r["state"], r["try_number"]) for r in stored}) == facts
    assert sum(counts) == facts  # a shared fact is reported by the call that recorded it, only
    report = verify(ledger_db, keyring)
    assert report.ok and report.rows == facts, report.summary()


def test_anchor_of_the_head_is_written_outside_the_database(filled: str, keyring: Keyring, anchor_bucket: str,
                                                            s3: Any) -> None:  # fmt: skip
    with LedgerWriter.connect(filled, keyring) as writer:
        anchor = write_anchor(writer, s3, anchor_bucket)
    assert anchor is not None
    body = json.loads(s3.get_object(Bucket=anchor_bucket, Key=f"{ANCHOR_PREFIX}{6:020d}.json")["Body"].read())
    assert (body["seq"], body["mac"], body["key_id"]) == (6, rows(filled)[-1]["mac"], keyring.active_id)
    assert read_anchors(s3, anchor_bucket) == [anchor]
    assert verify(filled, keyring, read_anchors(s3, anchor_bucket)).ok


# ------------------------------------------------------------------------------------------
# Tampering, as an attacker with database access would do it


def test_verify_catches_an_edited_row(filled: str, keyring: Keyring) -> None:
    with attacker(filled) as conn:
        conn.execute("UPDATE governance.audit_ledger SET outputs = '[]', rows_affected = NULL WHERE seq = 3")
    report = verify(filled, keyring)
    assert not report.ok and report.tampering is not None
    assert (report.tampering.kind, report.tampering.seq) == ("edited", 3), report.summary()


def test_verify_catches_a_deleted_middle_row(filled: str, keyring: Keyring) -> None:
    with attacker(filled) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq = 4")
    report = verify(filled, keyring)
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("deleted", 4)


def test_verify_catches_a_deleted_and_renumbered_middle_row(filled: str, keyring: Keyring) -> None:
    with attacker(filled) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq = 4")
        conn.execute("UPDATE governance.audit_ledger SET seq = seq - 1 WHERE seq > 4")
    report = verify(filled, keyring)
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("deleted", 4)


def test_verify_catches_reordered_rows(filled: str, keyring: Keyring) -> None:
    with attacker(filled) as conn:
        conn.execute("UPDATE governance.audit_ledger SET seq = 1000 WHERE seq = 2")
        conn.execute("UPDATE governance.audit_ledger SET seq = 2 WHERE seq = 5")
        conn.execute("UPDATE governance.audit_ledger SET seq = 5 WHERE seq = 1000")
    report = verify(filled, keyring)
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("reordered", 2)
    assert "after row 4" in report.tampering.detail


def test_verify_catches_a_deleted_tail_against_the_anchor(filled: str, keyring: Keyring, anchor_bucket: str,
                                                          s3: Any) -> None:  # fmt: skip
    with LedgerWriter.connect(filled, keyring) as writer:
        write_anchor(writer, s3, anchor_bucket)
    with attacker(filled) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq >= 5")
    assert verify(filled, keyring).ok  # the chain alone cannot see a clean cut
    report = verify(filled, keyring, read_anchors(s3, anchor_bucket))
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("tail_deleted", 5)


def test_verify_catches_a_chain_recomputed_without_the_key(filled: str, keyring: Keyring) -> None:
    """The attacker rewrites a row and re-chains every row after it with a key of their own
    (keeping the key id), so each row links to the one before: the MACs do not verify."""
    forged_key = secrets.token_bytes(32)
    with attacker(filled) as conn:
        conn.execute("UPDATE governance.audit_ledger SET request_id = NULL")
        prev = GENESIS_MAC
        for row in rows(filled):
            row["prev_mac"] = prev
            row["mac"] = compute_mac(forged_key, row)
            conn.execute("UPDATE governance.audit_ledger SET prev_mac = %s, mac = %s WHERE seq = %s",
                         (row["prev_mac"], row["mac"], row["seq"]))  # fmt: skip
            prev = row["mac"]
    report = verify(filled, keyring)
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("edited", 1)


def test_verify_catches_a_chain_rebuilt_with_a_stolen_key_against_the_anchor(
    filled: str, keyring: Keyring, anchor_bucket: str, s3: Any
) -> None:
    """Even with the key, rewriting anchored history shows: the anchored head differs."""
    with LedgerWriter.connect(filled, keyring) as writer:
        write_anchor(writer, s3, anchor_bucket)
    with attacker(filled) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq >= 3")
    with LedgerWriter.connect(filled, keyring) as writer:  # the attacker appends a different history
        writer.append([entry("erase_calls", outputs=(), rows_affected=0, run="manual__2"),
                       entry("a", run="manual__2"), entry("b", run="manual__2"), entry("c", run="manual__2")])  # fmt: skip
    report = verify(filled, keyring, read_anchors(s3, anchor_bucket))
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("rewritten", 6)


def test_verify_catches_a_row_signed_with_an_unknown_key(filled: str, keyring: Keyring) -> None:
    stranger = new_keyring("attacker-key")
    with LedgerWriter.connect(filled, stranger) as writer:
        writer.append([entry("forged")])
    report = verify(filled, keyring)
    assert report.tampering is not None and (report.tampering.kind, report.tampering.seq) == ("unknown_key", 7)


def test_verify_catches_a_forged_anchor(filled: str, keyring: Keyring, anchor_bucket: str, s3: Any) -> None:
    fake = LedgerAnchor(99, "f" * 64, keyring.active_id, "2026-03-01T09:00:00.000000Z",
                        hmac.new(b"x" * 32, b"anything", hashlib.sha256).hexdigest())  # fmt: skip
    s3.put_object(Bucket=anchor_bucket, Key=f"{ANCHOR_PREFIX}{99:020d}.json", Body=fake.to_json().encode())
    report = verify(filled, keyring, read_anchors(s3, anchor_bucket))
    assert report.tampering is not None and report.tampering.kind == "anchor_forged"


def test_keys_rotate_without_breaking_the_chain(filled: str, keyring: Keyring) -> None:
    rotated = Keyring(active_id="ledger-test-2", keys={**keyring.keys, "ledger-test-2": secrets.token_bytes(32)})
    with LedgerWriter.connect(filled, rotated) as writer:
        writer.append([entry("after_rotation")])
    assert verify(filled, rotated).ok
    assert [r["key_id"] for r in rows(filled)][-2:] == [keyring.active_id, "ledger-test-2"]


def test_ledger_entries_refuse_identity_shaped_values() -> None:
    with pytest.raises(ValueError, match="request_id"):
        entry("t", request_id="alice@example.com")
    with pytest.raises(ValueError, match="dataset"):
        entry("t", outputs=("postgres://alice@example.com:5432/db/app/users",))
    with pytest.raises(ValueError, match="dataset"):
        entry("t", inputs=("alice@example.com",))


# ------------------------------------------------------------------------------------------
# The command: python -m governance verify-ledger


def test_verify_ledger_command_reports_ok_tampering_and_configuration_errors(
    filled: str, anchor_bucket: str, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from governance import ledger

    keyring = ledger.ledger_keyring()  # the session's test key connection
    with LedgerWriter.connect(filled, keyring) as writer:
        writer.append([entry("signed_with_the_configured_key")])
        write_anchor(writer, s3, anchor_bucket)
    args = argparse.Namespace(conninfo=None, bucket=None, no_anchors=False, strict=False)

    assert ledger.run(args) == 1  # rows 1..6 were signed with another key
    assert "TAMPERED (unknown_key) at row 1" in capsys.readouterr().out

    with attacker(filled) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq <= 6")
        conn.execute("UPDATE governance.audit_ledger SET seq = 1 WHERE seq = 7")
    assert ledger.run(args) == 1
    assert "TAMPERED" in capsys.readouterr().out

    monkeypatch.delenv("AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY")
    assert ledger.run(args) == 2
    assert "governance_ledger_key" in capsys.readouterr().err


def test_verify_ledger_command_exits_zero_on_an_intact_ledger(
    ledger_db: str, anchor_bucket: str, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from governance import ledger

    keyring = ledger.ledger_keyring()
    with LedgerWriter.connect(ledger_db, keyring) as writer:
        writer.append([entry("a"), entry("b", "failed")])
        write_anchor(writer, s3, anchor_bucket)
    assert ledger.run(argparse.Namespace(conninfo=None, bucket=None, no_anchors=False, strict=False)) == 0
    out = capsys.readouterr().out
    assert "audit ledger OK: 2 row(s), head at seq 2, 1 anchor(s)" in out
    assert f"in s3://{anchor_bucket}/{ANCHOR_PREFIX} checked" in out  # it says which anchor store it read


def test_verify_ledger_says_unanchored_and_strict_fails_when_no_anchor_covers_the_rows(
    ledger_db: str, anchor_bucket: str, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An intact chain with no anchor cannot show a cut tail: "OK" alone would be misleading."""
    from governance import ledger

    with LedgerWriter.connect(ledger_db, ledger.ledger_keyring()) as writer:
        writer.append([entry("a"), entry("b")])
    lenient = argparse.Namespace(conninfo=None, bucket=None, no_anchors=False, strict=False)
    assert ledger.run(lenient) == 0
    out = capsys.readouterr().out
    assert f"UNANCHORED: no anchor found in s3://{anchor_bucket}/{ANCHOR_PREFIX}" in out
    assert ledger.run(argparse.Namespace(**{**vars(lenient), "strict": True})) == 1
    assert ledger.run(argparse.Namespace(**{**vars(lenient), "strict": True, "no_anchors": True})) == 1
    with LedgerWriter.connect(ledger_db, ledger.ledger_keyring()) as writer:
        write_anchor(writer, s3, anchor_bucket)
    capsys.readouterr()
    assert ledger.run(argparse.Namespace(**{**vars(lenient), "strict": True})) == 0


def test_anchors_are_written_only_when_rows_were_added_and_the_newest_is_older_than_the_interval(
    ledger_db: str, keyring: Keyring, anchor_bucket: str, s3: Any
) -> None:
    interval = timedelta(minutes=5)
    with LedgerWriter.connect(ledger_db, keyring) as writer:
        assert anchor_if_due(writer, s3, anchor_bucket, interval=interval, now=T0) is None  # empty ledger
        writer.append([entry("a")])
        first = anchor_if_due(writer, s3, anchor_bucket, interval=interval, now=datetime.now(UTC))
        assert first is not None and first.seq == 1
        # Nothing new: no anchor however long it has been.
        assert anchor_if_due(writer, s3, anchor_bucket, interval=interval, now=datetime.now(UTC) + 2 * interval) is None
        writer.append([entry("b")])
        # New rows, but the newest anchor is younger than the interval.
        assert anchor_if_due(writer, s3, anchor_bucket, interval=interval, now=datetime.now(UTC)) is None
        second = anchor_if_due(writer, s3, anchor_bucket, interval=interval, now=datetime.now(UTC) + interval,
                               latest=first)  # fmt: skip
        assert second is not None and second.seq == 2
    assert [a.seq for a in read_anchors(s3, anchor_bucket)] == [1, 2]
    assert latest_anchor(s3, anchor_bucket) == second
    assert latest_anchor(s3, anchor_bucket, after=second) == second


def test_anchors_kept_on_disk_still_catch_a_deleted_tail_after_the_object_store_lost_them(
    ledger_db: str, anchor_bucket: str, s3: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The reference S3 server keeps objects in memory; a restart must not erase tamper evidence."""
    from governance import ledger

    kept = tmp_path / "ledger-anchors"
    keyring = ledger.ledger_keyring()
    with LedgerWriter.connect(ledger_db, keyring) as writer:
        writer.append([entry("a"), entry("b"), entry("c")])
        anchor = anchor_if_due(writer, s3, anchor_bucket, interval=timedelta(0), now=datetime.now(UTC), directory=kept)
    assert anchor is not None and (kept / f"{anchor.seq:020d}.json").is_file()
    for obj in s3.list_objects_v2(Bucket=anchor_bucket, Prefix=ANCHOR_PREFIX).get("Contents", []):
        s3.delete_object(Bucket=anchor_bucket, Key=obj["Key"])  # what a restart of the in-memory server does
    with LedgerWriter.connect(ledger_db, keyring) as writer:
        again = anchor_if_due(writer, s3, anchor_bucket, interval=timedelta(hours=1), now=datetime.now(UTC),
                              directory=kept)  # fmt: skip
    assert again is None, "the anchor kept on disk is still the newest: nothing was due"
    with attacker(ledger_db) as conn:
        conn.execute("DELETE FROM governance.audit_ledger WHERE seq = 3")
    monkeypatch.setenv("GOVERNANCE_LEDGER_ANCHOR_DIR", str(kept))
    assert ledger.run(argparse.Namespace(conninfo=None, bucket=None, no_anchors=False, strict=True)) == 1
    out = capsys.readouterr().out
    assert "TAMPERED (tail_deleted) at row 3" in out and f"and {kept}" in out
