"""A dry run reports what the sweep then does, rule by rule, where rules overlap and where deleted
rows are mentioned elsewhere: ``missed_calls_6_months`` and ``calls_2_years`` both match an old
missed call (the dry run counts it once, under the rule that runs first, as the sweep deletes it
once), and a table that mentions calls (``call_notes.call_id``, added to a copy of the map) has its
references cleared, counted alike in the dry run. The dry run changes nothing. Through the
function each mapped task runs, on a copy of the reference deployment; ground truth by SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from governance.config import INCLUDE_DIR
from tests.fixtures.reference import Deployment

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
RULES = ["missed_calls_6_months", "calls_2_years"]
TARGET = {"system": "aircalls_app", "kind": "table", "name": "calls", "rules": RULES, "orphans": False, "wave": 0}
OPS = {"data_category": "system.operations", "data_use": "essential.service.operations"}
NOTES = {
    "name": "call_notes", "description": "Notes that mention a call.", "primary_key": "id",
    "references": [{"field": "call_id", "to": {"table": "calls"}, "kind": "mention"}],
    "fields": [{"name": "id", **OPS},
               {"name": "call_id", "data_category": "user.unique_id", "data_use": "essential.service.operations",
                "erasure": "nullify"},
               {"name": "body", "data_category": "user.content.private", "data_use": "essential.service.operations",
                "erasure": "delete_row"}],
}  # fmt: skip


def state(url: str) -> tuple[dict[Any, str], dict[Any, str]]:
    with psycopg.connect(url) as conn:
        calls = dict(conn.execute("SELECT id, md5(t::text) FROM app.calls t").fetchall())
        notes = dict(conn.execute("SELECT id, md5(t::text) FROM app.call_notes t").fetchall())
    return calls, notes


def test_a_dry_run_counts_overlapping_rules_once_and_mentions_it_would_clear_as_the_sweep_then_does(
    reference_clone: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from governance.migrations import migrate
    from governance.workflows.retention_sweep import sweep_one_target

    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    next(s for s in data["systems"] if s["name"] == "aircalls_app")["tables"].append(NOTES)
    # Rows are what this test counts: without the call objects' prefixes (and their rules), no
    # old call's objects are listed.
    objects = next(s for s in data["systems"] if s["name"] == "aircalls_objects")
    objects["prefixes"] = [p for p in objects["prefixes"] if p["name"] not in ("recordings", "transcripts")]
    data["retention"] = [r for r in data["retention"] if r.get("prefix") not in ("recordings", "transcripts")]
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(path))
    url = reference_clone.app_url
    migrate(url)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE app.call_notes (id bigint PRIMARY KEY, call_id bigint REFERENCES app.calls (id), body text)")
        conn.execute("CREATE INDEX ON app.call_notes (call_id)")
        missed = conn.execute("SELECT count(*) FROM app.calls WHERE outcome = 'missed' AND started_at < %s",
                              (AS_OF - timedelta(days=800),)).fetchone()[0]  # type: ignore[index]  # fmt: skip
        conn.execute("INSERT INTO app.call_notes SELECT row_number() OVER (ORDER BY id), id, 'about this call' FROM ("
                     " (SELECT id FROM app.calls WHERE outcome <> 'missed' AND started_at < %(old)s ORDER BY id LIMIT 3) UNION ALL"
                     " (SELECT id FROM app.calls WHERE outcome = 'missed' AND started_at BETWEEN %(old)s AND %(half)s"
                     "  ORDER BY id LIMIT 2) UNION ALL"
                     " (SELECT id FROM app.calls WHERE started_at > %(young)s ORDER BY id LIMIT 1)) c",
                     {"old": AS_OF - timedelta(days=731), "half": AS_OF - timedelta(days=200),
                      "young": AS_OF - timedelta(days=30)})  # fmt: skip
        expired = conn.execute(
            "SELECT count(*) FILTER (WHERE outcome = 'missed' AND started_at < %(as_of)s - interval '6 months'),"
            " count(*) FILTER (WHERE NOT (outcome = 'missed' AND started_at < %(as_of)s - interval '6 months')"
            "                    AND started_at < %(as_of)s - interval '2 years')"
            " FROM app.calls", {"as_of": AS_OF},
        ).fetchone()  # fmt: skip
    assert missed > 0, "old missed calls match both rules"
    assert expired is not None and expired[0] > 0 and expired[1] > 0
    before = state(url)
    options = {"dry_run": True, "as_of": AS_OF.isoformat(), "rules": RULES, "orphan_grace_days": 7}

    dry = sweep_one_target(TARGET, options, run_id="dry")  # type: ignore[arg-type]
    assert state(url) == before
    real = sweep_one_target(TARGET, {**options, "dry_run": False}, run_id="real")  # type: ignore[arg-type]

    for rule in RULES:
        assert (dry["rules"][rule]["rows"], dry["rules"][rule]["cascade"]) == (
            real["rules"][rule]["rows"], real["rules"][rule]["cascade"]), rule  # fmt: skip
    assert (real["rules"]["missed_calls_6_months"]["rows"], real["rules"]["calls_2_years"]["rows"]) == expired
    cleared = "mentions cleared aircalls_app.call_notes.call_id"
    assert dry["rules"]["missed_calls_6_months"]["cascade"][cleared] == 2
    assert dry["rules"]["calls_2_years"]["cascade"][cleared] == 3
    _calls, notes = state(url)
    with psycopg.connect(url) as conn:
        linked = dict(conn.execute("SELECT id, call_id FROM app.call_notes").fetchall())
    assert len(notes) == 6 and sum(v is None for v in linked.values()) == 5
