"""The Privacy requests page's Runs table says what each run of a request did."""

from __future__ import annotations

import pytest

from governance.ui.pages import run_kind


@pytest.mark.parametrize(
    ("request_kind", "dry_run", "shown"),
    [("export", None, "export"), ("erasure", True, "dry run"), ("erasure", False, "erasure"),
     ("erasure", None, "erasure (mode not recorded)")],
)  # fmt: skip
def test_runs_table_names_an_exports_run_and_tells_an_erasures_dry_run_from_the_erasure(
    request_kind: str, dry_run: bool | None, shown: str
) -> None:
    # An export's run used to show an empty Kind cell: its conf has no dry_run.
    assert run_kind(request_kind, dry_run) == shown
