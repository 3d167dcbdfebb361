"""The insights release spec (include/insights_release.yaml) loads, and a broken one fails naming
the file, the place inside it and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from governance.anonymisation.spec import SPEC_PATH, ReleaseSpecError, load_release_spec


def test_the_shipped_spec_declares_sources_hierarchies_thresholds_and_public_columns() -> None:
    spec = load_release_spec()
    assert (spec.calls.table, spec.messages.table, spec.businesses.table) == ("calls", "messages", "businesses")
    assert (spec.appointments.table, spec.appointments.time) == ("appointments", "created_at")  # feeds booked_share
    assert spec.sector_of("dental clinic") == "health" and spec.region_of("GR") == "Europe"
    assert spec.sector_of("an industry nobody declared") == "other"
    assert (spec.thresholds.k_businesses, spec.thresholds.k_callers, spec.thresholds.dominance_share) == (5, 10, 0.5)
    assert (spec.median.min_calls, spec.median.min_callers_factor, spec.median.round_to_s) == (50, 2, 5)
    assert "businesses" in spec.public_columns and not {"business_id", "caller_id"} & set(spec.public_columns)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["hierarchies"]["country"].update(levels=["country", "global"]), "hierarchies.country.levels: expected"),
        (lambda raw: raw["hierarchies"]["country"]["region"]["Asia-Pacific"].append("GB"), "'GB' is already in 'Europe'"),
        (lambda raw: raw["thresholds"].update(k_businesses=1), "thresholds: k values must be at least 2"),
        (lambda raw: raw["sources"]["calls"].pop("caller"), "sources.calls: missing 'caller'"),
        (lambda raw: raw["median_duration"].update(min_calls=0), "median_duration: min_calls, min_callers_factor"),
    ],
)
def test_a_broken_spec_is_refused_naming_the_file_and_the_place(tmp_path: Path, change: object, message: str) -> None:
    raw = yaml.safe_load(SPEC_PATH.read_text())
    change(raw)  # type: ignore[operator]
    path = tmp_path / "insights_release.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ReleaseSpecError, match=message) as caught:
        load_release_spec(path)
    assert str(caught.value).startswith(f"{path}: ")
