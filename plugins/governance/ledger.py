"""The audit ledger: one append-only, hash-chained row per task instance final state.

Each row (``governance.audit_ledger``) says which task of which run ended in which state, when,
which datasets it read and wrote, how many rows it changed and for which privacy request; never
personal data. Rows are written by the Airflow listener (``governance.ledger_listener``) in the
task's own process and, for states the scheduler sets without running the task, by the maintenance
pass's reconciliation of each ended run.

Tamper evidence:

* The database refuses UPDATE, DELETE and TRUNCATE (triggers), the writer role may only INSERT and
  SELECT, and every insert must extend the head (seq + 1, chained MAC) under one advisory lock, so
  appends are serialised and gap-free.
* ``mac = HMAC-SHA256(key, canonical JSON of the row including prev_mac)``; the key lives outside
  the database (Airflow connection ``governance_ledger_key``, same layout as the other keys, key id
  stored on each row so the key can rotate). Editing, deleting, inserting or reordering rows
  breaks the chain; rebuilding it needs the key.
* The head (seq, mac) is anchored in the object store
  (``s3://<bucket>/governance/ledger-anchors/<seq>.json``, itself MAC'd), outside the database, so
  a deleted tail or a rebuilt chain no longer matches the anchors. The maintenance pass beside the
  scheduler (``python -m governance maintain``) anchors when rows were added and the newest anchor
  is older than ``--anchor-interval`` (default 5 minutes): a cut tail goes unnoticed for at most
  that interval plus one pass. Nothing of this runs in the scheduler.

``python -m governance verify-ledger`` recomputes the chain from row 1, compares it with the
anchors and reports OK or the first row that was edited, inserted, deleted or reordered.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from governance.config import (
    DEFAULT_LEDGER_WRITER_ROLE,
    GOVERNANCE_CONN_ID,
    LEDGER_KEY_CONN_ID,
    OBJECTS_CONN_ID,
    ledger_writer_role,
    objects_bucket,
)
from governance.connections import ConnectionNotConfigured
from governance.crypto import KeyMaterialError, Keyring
from governance.db import conninfo_for
from governance.objectstore import s3_client
from governance.privacy_requests import REQUEST_ID_RE

# The ledger's HMAC key: its own connection (login = key id, password = base64 32-byte key,
# extra.retired = {key_id: key}), never the identity hash key.
# The default name; a deployment may name it otherwise (GOVERNANCE_LEDGER_WRITER_ROLE).
LEDGER_WRITER_ROLE = DEFAULT_LEDGER_WRITER_ROLE
# Shared with the BEFORE INSERT trigger in include/sql/governance/0002_audit_ledger.sql.
APPEND_LOCK_KEY = 1734569729
GENESIS_MAC = "0" * 64
ANCHOR_PREFIX = "governance/ledger-anchors/"
LEDGER_STATES = ("success", "failed", "skipped", "upstream_failed", "up_for_retry", "removed")
SOURCES = ("listener", "reconciled")
_MAC_DOMAIN = b"aircalls-audit-ledger-v1\x00"
_ANCHOR_DOMAIN = b"aircalls-audit-ledger-anchor-v1\x00"

_COLUMNS = (
    "seq", "recorded_at", "dag_id", "run_id", "task_id", "map_index", "try_number", "state", "started_at",
    "ended_at", "inputs", "outputs", "rows_affected", "request_id", "source", "key_id", "prev_mac", "mac",
)  # fmt: skip
_ROW_PLACEHOLDERS = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(_COLUMNS)))
# The append's two round trips are single simple-protocol messages (parameters bound client-side).
_LOCK_AND_HEAD = sql.SQL(
    "BEGIN; SELECT pg_advisory_xact_lock({}); SELECT seq, mac FROM governance.audit_ledger ORDER BY seq DESC LIMIT 1"
).format(sql.Literal(APPEND_LOCK_KEY))
_RECORDED_FACTS = sql.SQL(
    "SELECT dag_id, run_id, task_id, map_index, try_number, state FROM governance.audit_ledger "
    "WHERE (dag_id, run_id, task_id, map_index, try_number, state) IN ({})"
)
_FACT_PLACEHOLDERS = sql.SQL("(%s, %s, %s, %s, %s, %s)")
# A single entry (the listener's case) needs no look-up of facts already there: a duplicate simply
# inserts nothing, and no later row in the same transaction chains to it.
_INSERT_ONE_AND_COMMIT = sql.SQL(
    "{} ON CONFLICT ON CONSTRAINT audit_ledger_one_row_per_final_state DO NOTHING RETURNING seq; COMMIT"
).format(sql.SQL("INSERT INTO governance.audit_ledger ({}) VALUES {}").format(
    sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), _ROW_PLACEHOLDERS
))  # fmt: skip


def _insert_rows_and_commit(rows: int) -> sql.Composed:
    values = sql.SQL(", ").join([_ROW_PLACEHOLDERS] * rows)
    return sql.SQL("{}; COMMIT").format(
        sql.SQL("INSERT INTO governance.audit_ledger ({}) VALUES {}").format(
            sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), values
        )
    )


_SELECT_ROWS = sql.SQL("SELECT {} FROM governance.audit_ledger ORDER BY seq").format(
    sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
)


def ledger_keyring() -> Keyring:
    """The ledger's HMAC keys from the ``governance_ledger_key`` connection."""
    return Keyring.from_connection(LEDGER_KEY_CONN_ID)


