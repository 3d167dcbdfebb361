"""The Privacy requests page names what each run of a request did and who let it go ahead."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from governance.ui.pages import approval_row, run_kind


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


def test_an_export_names_who_verified_it_and_an_erasure_who_approved_it_and_when() -> None:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    export = approval_row({"kind": "export", "approved_by": "bob", "approved_at": None})
    assert "<th>Verified by</th>" in export and ">bob<" in export and "Approval" not in export
    erasure = approval_row({"kind": "erasure", "approved_by": "bob", "approved_at": at})
    assert "<th>Approval</th>" in erasure and "bob on 2026-12-01 09:30 UTC" in erasure
    waiting = approval_row({"kind": "erasure", "approved_by": None, "approved_at": None})
    assert ">not yet<" in waiting
    assert "&lt;b&gt;" in approval_row({"kind": "export", "approved_by": "<b>", "approved_at": None})
