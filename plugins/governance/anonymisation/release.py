"""A release, from the run's input to the published table: the steps the DAG's tasks call.

* :func:`check_release_input` refuses bad input before anything is read;
* :func:`stage_release` computes the cells in PostgreSQL, applies thresholds, generalisation and
  suppression (or differential privacy, spending the budget), and stages the result in the
  governance schema in one transaction; a retried or re-run task of the same run finds its staged
  release and returns it, spending nothing again;
* :func:`verify_release` (``governance.anonymisation.verify``) checks the staged cells independently;
* :func:`publish_release` copies the verified cells to ``insights`` and writes Parquet, CSV and the
  HTML report to the object store.

XCom carries the release id, counts and dates only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypedDict

from psycopg import sql

from governance.anonymisation.cells import Cell, CellKey, fetch_cells, time_nesting
from governance.anonymisation.disclosure import (
    PUBLISHED,
    ReleaseBlocked,
    SuppressionResult,
    generalisation_summary,
    released_median,
    suppress,
)
from governance.anonymisation.privacy import add_noise, noise_plan, spend_budget
from governance.anonymisation.spec import ReleaseSpec, Thresholds

log = logging.getLogger(__name__)

PUBLIC_VALUE_COLUMNS = (
    "calls", "answered_share", "voicemail_share", "transferred_share", "missed_share", "booked_share",
    "mean_duration_s", "median_duration_s", "messages_per_call", "after_hours_share", "businesses",
)  # fmt: skip


class ReleaseInputError(ValueError):
    """The run's input is invalid (the message says what to fix)."""


class ReleaseRequest(TypedDict):
    period_start: str  # Monday of the first ISO week
    period_end: str  # Sunday of the last ISO week (inclusive)
    k_businesses: int
    k_callers: int
    dominance_share: float
    epsilon: float | None
    delta: float | None


class StagedRelease(TypedDict):
    release_id: str
    version: int
    period_start: str
    period_end: str
    cells: int
    published_cells: int
    suppressed_cells: int
    empty_reason: str | None
    epsilon_spent: float | None
    reused: bool