def anchor_bucket() -> str:
    """Bucket holding the anchors: ``GOVERNANCE_LEDGER_ANCHOR_BUCKET`` or the objects bucket."""
    return os.environ.get("GOVERNANCE_LEDGER_ANCHOR_BUCKET") or objects_bucket()


def anchor_dir() -> Path | None:
    """A directory that keeps a copy of every anchor: ``GOVERNANCE_LEDGER_ANCHOR_DIR``, or None.

    The object store is where anchors live in production (a bucket with S3 Object Lock in
    compliance mode, so not even the ledger's writer can delete one). The reference deployment's
    S3 server keeps objects in memory, so a restart of the services would lose every anchor and
    with it the tamper evidence; ``make demo`` and ``make airflow`` therefore also keep them in a
    directory on disk (``.state/ledger-anchors``), and verification reads both.
    """
    value = os.environ.get("GOVERNANCE_LEDGER_ANCHOR_DIR", "").strip()
    return Path(value) if value else None


def request_id_from_conf(conf: Any) -> str | None:
    """The run's privacy request id, only when well formed; nothing else of a run configuration."""
    if isinstance(conf, Mapping):
        value = conf.get("request_id")
        if isinstance(value, str) and REQUEST_ID_RE.match(value):
            return value
    return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("ledger timestamps must be timezone-aware")
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LedgerEntry:
    """One task instance final state, as a writer supplies it (the ledger adds seq and MACs)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    state: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    rows_affected: int | None = None
    request_id: str | None = None
    source: str = "listener"

    def __post_init__(self) -> None:
        if self.state not in LEDGER_STATES:
            raise ValueError(f"ledger state {self.state!r} is not one of {', '.join(LEDGER_STATES)}")
        if self.source not in SOURCES:
            raise ValueError(f"ledger source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.request_id is not None and not REQUEST_ID_RE.match(self.request_id):
            raise ValueError("request_id is not of the form xxx-YYYYMMDD-<12 hex>")
        if self.rows_affected is not None and self.rows_affected < 0:
            raise ValueError("rows_affected cannot be negative")
        for uri in (*self.inputs, *self.outputs):
            if "://" not in uri or "@" in uri:
                raise ValueError(f"dataset {uri!r} is not a dataset URI (scheme://location, no credentials)")
        object.__setattr__(self, "started_at", _utc(self.started_at))
        object.__setattr__(self, "ended_at", _utc(self.ended_at))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def key(self) -> tuple[str, str, str, int, int, str]:
        """What makes a fact unique: the same final state of the same try is recorded once."""
        return (self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number, self.state)

    def fields(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id, "map_index": self.map_index,
            "try_number": self.try_number, "state": self.state, "started_at": self.started_at,
            "ended_at": self.ended_at, "inputs": list(self.inputs), "outputs": list(self.outputs),
            "rows_affected": self.rows_affected, "request_id": self.request_id, "source": self.source,
        }  # fmt: skip


@dataclass(frozen=True)
class LedgerRow:
    """A stored ledger row."""

    seq: int
    recorded_at: datetime
    entry: LedgerEntry
    key_id: str
    prev_mac: str
    mac: str

    def params(self) -> tuple[Any, ...]:
        e = self.entry
        return (
            self.seq, self.recorded_at, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.state,
            e.started_at, e.ended_at, Jsonb(list(e.inputs)), Jsonb(list(e.outputs)), e.rows_affected,
            e.request_id, e.source, self.key_id, self.prev_mac, self.mac,
        )  # fmt: skip


def canonical_payload(fields: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC covers: every column but ``mac``, as sorted compact JSON.

    Timestamps are UTC with microseconds (PostgreSQL's precision), so a row read back from the
    database reproduces exactly the bytes that were signed.
    """
    data = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in fields.items() if k != "mac"}
    data["inputs"] = list(data.get("inputs") or [])
    data["outputs"] = list(data.get("outputs") or [])
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def compute_mac(key: bytes, fields: Mapping[str, Any]) -> str:
    return hmac.new(key, _MAC_DOMAIN + canonical_payload(fields), hashlib.sha256).hexdigest()


