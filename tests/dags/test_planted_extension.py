"""A data engineer's extension of the map, end to end (issue 19): in a copy of the map named by
``GOVERNANCE_DATAMAP``, a table ``app.call_notes`` owned by ``calls`` (two hops from the caller),
a column ``callers.preferred_name``, an object prefix ``voicemails/{business_id}/{call_id}.wav``
tied to calls, a legal exception and a retention rule for the notes. With no code change:

* ``dsr_export`` puts the person's notes, preferred name and voicemail in the bundle;
* ``dsr_erasure`` removes them (the voicemail with every version) and nothing of anyone else;
* ``retention_sweep`` cascades: an expired call goes with its notes and voicemail (every version),
  an expired note of a young call goes by its own rule, a call whose note the exception keeps
  stays, counted as held by its child; and, run once more with a legal hold on the notes table,
  a held note keeps its expired call.

Ground truth is this module's own SQL and boto3 listings. Three ``dag.test()`` runs in all (one
per workflow), on one private copy of the reference deployment."""

from __future__ import annotations

import argparse
import copy
import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from airflow.utils.state import DagRunState

from governance.config import INCLUDE_DIR
from governance_dev.seed import cast_member
from tests.dags.conftest import task_states
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=140), pytest.mark.integration, pytest.mark.dagrun]

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)  # the seed's activity runs up to this day
SUBJECT = "caller_only"
OPS = {"data_category": "system.operations", "data_use": "essential.service.operations"}
CALL_NOTES = {
    "name": "call_notes",
    "description": "Notes staff wrote about a call.",
    "primary_key": "id",
    "references": [{"field": "call_id", "to": {"table": "calls"}, "kind": "ownership"}],
    "fields": [
        {"name": "id", **OPS},
        {"name": "call_id", "data_category": "user.unique_id", "data_use": "essential.service.operations", "erasure": "delete_row"},
        {"name": "body", "data_category": "user.content.private", "data_use": "essential.service.operations", "erasure": "delete_row"},
        {"name": "written_at", "data_category": "user.behavior", "data_use": "essential.service.operations", "erasure": "delete_row"},
    ],
}
PREFERRED_NAME = {"name": "preferred_name", "data_category": "user.name", "data_use": "essential.service.operations",
                  "erasure": "delete_row"}  # fmt: skip
VOICEMAILS = {
    "name": "voicemails", "key_template": "voicemails/{business_id}/{call_id}.wav", "owned_by": "row",
    "tied_to": {"system": "aircalls_app", "table": "calls", "placeholders": {"call_id": "id"}},
    "data_category": "user.content.private", "data_use": "essential.service.operations",
    "description": "Voicemail a caller left; erased with the call.",
}  # fmt: skip
NOTES_EXCEPTION = {
    "name": "call_notes_complaints", "system": "aircalls_app", "table": "call_notes",
    "basis": "A note is kept a year after it was written, for complaints about the call.", "age_column": "written_at",
    "period": "P1Y",
}  # fmt: skip
NOTES_RULE = {
    "name": "call_notes_1_year", "system": "aircalls_app", "table": "call_notes", "age_column": "written_at",
    "period": "P1Y", "action": "delete_rows", "reason": "Notes serve complaints about a call for a year.",
}  # fmt: skip


def extended_map(tmp_path: Path, *, excepted: bool = False) -> Path:
    """The copy of the map with the extension; ``excepted``: the notes are also kept a year under
    a legal exception (so erasure minimises them instead of deleting them)."""
    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    app = next(s for s in data["systems"] if s["name"] == "aircalls_app")
    app["tables"].append(copy.deepcopy(CALL_NOTES))
    next(t for t in app["tables"] if t["name"] == "callers")["fields"].append(PREFERRED_NAME)
    objects = next(s for s in data["systems"] if s["name"] == "aircalls_objects")
    objects["prefixes"].append(VOICEMAILS)
    data["retention"].append(NOTES_RULE)
    if excepted:
        data["legal_exceptions"].append(NOTES_EXCEPTION)
        for column in app["tables"][-1]["fields"][1:]:  # the link to the call is cut, the rest kept
            column.update({"erasure": "nullify"} if column["name"] == "call_id" else
                          {"erasure": "keep", "legal_basis": NOTES_EXCEPTION["name"]})  # fmt: skip
    path = tmp_path / ("excepted-datamap.yaml" if excepted else "team-datamap.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def versions(s3: Any, bucket: str, key: str) -> list[str]:
    listing = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return sorted(e["VersionId"] for e in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])] if e["Key"] == key)