def _number(params: dict[str, Any], name: str, kind: type) -> Any:
    value = params.get(name)
    if value is None or value == "":
        return None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ReleaseInputError(f"{name}: expected a whole number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ReleaseInputError(f"{name}: expected a number, got {value!r}") from exc


def check_release_input(params: dict[str, Any], *, spec: ReleaseSpec, logical_date: datetime, now: datetime) -> ReleaseRequest:
    """The run's release, or :class:`ReleaseInputError`. Without a period, the ISO week before
    the run's logical date; a period is widened to whole ISO weeks."""
    k_businesses = _number(params, "k_businesses", int)
    k_callers = _number(params, "k_callers", int)
    k_businesses = spec.thresholds.k_businesses if k_businesses is None else k_businesses
    k_callers = spec.thresholds.k_callers if k_callers is None else k_callers
    if k_businesses < 2 or k_callers < 2:
        raise ReleaseInputError("k_businesses and k_callers must be at least 2 (a cell of one identifies it)")
    epsilon, delta = _number(params, "epsilon", float), _number(params, "delta", float)
    if epsilon is not None and epsilon <= 0:
        raise ReleaseInputError(f"epsilon must be greater than 0, got {epsilon}")
    if delta is not None and not 0 < delta < 1:
        raise ReleaseInputError(f"delta must be between 0 and 1 (exclusive), got {delta}")
    if epsilon is not None and delta is None:
        raise ReleaseInputError("with epsilon set, set delta too (it sets the threshold for dropping small cells)")
    if delta is not None and epsilon is None:
        raise ReleaseInputError("delta is set without epsilon: set both for a differentially private release, or neither")
    start_text, end_text = params.get("period_start"), params.get("period_end")
    if bool(start_text) != bool(end_text):
        raise ReleaseInputError("give both period_start and period_end, or neither (the previous ISO week)")
    if start_text and end_text:
        try:
            start, end = date.fromisoformat(str(start_text)[:10]), date.fromisoformat(str(end_text)[:10])
        except ValueError as exc:
            raise ReleaseInputError(f"period: dates are YYYY-MM-DD ({exc})") from exc
        if end < start:
            raise ReleaseInputError(f"period_end {end} is before period_start {start}: the period is reversed")
    else:
        day = logical_date.astimezone(UTC).date()
        start = day - timedelta(days=day.isoweekday() - 1 + 7)
        end = start + timedelta(days=6)
    start = start - timedelta(days=start.isoweekday() - 1)
    end = end + timedelta(days=7 - end.isoweekday())
    if end >= now.astimezone(UTC).date():
        raise ReleaseInputError(
            f"the period ends on {end} (widened to whole ISO weeks), which is not over yet: release only past weeks"
        )
    return ReleaseRequest(
        period_start=start.isoformat(), period_end=end.isoformat(), k_businesses=k_businesses, k_callers=k_callers,
        dominance_share=spec.thresholds.dominance_share, epsilon=epsilon, delta=delta,
    )  # fmt: skip


def release_id_for(spec: ReleaseSpec, request: ReleaseRequest, run_id: str) -> str:
    digest = hashlib.sha256(f"{spec.release}|{request['period_start']}|{run_id}".encode()).hexdigest()[:12]
    return f"{spec.release}-{request['period_start']}-{digest}"


def public_values(cell: Cell, median: float | None = None) -> dict[str, float | None]:
    """The public values of a published cell; ``median`` is the released median (or None)."""
    calls = cell.calls

    def share(value: float) -> float | None:
        return round(value / calls, 4) if calls > 0 else None

    return {
        "calls": round(calls), "answered_share": share(cell.answered), "voicemail_share": share(cell.voicemail),
        "transferred_share": share(cell.transferred), "missed_share": share(cell.missed),
        "booked_share": share(cell.appointments),
        "mean_duration_s": round(cell.duration_sum / calls, 1) if calls > 0 else None, "median_duration_s": median,
        "messages_per_call": round(cell.messages / calls, 3) if calls > 0 else None,
        "after_hours_share": share(cell.after_hours), "businesses": round(cell.businesses),
    }  # fmt: skip


def _key_row(key: CellKey) -> tuple[str, str, str, str]:
    return key.level, key.industry, key.geo, key.period


def _key_of(level: str, industry: str, geo: str, period: str) -> CellKey:
    industry_level, geo_level, time_level = level.split("/")
    return CellKey(industry_level, geo_level, time_level, industry, geo, period)


def earlier_statuses(conn: Any, request: ReleaseRequest, release_id: str) -> tuple[set[CellKey], set[CellKey]]:
    """Cells suppressed and cells published by earlier published releases of the same period."""
    rows = conn.execute(
        """SELECT c.level, c.industry, c.country, c.period, c.status FROM governance.insights_release_cells c
           JOIN governance.insights_releases r USING (release_id)
           WHERE r.period_start = %s AND r.period_end = %s AND r.status = 'published' AND r.release_id <> %s""",
        (request["period_start"], request["period_end"], release_id),
    ).fetchall()
    suppressed = {_key_of(*r[:4]) for r in rows if r[4] != PUBLISHED}
    published = {_key_of(*r[:4]) for r in rows if r[4] == PUBLISHED}
    return suppressed, published - suppressed


@dataclass
class ComputedRelease:
    cells: list[Cell]
    result: SuppressionResult
    report: dict[str, Any]
    medians: dict[CellKey, float | None]


def compute_release(
    conn: Any, spec: ReleaseSpec, schema: str, request: ReleaseRequest, release_id: str, *, app_conn: Any | None = None
) -> ComputedRelease:
    """The cells (read through ``app_conn``, default ``conn``) and each one's status (earlier
    releases read through ``conn``, the governance database). Changes nothing."""
    start = date.fromisoformat(request["period_start"])
    end_exclusive = date.fromisoformat(request["period_end"]) + timedelta(days=1)
    dp_on = request["epsilon"] is not None
    # The exact cells: the thresholds, the dominance rule and complementary suppression always
    # read these (with or without differential privacy).
    raw = fetch_cells(app_conn or conn, spec, schema, start, end_exclusive, bounded=False)
    thresholds = Thresholds(request["k_businesses"], request["k_callers"], request["dominance_share"])
    report: dict[str, Any] = {"raw_cells": len(raw), "raw_calls": sum(c.calls for c in raw if _finest(c.key))}
    below_noise: dict[CellKey, str] = {}
    cells = raw
    if dp_on:
        # The noise is drawn on the bounded contributions (the privacy unit's), a second pass.
        bounded = {c.key: c for c in fetch_cells(app_conn or conn, spec, schema, start, end_exclusive, bounded=True)}
        plan = noise_plan(spec.privacy, float(request["epsilon"] or 0), float(request["delta"] or 0), thresholds.k_callers)
        noisy = {c.key: c for c in add_noise(list(bounded.values()), spec.privacy, plan, spec.calls.outcomes)}
        for key in (c.key for c in raw):
            cell = noisy.get(key)
            if cell is None or cell.calls < plan.calls_threshold or cell.businesses < thresholds.k_businesses:
                below_noise[key] = "below the noise-aware threshold"
        zero = {f: 0.0 for f in ("calls", "businesses", "callers", "top_business_calls")}
        cells = [noisy[c.key] if c.key in noisy else c.with_values(**zero) for c in raw]
        report["noise"] = {"scales": plan.scales, "calls_threshold": plan.calls_threshold,
                           "cells_below_threshold": len(below_noise)}  # fmt: skip
    week_months, month_quarters = time_nesting(raw)
    earlier_suppressed, earlier_published = earlier_statuses(conn, request, release_id)
    result = suppress(raw, spec, thresholds, week_months=week_months, month_quarters=month_quarters,
                      earlier_suppressed=earlier_suppressed, earlier_published=earlier_published,
                      also_primary=below_noise)  # fmt: skip
    if dp_on:
        true_calls = {c.key: c.calls for c in raw}
        errors = [abs(c.calls - true_calls[c.key]) / max(true_calls[c.key], 1) for c in cells if result.status[c.key] == PUBLISHED]
        report["noise"]["mean_relative_error_calls"] = (sum(errors) / len(errors)) if errors else None
    finest_published = sum(c.calls for c in raw if _finest(c.key) and result.status[c.key] == PUBLISHED)
    report["levels"] = generalisation_summary(cells, result, spec)
    report["finest_calls_published_share"] = (finest_published / report["raw_calls"]) if report["raw_calls"] else None
    # Utility loss per level: share of the raw calls not visible in that level's published cells.
    loss: dict[str, float] = {}
    for level in {c.key.level for c in raw}:
        total = sum(c.calls for c in raw if c.key.level == level)
        shown = sum(c.calls for c in raw if c.key.level == level and result.status[c.key] == PUBLISHED)
        loss[level] = round(1 - shown / total, 4) if total else 0.0
    report["utility_loss_by_level"] = dict(sorted(loss.items()))
    # The median: only from the exact cells (never under DP), where the median rule holds.
    medians = {c.key: None if dp_on else released_median(c, thresholds, spec.median) for c in raw}
    report["medians_released"] = sum(1 for k, v in medians.items() if v is not None and result.status[k] == PUBLISHED)
    return ComputedRelease(cells=cells, result=result, report=report, medians=medians)


def _finest(key: CellKey) -> bool:
    return key.level == "industry/country/week"


def _weeks(request: ReleaseRequest) -> list[date]:
    start, end = date.fromisoformat(request["period_start"]), date.fromisoformat(request["period_end"])
    return [start + timedelta(days=7 * i) for i in range((end - start).days // 7 + 1)]


def _staged(conn: Any, release_id: str) -> StagedRelease | None:
    row = conn.execute(
        """SELECT r.version, r.period_start, r.period_end, r.empty_reason, r.epsilon,
                  count(c.*), count(c.*) FILTER (WHERE c.status = 'published'), r.status
           FROM governance.insights_releases r LEFT JOIN governance.insights_release_cells c USING (release_id)
           WHERE r.release_id = %s GROUP BY r.release_id""",
        (release_id,),
    ).fetchone()
    if row is None:
        return None
    if row[7] == "blocked":
        raise ReleaseBlocked(f"release {release_id} was blocked by its verification: trigger a new run")
    return StagedRelease(
        release_id=release_id, version=row[0], period_start=row[1].isoformat(), period_end=row[2].isoformat(),
        cells=row[5], published_cells=row[6], suppressed_cells=row[5] - row[6], empty_reason=row[3],
        epsilon_spent=row[4], reused=True,
    )  # fmt: skip


def stage_release(
    conn: Any, spec: ReleaseSpec, schema: str, request: ReleaseRequest, *, run_id: str, app_conn: Any | None = None
) -> StagedRelease:
    """Compute and stage the release of ``run_id`` in one transaction of ``conn`` (the governance
    database; budget spent inside it), or return the one already staged for this run. The source
    tables are read through ``app_conn`` (default ``conn``)."""
    release_id = release_id_for(spec, request, run_id)
    with conn.transaction():
        # One release per period at a time: versions and earlier-release suppressions stay consistent.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('insights_release'), hashtext(%s))", (request["period_start"],))
        existing = _staged(conn, release_id)
        if existing is not None:
            log.info("release %s already staged by this run: reused, no budget spent again", release_id)
            return existing
        computed = compute_release(conn, spec, schema, request, release_id, app_conn=app_conn)
        published = [c for c in computed.cells if computed.result.status[c.key] == PUBLISHED]
        empty_reason = None
        if not computed.cells:
            empty_reason = "no calls in the period"
        elif not published:
            empty_reason = "every cell fails the thresholds, even generalised: too little data in the period"
        version_row = conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM governance.insights_releases WHERE period_start = %s AND period_end = %s",
            (request["period_start"], request["period_end"]),
        ).fetchone()
        version = int(version_row[0]) if version_row else 1
        from psycopg.types.json import Jsonb

        conn.execute(
            """INSERT INTO governance.insights_releases (release_id, release_name, run_id, period_start, period_end, version,
                   k_businesses, k_callers, dominance_share, epsilon, delta, status, empty_reason, report)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'staged', %s, %s)""",
            (release_id, spec.release, run_id, request["period_start"], request["period_end"], version,
             request["k_businesses"], request["k_callers"], request["dominance_share"], request["epsilon"],
             request["delta"], empty_reason, Jsonb(computed.report)),
        )  # fmt: skip
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO governance.insights_release_cells (release_id, level, industry, country, period, status,"
                    " reason, {}) VALUES (%s, %s, %s, %s, %s, %s, %s, {})"
                ).format(
                    sql.SQL(", ").join(map(sql.Identifier, PUBLIC_VALUE_COLUMNS)),
                    sql.SQL(", ").join(sql.Placeholder() for _ in PUBLIC_VALUE_COLUMNS),
                ),
                [
                    (release_id, *_key_row(c.key), computed.result.status[c.key], computed.result.reasons.get(c.key),
                     *(public_values(c, computed.medians.get(c.key))[col] if computed.result.status[c.key] == PUBLISHED else None
                       for col in PUBLIC_VALUE_COLUMNS))
                    for c in computed.cells
                ],
            )  # fmt: skip
        spent = None
        if request["epsilon"] is not None:
            spend_budget(conn, release_id, _weeks(request), float(request["epsilon"]), float(request["delta"] or 0),
                         spec.privacy.epsilon_budget_per_week)  # fmt: skip
            spent = float(request["epsilon"])
    return StagedRelease(
        release_id=release_id, version=version, period_start=request["period_start"], period_end=request["period_end"],
        cells=len(computed.cells), published_cells=len(published), suppressed_cells=len(computed.cells) - len(published),
        empty_reason=empty_reason, epsilon_spent=spent, reused=False,
    )  # fmt: skip