def _row_fields(seq: int, recorded_at: datetime, entry: LedgerEntry, key_id: str, prev_mac: str) -> dict[str, Any]:
    return {"seq": seq, "recorded_at": recorded_at, **entry.fields(), "key_id": key_id, "prev_mac": prev_mac}


# --------------------------------------------------------------------------------------------
# Writing


class LedgerWriter:
    """Appends to the ledger over one autocommit connection.

    When the login may, the session switches to ``governance_ledger_writer`` (INSERT and SELECT
    only), so even a bug here cannot rewrite history. Each ``append`` is one transaction holding
    the ledger's advisory lock: two round trips (lock and read the head; insert and commit).
    """

    def __init__(self, conn: psycopg.Connection, keyring: Keyring) -> None:
        if not conn.autocommit:
            raise ValueError("LedgerWriter needs an autocommit connection (it manages its transactions)")
        self.conn = conn
        self.keyring = keyring
        self.role = self._assume_writer_role()
        # The fixed statements rendered once per connection (composing them costs more than the
        # round trips they make).
        self._lock_and_head = _LOCK_AND_HEAD.as_string(conn)
        self._insert_one = _INSERT_ONE_AND_COMMIT.as_string(conn)

    @classmethod
    def connect(cls, conninfo: str, keyring: Keyring, *, application_name: str = "governance-ledger") -> LedgerWriter:
        conn = psycopg.connect(conninfo, autocommit=True, application_name=application_name)
        try:
            return cls(conn, keyring)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _assume_writer_role(self) -> str | None:
        role = ledger_writer_role()
        row = self.conn.execute(
            "SELECT CASE WHEN to_regrole(%s) IS NULL THEN false ELSE pg_has_role(current_user, %s, 'MEMBER') END",
            (sql.Identifier(role).as_string(None), role),
        ).fetchone()
        if row and row[0]:
            self.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            return role
        return None

    def head(self) -> tuple[int, str, str] | None:
        """(seq, mac, key_id) of the last row, or None for an empty ledger."""
        row = self.conn.execute("SELECT seq, mac, key_id FROM governance.audit_ledger ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1]), str(row[2])) if row else None

    def existing(self, dag_id: str, run_id: str) -> set[tuple[str, int, int, str]]:
        """(task_id, map_index, try_number, state) already recorded for a run."""
        rows = self.conn.execute(
            "SELECT task_id, map_index, try_number, state FROM governance.audit_ledger WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id),
        ).fetchall()
        return {(str(t), int(m), int(n), str(s)) for t, m, n, s in rows}

    def append(self, entries: Iterable[LedgerEntry], *, recorded_at: datetime | None = None) -> list[LedgerRow]:
        """Append entries in order, skipping facts already recorded; return the rows written."""
        pending = list(entries)
        if not pending:
            return []
        when = _utc(recorded_at) or datetime.now(UTC)
        single = len(pending) == 1
        cur = psycopg.ClientCursor(self.conn)
        try:
            # Round trip 1: open the transaction, take the lock, read the head (and, for several
            # entries, the facts already recorded); each statement's snapshot follows the lock.
            if single:
                cur.execute(self._lock_and_head)
            else:
                facts = _RECORDED_FACTS.format(sql.SQL(", ").join([_FACT_PLACEHOLDERS] * len(pending)))
                cur.execute(sql.SQL("{}; {}").format(_LOCK_AND_HEAD, facts), [v for e in pending for v in e.key])
            cur.nextset()
            cur.nextset()
            head = cur.fetchone()
            seen: set[tuple[Any, ...]] = set()
            if not single:
                cur.nextset()
                seen = {tuple(r) for r in cur.fetchall()}
            seq, prev_mac = (int(head[0]), str(head[1])) if head else (0, GENESIS_MAC)
            written: list[LedgerRow] = []
            key_id, key = self.keyring.active_id, self.keyring.active_key
            for entry in pending:
                if entry.key in seen:
                    continue
                seen.add(entry.key)
                seq += 1
                mac = compute_mac(key, _row_fields(seq, when, entry, key_id, prev_mac))
                written.append(LedgerRow(seq, when, entry, key_id, prev_mac, mac))
                prev_mac = mac
            # Round trip 2: insert and commit.
            if single:
                cur.execute(self._insert_one, written[0].params())
                inserted = cur.fetchone() is not None
                return written if inserted else []  # not inserted: this fact was already recorded
            if written:
                cur.execute(_insert_rows_and_commit(len(written)), [v for r in written for v in r.params()])
            else:
                cur.execute("COMMIT")
            return written
        except BaseException:
            if not self.conn.closed and self.conn.info.transaction_status != TransactionStatus.IDLE:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            cur.close()


def entry_from_task_instance(ti: Any, state: str, conf: Any, source: str) -> LedgerEntry:
    """The ledger entry for a task instance known from Airflow's database (a TaskInstance or
    TaskInstanceHistory row): nothing ran in this process, so no datasets."""
    return LedgerEntry(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=int(ti.map_index if ti.map_index is not None else -1),
        try_number=int(ti.try_number or 0),
        state=state,
        started_at=ti.start_date,
        ended_at=ti.end_date,
        request_id=request_id_from_conf(conf),
        source=source,
    )


def reconcile_run(
    writer: LedgerWriter,
    *,
    dag_id: str,
    run_id: str,
    final_states: Sequence[LedgerEntry],
    earlier_tries: Sequence[LedgerEntry] = (),
) -> list[LedgerRow]:
    """Write what the listener could not: states set without the task running, lost writes.

    ``final_states`` are the task instances' current states, recorded unless that exact fact is
    there. ``earlier_tries`` (from Airflow's task instance history) are recorded only when nothing
    at all was recorded for that try: the listener already wrote ``up_for_retry`` for it, which
    the history stores as ``failed``. Idempotent: a second call writes nothing.
    """
    existing = writer.existing(dag_id, run_id)
    tries = {(t, m, n) for t, m, n, _ in existing}
    missing = [e for e in final_states if (e.task_id, e.map_index, e.try_number, e.state) not in existing]
    missing += [e for e in earlier_tries if (e.task_id, e.map_index, e.try_number) not in tries]
    return writer.append(missing)


# --------------------------------------------------------------------------------------------
# Anchors


def _anchor_mac(key: bytes, seq: int, mac: str, key_id: str, anchored_at: str) -> str:
    payload = json.dumps({"seq": seq, "mac": mac, "key_id": key_id, "at": anchored_at}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, _ANCHOR_DOMAIN + payload.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class LedgerAnchor:
    """The ledger head at one moment, stored outside the database."""

    seq: int
    mac: str
    key_id: str
    at: str
    anchor_mac: str
    object_key: str = field(default="", compare=False)

    @classmethod
    def create(cls, seq: int, mac: str, keyring: Keyring, at: datetime | None = None) -> LedgerAnchor:
        when = _iso(at or datetime.now(UTC)) or ""
        return cls(seq, mac, keyring.active_id, when, _anchor_mac(keyring.active_key, seq, mac, keyring.active_id, when))

    def verifies(self, keyring: Keyring) -> bool:
        try:
            key = keyring.key(self.key_id)
        except KeyMaterialError:
            return False
        return hmac.compare_digest(_anchor_mac(key, self.seq, self.mac, self.key_id, self.at), self.anchor_mac)

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "mac": self.mac, "key_id": self.key_id, "at": self.at, "anchor_mac": self.anchor_mac})

    @classmethod
    def from_json(cls, text: str | bytes, object_key: str = "") -> LedgerAnchor:
        data = json.loads(text)
        return cls(int(data["seq"]), str(data["mac"]), str(data["key_id"]), str(data["at"]), str(data["anchor_mac"]), object_key)