def rows(url: str, query: str, *args: Any) -> dict[Any, str]:
    """``{first column: md5 of the row}``."""
    with psycopg.connect(url) as conn:
        return {r[0]: r[1] for r in conn.execute(query, args).fetchall()}


def notes(url: str) -> dict[Any, str]:
    return rows(url, "SELECT id, md5(t::text) FROM app.call_notes t")


def callers(url: str) -> dict[Any, str]:
    return rows(url, "SELECT id, md5(t::text) FROM app.callers t")


def calls(url: str) -> dict[Any, str]:
    return rows(url, "SELECT id, md5(t::text) FROM app.calls t")


def request(url: str, kind: str) -> str:
    """A request recorded and verified at intake (erasures are then approved), as
    ``python -m governance request new`` and ``request verify`` record it."""
    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.identity import SubjectIdentities
    from governance.privacy_requests import create_request
    from governance.workflows.request_intake import mark_verified

    member = cast_member(SUBJECT)
    with psycopg.connect(url) as conn:
        request_id = create_request(
            conn, kind=kind, identities=SubjectIdentities.parse(email=member.email, phone=member.phone, region="US"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=datetime.now(UTC), source="intake",
        )  # fmt: skip
    mark_verified(request_id, method="call-back to the number on file", verified_by="intake-desk", at=datetime.now(UTC),
                  conninfo=url)  # fmt: skip
    return request_id


def test_a_child_table_a_column_and_a_prefix_added_to_the_map_are_exported_erased_and_swept_with_their_owners(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from governance.datamap import command
    from governance.export import age
    from governance.export.passphrase_command import run as export_passphrase
    from governance.migrations import migrate
    from governance.workflows.retention_sweep import sweep_one_target

    path = extended_map(tmp_path)
    # The map validates as it is: no {unreferenced: true} demanded of the calls rules.
    assert command.run(argparse.Namespace(path=path, explain=False, sql=False)) == 0
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(path))
    url, bucket = reference_clone.app_url, reference_clone.bucket
    migrate(url)
    member = cast_member(SUBJECT)

    # The tables and objects the data engineer added, with rows of the person and of others.
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE app.callers ADD COLUMN preferred_name text")
        conn.execute("UPDATE app.callers SET preferred_name = 'pref-' || id")
        conn.execute("CREATE TABLE app.call_notes (id bigint PRIMARY KEY, call_id bigint NOT NULL REFERENCES app.calls (id),"
                     " body text, written_at timestamptz NOT NULL)")  # fmt: skip
        conn.execute("CREATE INDEX ON app.call_notes (call_id)")
        conn.execute("CREATE INDEX ON app.call_notes (written_at)")
        mine = conn.execute("SELECT id, business_id FROM app.calls WHERE caller_id = ANY(%s) ORDER BY id LIMIT 3",
                            (list(member.caller_ids),)).fetchall()  # fmt: skip
        others = "caller_id <> ALL(%(mine)s) AND NOT EXISTS (SELECT 1 FROM app.callers c WHERE c.id = caller_id AND c.phone = %(e164)s)"
        params = {"mine": list(member.caller_ids), "e164": member.e164, "as_of": AS_OF}
        old = conn.execute(f"SELECT id, business_id FROM app.calls WHERE {others} AND started_at < %(as_of)s - interval '2 years'"  # noqa: S608
                           " ORDER BY id LIMIT 1", params).fetchone()  # fmt: skip
        young = conn.execute(f"SELECT id, business_id FROM app.calls WHERE {others} AND started_at > %(as_of)s - interval '30 days'"  # noqa: S608
                             " ORDER BY id LIMIT 2", params).fetchall()  # fmt: skip
        assert len(mine) == 3 and old is not None and len(young) == 2
        old_call, old_business = old
        (young_call, _), (quiet_call, _) = young

        def at(**ago: int) -> datetime:
            return AS_OF - timedelta(**ago)

        conn.cursor().executemany("INSERT INTO app.call_notes VALUES (%s, %s, %s, %s)", [
            (1, mine[0][0], "my note one", at(days=500)), (2, mine[1][0], "my note two", at(days=450)),
            (3, mine[2][0], "my note three", at(days=420)),
            (10, old_call, "a later note on an expired call", at(days=200)),  # goes with its call
            (12, young_call, "an expired note on a young call", at(days=400)),  # goes by its own rule
            (13, quiet_call, "a recent note", at(days=5)),                      # stays
        ])  # fmt: skip
    my_voicemail = f"voicemails/{mine[0][1]}/{mine[0][0]}.wav"
    old_voicemail = f"voicemails/{old_business}/{old_call}.wav"
    for key in (my_voicemail, old_voicemail):
        s3.put_object(Bucket=bucket, Key=key, Body=b"RIFF first take")
        s3.put_object(Bucket=bucket, Key=key, Body=b"RIFF " + key.encode())
    assert len(versions(s3, bucket, my_voicemail)) == 2

    # 1. Export: the person's notes, preferred names and voicemail are in the bundle.
    export_id = request(url, "export")
    exported = get_dag("dsr_export").test(run_conf={"request_id": export_id, "email": None, "phone": None,
                                                    "business_id": None, "formats": ["json"], "link_valid_days": 7})  # fmt: skip
    assert exported.state == DagRunState.SUCCESS, task_states(exported)
    capfd.readouterr()
    assert export_passphrase(argparse.Namespace(request_id=export_id, staff="privacy.officer")) == 0
    passphrase = capfd.readouterr().out.strip().splitlines()[-1]
    sealed = s3.get_object(Bucket=bucket, Key=f"exports/{export_id}/aircalls-export-{export_id}.zip.age")["Body"].read()
    archive = zipfile.ZipFile(io.BytesIO(age.decrypt_bytes(sealed, passphrase)))
    assert sorted(r["id"] for r in json.loads(archive.read("data/aircalls_app/call_notes.json"))) == [1, 2, 3]
    exported_callers = json.loads(archive.read("data/aircalls_app/callers.json"))
    assert {r["id"]: r["preferred_name"] for r in exported_callers} == {c: f"pref-{c}" for c in member.caller_ids}
    files = {n.split("/", 2)[2]: n for n in archive.namelist() if n.startswith("files/")}
    assert my_voicemail in files and old_voicemail not in files
    assert archive.read(files[my_voicemail]) == b"RIFF " + my_voicemail.encode()  # the current version

    # 2. Erasure: the person's notes, caller rows (with the new column) and voicemail versions go;
    # nobody else's row or object changes.
    notes_before, callers_before, calls_before = notes(url), callers(url), calls(url)
    my_calls = set(rows(url, "SELECT id, '' FROM app.calls WHERE caller_id = ANY(%s)", list(member.caller_ids)))
    old_versions = versions(s3, bucket, old_voicemail)
    erasure_id = request(url, "erasure")
    erased = get_dag("dsr_erasure").test(run_conf={"request_id": erasure_id, "email": None, "phone": None,
                                                   "business_id": None, "dry_run": False, "override_guard": False})  # fmt: skip
    assert erased.state == DagRunState.SUCCESS, task_states(erased)
    assert notes(url) == {k: v for k, v in notes_before.items() if k not in (1, 2, 3)}
    assert callers(url) == {k: v for k, v in callers_before.items() if k not in member.caller_ids}
    assert calls(url) == {k: v for k, v in calls_before.items() if k not in my_calls}
    assert versions(s3, bucket, my_voicemail) == []
    assert versions(s3, bucket, old_voicemail) == old_versions

    # 3. Retention: the expired call goes with its note and every version of its voicemail; the
    # expired note of a young call goes by its own rule; nothing unexpired changes.
    calls_left, notes_left = calls(url), notes(url)
    expired = set(rows(url, "SELECT id, '' FROM app.calls WHERE started_at < %s - interval '2 years'", AS_OF))
    assert old_call in expired
    swept = get_dag("retention_sweep").test(run_conf={"dry_run": False, "as_of": AS_OF.isoformat(),
                                                      "rules": ["calls_2_years", "call_notes_1_year"], "orphan_grace_days": 7})  # fmt: skip
    assert swept.state == DagRunState.SUCCESS, task_states(swept)
    assert calls(url) == {k: v for k, v in calls_left.items() if k not in expired}
    assert notes(url) == {13: notes_left[13]}
    assert versions(s3, bucket, old_voicemail) == []
    with psycopg.connect(url) as conn:
        cascade = conn.execute("SELECT cascade FROM governance.retention_runs WHERE run_id = %s AND rule = 'calls_2_years'",
                               (swept.run_id,)).fetchone()  # fmt: skip
    assert cascade is not None and cascade[0].get("aircalls_app.call_notes") == 1

    # 4. A kept child keeps its expired parent, counted as held: a note under a legal hold on its
    # table, then (in a map where notes are kept a year by law) a recent note. The sweep's task
    # function runs the calls rule directly, without another DAG run; each time one expired call
    # with no note goes beside the kept one.
    business, caller = rows(url, "SELECT business_id, caller_id::text FROM app.calls WHERE id = %s", quiet_call).popitem()
    target = {"system": "aircalls_app", "kind": "table", "name": "calls", "rules": ["calls_2_years"], "orphans": False, "wave": 0}
    options = {"dry_run": False, "as_of": AS_OF.isoformat(), "rules": ["calls_2_years"], "orphan_grace_days": 7}
    hold = ("INSERT INTO governance.legal_holds (scope, table_name, reason, starts_at, created_by)"
            " VALUES ('table', 'app.call_notes', 'Litigation: every note preserved', %s, 'legal-team') RETURNING hold_id")  # fmt: skip
    for first, note_age, kept_by in ((900001, 899, "hold"), (900003, 20, "exception")):
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO app.calls (id, business_id, caller_id, started_at, duration_s, outcome) VALUES"
                         " (%s, %s, %s, %s, 60, 'answered'), (%s, %s, %s, %s, 60, 'answered')",
                         (first, business, int(caller), at(days=900), first + 1, business, int(caller), at(days=900)))  # fmt: skip
            conn.execute("INSERT INTO app.call_notes VALUES (%s, %s, 'a kept note', %s)", (first, first, at(days=note_age)))
            # Planted in the past, below where the rule's last run left its watermark: start over.
            conn.execute("DELETE FROM governance.retention_watermarks WHERE rule = 'calls_2_years'")
            if kept_by == "hold":
                hold_id = conn.execute(hold, (at(days=1),)).fetchone()[0]  # type: ignore[index]
            else:
                conn.execute("UPDATE governance.legal_holds SET released_at = %s WHERE hold_id = %s", (at(days=1), hold_id))
                monkeypatch.setenv("GOVERNANCE_DATAMAP", str(extended_map(tmp_path, excepted=True)))
        result = sweep_one_target(target, options, run_id=f"kept-by-{kept_by}")  # type: ignore[arg-type]
        assert result["rules"]["calls_2_years"]["held_reasons"] == {"owned_row_held": 1}, kept_by
        assert first in calls(url) and first + 1 not in calls(url) and first in notes(url), kept_by
