"""datamap_drift: is the data map still a true picture of the systems it governs?

Drift that breaks a privacy promise (a personal-looking column or object prefix the map does not
know, so export and erasure would miss it; a mapped table or column that is gone, so plans would
fail) fails the run, which alerts through the failure notifier. Drift that only costs time or
tidiness (a missing index, an unmapped non-personal column) is reported as a warning. Every
report is kept in ``governance.datamap_drift_reports``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from governance.config import GOVERNANCE_CONN_ID


class BlockingDrift(RuntimeError):
    """The map misses personal data or names things that no longer exist."""


def validate_map() -> dict[str, Any]:
    """Load and validate the map (DataMapError names every problem); return its identity."""
    from governance.datamap import load_datamap

    datamap = load_datamap()
    return {"version": datamap.version, "sha256": datamap.version_hash, "counts": datamap.counts()}


def database_drift() -> dict[str, Any]:
    """Every postgres system of the map against its live database (catalogue and samples)."""
    from governance.datamap import load_datamap
    from governance.datamap.drift import find_drift
    from governance.db import conninfo_for

    datamap = load_datamap()
    urls = {system.name: conninfo_for(system.connection_id) for system in datamap.postgres_systems}
    return find_drift(datamap, urls).to_dict()


def object_store_drift() -> dict[str, Any]:
    """Every object-store system of the map against its bucket."""
    from governance.datamap import load_datamap
    from governance.datamap.drift import find_object_drift
    from governance.objectstore import s3_client

    datamap = load_datamap()
    clients = {system.name: s3_client(system.connection_id) for system in datamap.object_systems}
    return find_object_drift(datamap, clients).to_dict()


def classify(database: dict[str, Any], objects: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Split findings into (blocking, warnings), each a list of one-line messages."""
    from governance.datamap.drift import UnnormalisedIdentity, unnormalised_message

    blocking = [
        f"unmapped column {c['system']}.{c['table']}.{c['column']} looks personal: {c['reason']}"
        for c in database["unmapped_columns"]
        if c["looks_personal"]
    ]
    blocking += [f"mapped table {t} does not exist" for t in database["missing_tables"]]
    blocking += [f"mapped column {c} does not exist" for c in database["missing_columns"]]
    unnormalised = [UnnormalisedIdentity(**u) for u in database.get("unnormalised_identities", [])]
    blocking += [unnormalised_message(u) for u in unnormalised if not u.found]
    blocking += [f"bucket of {b} does not exist" for b in objects["missing_buckets"]]
    blocking += [
        f"unmapped prefix {p['system']}:{p['prefix']} looks personal: {p['reason']}"
        for p in objects["unmapped_prefixes"]
        if p["looks_personal"]
    ]
    warnings = [
        f"{i['system']}.{i['table']}.{i['column']} ({i['purpose']}) has no index on {i['expression']}"
        for i in database["missing_indexes"]
    ]
    warnings += [unnormalised_message(u) for u in unnormalised if u.found]
    warnings += [f"unmapped table {t}" for t in database["unmapped_tables"]]
    warnings += [
        f"unmapped column {c['system']}.{c['table']}.{c['column']} ({c['data_type']})"
        for c in database["unmapped_columns"]
        if not c["looks_personal"]
    ]
    warnings += [
        f"unmapped prefix {p['system']}:{p['prefix']}" for p in objects["unmapped_prefixes"] if not p["looks_personal"]
    ]
    return blocking, warnings


def record_report(
    *, run_id: str, checked_at: datetime, datamap_info: dict[str, Any], database: dict[str, Any], objects: dict[str, Any]
) -> dict[str, Any]:
    """Store the run's report (idempotent per run), then fail on blocking drift."""
    from governance.db import connect, conninfo_for
    from governance.migrations import migrate

    blocking, warnings = classify(database, objects)
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    migrate(conninfo)
    report = {"database": database, "objects": objects, "blocking": blocking, "warnings": warnings}
    with connect(conninfo) as conn:
        conn.execute(
            """
            INSERT INTO governance.datamap_drift_reports
                (run_id, checked_at, datamap_version, datamap_sha256, is_clean, blocking, warnings, report)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)
            ON CONFLICT (run_id) DO UPDATE SET checked_at = EXCLUDED.checked_at,
                datamap_version = EXCLUDED.datamap_version, datamap_sha256 = EXCLUDED.datamap_sha256,
                is_clean = EXCLUDED.is_clean, blocking = EXCLUDED.blocking, warnings = EXCLUDED.warnings,
                report = EXCLUDED.report
            """,
            (run_id, checked_at, datamap_info["version"], datamap_info["sha256"], not (blocking or warnings),
             len(blocking), len(warnings), json.dumps(report)),
        )  # fmt: skip
    if blocking:
        raise BlockingDrift(
            f"the data map misses or misnames {len(blocking)} thing(s); fix include/datamap.yaml:\n  "
            + "\n  ".join(blocking)
        )
    return {"blocking": 0, "warnings": len(warnings), "messages": warnings}