def anchor_object_key(seq: int) -> str:
    return f"{ANCHOR_PREFIX}{seq:020d}.json"


def write_anchor(
    writer: LedgerWriter, s3: Any, bucket: str, *, directory: Path | None = None
) -> LedgerAnchor | None:
    """Put the current head into the object store (and ``directory`` when given, written
    atomically); None when the ledger is empty."""
    head = writer.head()
    if head is None:
        return None
    anchor = LedgerAnchor.create(head[0], head[1], writer.keyring)
    key = anchor_object_key(anchor.seq)
    body = anchor.to_json().encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / key.rsplit("/", 1)[-1]
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(target)
    return LedgerAnchor(anchor.seq, anchor.mac, anchor.key_id, anchor.at, anchor.anchor_mac, key)


def read_directory_anchors(directory: Path | None) -> list[LedgerAnchor]:
    """The anchors kept in ``directory`` (see ``anchor_dir``), by seq; unreadable ones as forged."""
    if directory is None or not directory.is_dir():
        return []
    anchors: list[LedgerAnchor] = []
    for path in sorted(directory.glob("*.json")):
        key = f"{ANCHOR_PREFIX}{path.name}"
        try:
            anchors.append(LedgerAnchor.from_json(path.read_bytes(), key))
        except (ValueError, KeyError, TypeError):
            anchors.append(LedgerAnchor(-1, "", "", "", "", key))
    return anchors


