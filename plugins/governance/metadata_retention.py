"""Airflow's own records within retention (privacy policy 6): run configurations, XCom, the API
action log, task logs and lineage event files can hold personal data, so the ``maintain`` command
removes them after an age (default 30 days). Each step is bounded per pass.

* :func:`clean_metadata_db`: ``airflow db clean`` (``airflow.utils.db_cleanup.run_cleanup``) of
  the tables that can carry such data, in batches, without archive tables (an archive would keep
  the very rows being removed);
* :func:`prune_task_logs`: task log files last written before the cutoff, and the folders left
  empty;
* :func:`prune_lineage_events`: the append-only OpenLineage event file is rolled aside (the file
  transport opens the file for every event, so the next event starts a new one); rolled files
  lose their events older than the cutoff and go when none is left.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_METADATA_MAX_AGE = "30d"
# Tables of `airflow db clean` that can carry what a person typed or what a task returned; a
# cleaned dag_run takes its task instances and their rendered fields along.
METADATA_TABLES = (
    "log", "xcom", "_xcom_archive", "dag_run", "task_instance", "task_instance_history", "task_reschedule",
    "callback", "deadline",
)  # fmt: skip
CLEAN_BATCH_SIZE = 1000
MAX_FILES_PER_PASS = 10_000
ROLLED_SUFFIX = ".rolled-"
ROLL_AFTER = timedelta(days=1)  # the live event file is rolled aside once its first event is this old


@dataclass
class MetadataCleanup:
    """What one pass removed (counts only)."""

    tables_cleaned: list[str] = field(default_factory=list)
    log_files_deleted: int = 0
    lineage_files_rolled: int = 0
    lineage_files_deleted: int = 0
    lineage_events_deleted: int = 0


def clean_metadata_db(before: datetime, *, batch_size: int = CLEAN_BATCH_SIZE) -> list[str]:
    """``airflow db clean`` of :data:`METADATA_TABLES` for records older than ``before``; returns
    the tables cleaned (those this Airflow version knows)."""
    import pendulum
    from airflow.utils.db_cleanup import config_dict, run_cleanup

    tables = [t for t in METADATA_TABLES if t in config_dict]
    run_cleanup(clean_before_timestamp=pendulum.instance(before), table_names=tables, dry_run=False, verbose=False,
                confirm=False, skip_archive=True, batch_size=batch_size)  # fmt: skip
    return tables


def _old_files(root: Path, before: datetime, limit: int) -> list[Path]:
    cutoff = before.timestamp()
    found: list[Path] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            try:
                if path.stat().st_mtime < cutoff:
                    found.append(path)
            except FileNotFoundError:
                continue
            if len(found) >= limit:
                return found
    return found


def prune_task_logs(folder: Path, before: datetime, *, limit: int = MAX_FILES_PER_PASS) -> int:
    """Delete task log files last written before ``before`` (at most ``limit`` a pass) and the
    folders they leave empty; return how many files went."""
    if not folder.is_dir():
        return 0
    old = _old_files(folder, before, limit)
    for path in old:
        path.unlink(missing_ok=True)
    for directory, _dirs, _files in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        if Path(directory) != folder and not os.listdir(directory):
            os.rmdir(directory)
    return len(old)


def _event_time(line: str) -> datetime | None:
    try:
        value = json.loads(line).get("eventTime")
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except (ValueError, AttributeError):
        return None


def _first_event_time(path: Path) -> datetime | None:
    if not path.exists():
        return None
    with path.open() as handle:
        line = handle.readline()
    return _event_time(line) if line else None


def prune_lineage_events(live: Path, before: datetime, *, now: datetime, limit: int = MAX_FILES_PER_PASS) -> MetadataCleanup:
    """Roll the live event file aside once its first event is older than :data:`ROLL_AFTER` (or
than ``before``), then keep in each rolled file only the
    events at or after ``before``; a rolled file with none left is deleted."""
    report = MetadataCleanup()
    first = _first_event_time(live)
    if first is not None and (first < now - ROLL_AFTER or first < before):
        live.rename(live.with_name(f"{live.name}{ROLLED_SUFFIX}{now.astimezone(UTC).strftime('%Y%m%dT%H%M%S%f')}"))
        report.lineage_files_rolled = 1
    for path in sorted(live.parent.glob(f"{live.name}{ROLLED_SUFFIX}*"))[:limit]:
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (at := _event_time(line)) is None or at >= before]
        report.lineage_events_deleted += len(lines) - len(kept)
        if not kept:
            path.unlink()
            report.lineage_files_deleted += 1
        elif len(kept) < len(lines):
            partial = path.with_name(path.name + ".tmp")
            partial.write_text("".join(kept))
            partial.replace(path)
    return report


def lineage_events_file() -> Path | None:
    """The OpenLineage file transport's path from Airflow's configuration (None when lineage
    goes elsewhere or nowhere)."""
    from airflow.configuration import conf

    raw = conf.get("openlineage", "transport", fallback="") or ""
    try:
        transport = json.loads(raw) if raw else {}
    except ValueError:
        return None
    while isinstance(transport, dict) and transport.get("type") == "transform":
        transport = transport.get("transport", {})
    if isinstance(transport, dict) and transport.get("type") == "file" and transport.get("log_file_path"):
        return Path(transport["log_file_path"])
    return None


def task_log_folder() -> Path:
    from airflow.configuration import conf

    return Path(conf.get("logging", "base_log_folder"))


def clean_airflow_records(before: datetime, *, now: datetime) -> MetadataCleanup:
    """Every step of this module for records older than ``before``."""
    report = MetadataCleanup()
    report.tables_cleaned = clean_metadata_db(before)
    report.log_files_deleted = prune_task_logs(task_log_folder(), before)
    events = lineage_events_file()
    if events is not None:
        lineage = prune_lineage_events(events, before, now=now)
        report.lineage_files_rolled = lineage.lineage_files_rolled
        report.lineage_files_deleted = lineage.lineage_files_deleted
        report.lineage_events_deleted = lineage.lineage_events_deleted
    log.info("metadata retention: %s", report)
    return report


__all__ = ["DEFAULT_METADATA_MAX_AGE", "MetadataCleanup", "clean_airflow_records", "clean_metadata_db",
           "prune_lineage_events", "prune_task_logs"]  # fmt: skip
