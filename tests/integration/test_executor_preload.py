"""PreloadingLocalExecutor: the modules task processes need are imported once, in the process that
forks LocalExecutor's workers, before it forks them (so every worker, and every task process its
supervisor forks, inherits them). ``benchmarks/erasure.py --standalone`` shows the effect on a real
``airflow standalone``: verification tasks no longer log their own Great Expectations import."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

from governance.executors import PRELOAD_ENV, PreloadingLocalExecutor, preload_names

PROBE = "tests.fixtures.preload_probe"


@pytest.fixture
def probe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "imported_by"
    monkeypatch.setenv("GOVERNANCE_PRELOAD_PROBE_FILE", str(record))
    sys.modules.pop(PROBE, None)
    return record


def test_modules_are_imported_once_in_the_forking_process_before_its_workers_exist(
    probe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PRELOAD_ENV, f"{PROBE}, governance_no_such_module")
    executor = PreloadingLocalExecutor(parallelism=2)
    assert executor.is_mp_using_fork
    executor.start()
    try:
        workers = set(executor.workers)
        # Imported by this (the scheduler's) process only; the two workers forked afterwards hold
        # it without importing it again. A module that does not import is skipped, not fatal.
        assert probe_file.read_text().split() == [str(os.getpid())]
        assert list(executor.preloaded) == [PROBE]
        assert len(workers) == 2 and os.getpid() not in workers
        assert all(executor.workers[pid].is_alive() for pid in workers)
    finally:
        executor.end()
        gc.unfreeze()
        sys.modules.pop(PROBE, None)


def test_preload_list_defaults_to_great_expectations_and_the_ledger_and_can_be_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PRELOAD_ENV, raising=False)
    assert preload_names() == ["great_expectations", "governance.ledger", "governance.lineage", "governance.db"]
    monkeypatch.setenv(PRELOAD_ENV, "")
    assert preload_names() == []
    monkeypatch.setenv(PRELOAD_ENV, " pandas ,boto3,")
    assert preload_names() == ["pandas", "boto3"]