def merge_anchors(*sources: Sequence[LedgerAnchor]) -> list[LedgerAnchor]:
    """One list of the anchors of several stores, by seq (an anchor kept in both counts once)."""
    unique = {(a.seq, a.mac, a.anchor_mac, a.object_key): a for source in sources for a in source}
    return sorted(unique.values(), key=lambda a: a.seq)


def latest_anchor(s3: Any, bucket: str, *, after: LedgerAnchor | None = None) -> LedgerAnchor | None:
    """The anchor with the highest seq (keys sort by seq), listing only keys after ``after``'s."""
    newest_key = after.object_key if after is not None else ""
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=ANCHOR_PREFIX, **({"StartAfter": newest_key} if newest_key else {})
    )
    for page in pages:
        for obj in page.get("Contents", []):
            newest_key = max(newest_key, obj["Key"])
    if not newest_key:
        return None
    if after is not None and newest_key == after.object_key:
        return after
    body = s3.get_object(Bucket=bucket, Key=newest_key)["Body"].read()
    return LedgerAnchor.from_json(body, newest_key)


def anchor_if_due(
    writer: LedgerWriter,
    s3: Any,
    bucket: str,
    *,
    interval: timedelta,
    now: datetime,
    latest: LedgerAnchor | None = None,
    directory: Path | None = None,
) -> LedgerAnchor | None:
    """Anchor the head when rows were added since the newest anchor and that anchor is at least
    ``interval`` old (or there is none); the new anchor, or None when nothing was due.

    ``latest`` is the newest anchor the caller already knows (a loop passes its last one, so only
    newer keys are listed). With the check run every minute and a 5-minute interval, a tail cut
    from the ledger stays undetectable for at most about 6 minutes.
    """
    head = writer.head()
    if head is None:
        return None
    newest = latest_anchor(s3, bucket, after=latest)
    kept = read_directory_anchors(directory)
    if kept and (newest is None or kept[-1].seq > newest.seq):
        newest = kept[-1]  # the object store lost its anchors (a restarted in-memory server)
    if newest is not None:
        if newest.seq >= head[0]:
            return None
        if now - datetime.fromisoformat(newest.at) < interval:
            return None
    return write_anchor(writer, s3, bucket, directory=directory)


def read_anchors(s3: Any, bucket: str) -> list[LedgerAnchor]:
    """Every anchor in the bucket, by seq. An unreadable anchor is kept as a forged one (seq -1)."""
    anchors: list[LedgerAnchor] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=ANCHOR_PREFIX):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            try:
                anchors.append(LedgerAnchor.from_json(body, obj["Key"]))
            except (ValueError, KeyError, TypeError):
                anchors.append(LedgerAnchor(-1, "", "", "", "", obj["Key"]))
    return sorted(anchors, key=lambda a: a.seq)


# --------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class Tampering:
    """The first thing found wrong. ``kind``: edited, deleted, reordered, unknown_key,
    tail_deleted, rewritten or anchor_forged; ``seq``: the first affected row."""

    kind: str
    seq: int | None
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    head_seq: int
    anchors_checked: int
    latest_anchor_seq: int | None
    tampering: Tampering | None = None
    anchor_store: str = ""

    @property
    def ok(self) -> bool:
        return self.tampering is None

    @property
    def unanchored(self) -> bool:
        """Rows exist but no anchor covers any of them: a deleted tail, or a chain rebuilt with the
        key, could not be told from an intact ledger."""
        return self.rows > 0 and self.latest_anchor_seq is None

    @property
    def unanchored_rows(self) -> int:
        """Rows after the newest anchor (what a tail cut could remove unnoticed right now)."""
        return self.head_seq - (self.latest_anchor_seq or 0) if self.rows else 0

    def summary(self) -> str:
        store = f" in {self.anchor_store}" if self.anchor_store else ""
        if self.anchors_checked:
            anchors = f"{self.anchors_checked} anchor(s){store} checked (latest at seq {self.latest_anchor_seq}"
            anchors += f"; {self.unanchored_rows} row(s) after it)" if self.unanchored_rows else ")"
        elif self.anchor_store:
            anchors = f"UNANCHORED: no anchor found{store}, so a deleted tail or a rebuilt chain would go unnoticed"
        else:
            anchors = "anchors not checked (--no-anchors): a deleted tail or a rebuilt chain would go unnoticed"
        if self.tampering is None:
            return f"audit ledger OK: {self.rows} row(s), head at seq {self.head_seq}, {anchors}"
        where = f"row {self.tampering.seq}" if self.tampering.seq is not None else "ledger"
        read = f" (anchors read from {self.anchor_store})" if self.anchor_store else ""
        return f"audit ledger TAMPERED ({self.tampering.kind}) at {where}: {self.tampering.detail}{read}"


def _stream_rows(conn: psycopg.Connection, batch: int) -> Generator[dict[str, Any], None, None]:
    with conn.cursor(name="governance_ledger_verify") as cur:
        cur.itersize = batch
        cur.execute(_SELECT_ROWS)
        for values in cur:
            yield dict(zip(_COLUMNS, values, strict=True))


def _row_at_mac(conn: psycopg.Connection, mac: str) -> int | None:
    row = conn.execute("SELECT seq FROM governance.audit_ledger WHERE mac = %s", (mac,)).fetchone()
    return int(row[0]) if row else None


def _chain_break(conn: psycopg.Connection, row: Mapping[str, Any], prev_seq: int, prev_mac: str, mac_ok: bool) -> Tampering:
    """Classify the first row that does not verify."""
    seq = int(row["seq"])
    if row["prev_mac"] == prev_mac:
        return Tampering("edited", seq, "its content no longer matches its MAC (edited, or forged without the key)")
    if row["prev_mac"] == GENESIS_MAC:
        return Tampering("reordered", seq, "it was written as the first row of the ledger")
    origin = _row_at_mac(conn, str(row["prev_mac"]))
    if origin is not None and origin != prev_seq:
        return Tampering("reordered", seq, f"it was written right after row {origin}, not after row {prev_seq}")
    if mac_ok:
        return Tampering("deleted", seq, f"the row written before it is missing (deleted after row {prev_seq})")
    return Tampering(
        "deleted", seq, f"it does not follow row {prev_seq} and the row it followed is gone (deleted and renumbered)"
    )


def verify_ledger(
    conn: psycopg.Connection,
    keyring: Keyring,
    anchors: Sequence[LedgerAnchor] | None = None,
    *,
    batch: int = 5000,
    anchor_store: str = "",
) -> VerifyReport:
    """Recompute the chain from row 1 and hold it against the anchors; stop at the first fault.

    Streams rows (constant memory). ``anchors=None`` checks the chain alone: a deleted tail or a
    chain rebuilt with the key is then invisible, which is what the anchors are for.
    """
    anchors = list(anchors or [])
    by_seq = {a.seq: a for a in anchors}
    latest = max((a.seq for a in anchors), default=None)
    prev_seq, prev_mac, count = 0, GENESIS_MAC, 0

    def report(tampering: Tampering | None) -> VerifyReport:
        return VerifyReport(count, prev_seq, len(anchors), latest, tampering, anchor_store)

    for forged in (a for a in anchors if not a.verifies(keyring)):
        return report(Tampering("anchor_forged", None, f"anchor {forged.object_key or forged.seq} does not verify"))
    with conn.transaction():
        rows = _stream_rows(conn, batch)
        try:
            for row in rows:
                seq = int(row["seq"])
                if seq != prev_seq + 1:
                    return report(Tampering("deleted", prev_seq + 1, f"rows {prev_seq + 1}..{seq - 1} are missing"))
                try:
                    key = keyring.key(str(row["key_id"]))
                except KeyMaterialError:
                    return report(
                        Tampering("unknown_key", seq, f"it is signed with key id {row['key_id']!r}, not in the keyring")
                    )
                mac_ok = hmac.compare_digest(compute_mac(key, row), str(row["mac"]))
                if not mac_ok or row["prev_mac"] != prev_mac:
                    return report(_chain_break(conn, row, prev_seq, prev_mac, mac_ok))
                anchored = by_seq.get(seq)
                if anchored is not None and anchored.mac != row["mac"]:
                    return report(
                        Tampering("rewritten", seq, f"it differs from the head anchored at {anchored.at}: the chain was rebuilt")
                    )
                prev_seq, prev_mac, count = seq, str(row["mac"]), count + 1
        finally:
            rows.close()
    if latest is not None and latest > prev_seq:
        return report(
            Tampering(
                "tail_deleted",
                prev_seq + 1,
                f"the ledger ends at seq {prev_seq} but the head anchored at {by_seq[latest].at} is seq {latest}: "
                f"rows {prev_seq + 1}..{latest} were deleted",
            )
        )
    return report(None)


# --------------------------------------------------------------------------------------------
# Command line: python -m governance verify-ledger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conninfo", default=None, help=f"libpq URL (default: the {GOVERNANCE_CONN_ID} connection)")
    parser.add_argument("--bucket", default=None, help="bucket holding the anchors (default: the objects bucket)")
    parser.add_argument(
        "--no-anchors", action="store_true", help="check the chain only (a deleted tail then goes unnoticed)"
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="exit 1 also when the ledger has rows but no anchor (tamper evidence missing, not just unbroken)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the ledger verifies, 1 when tampering is found, 2 when it cannot be checked."""

    try:
        keyring = ledger_keyring()
        conninfo = args.conninfo or conninfo_for(GOVERNANCE_CONN_ID)
        anchors: list[LedgerAnchor] | None = None
        store = ""
        if not args.no_anchors:
            bucket = args.bucket or anchor_bucket()
            store = f"s3://{bucket}/{ANCHOR_PREFIX}"
            anchors = read_anchors(s3_client(OBJECTS_CONN_ID), bucket)
            directory = anchor_dir()
            if directory is not None:
                store += f" and {directory}"
                anchors = merge_anchors(anchors, read_directory_anchors(directory))
        with psycopg.connect(conninfo, application_name="governance-verify-ledger") as conn:
            report = verify_ledger(conn, keyring, anchors, anchor_store=store)
    except (ConnectionNotConfigured, KeyMaterialError) as exc:
        print(f"verify-ledger: {exc}", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable:
        print("verify-ledger: governance.audit_ledger does not exist: run `python -m governance migrate`", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"verify-ledger: cannot read the ledger: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # botocore errors: the anchors cannot be read
        print(f"verify-ledger: cannot read the anchors: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if not report.ok:
        return 1
    return 1 if args.strict and (report.unanchored or args.no_anchors) else 0
