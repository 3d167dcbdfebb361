"""The raw aggregates of a release, computed inside PostgreSQL.

One pass over each source table (calls, messages, appointments) groups per business and time bucket (its ISO
week, and the month and quarter of the week's Thursday) with ``GROUPING SETS``; a second
``GROUPING SETS`` over those per-business rows yields every cell of the generalisation lattice
(industry or sector, by country, region or globally, per week, month or quarter) with what the
thresholds need: distinct businesses, distinct callers (a caller row belongs to one business, so
they add up across businesses) and the largest single business's calls. Only these aggregates
leave the database.

The booked share's numerator is the appointments booked in the cell (from the appointments
table, ``appointments``), not the calls whose outcome column says booked (``booked``, kept only as
a part of the call total).

With ``bounded`` (differential privacy), each business contributes at most the spec's calls,
messages and appointments per ISO week (the first ones, by id) and each call's duration is clamped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from psycopg import sql

from governance.anonymisation.spec import ReleaseSpec

# The lattice: (industry level, geography level) pairs, for every time level.
GROUPING_SETS: tuple[tuple[str, str], ...] = (
    ("industry", "country"), ("industry", "region"), ("industry", "global"),
    ("sector", "country"), ("sector", "region"), ("sector", "global"),
)  # fmt: skip
TIME_LEVELS_N = 3
MEASURES = ("calls", "answered", "voicemail", "transferred", "missed", "booked", "duration_sum", "after_hours", "messages",
            "appointments")  # fmt: skip


@dataclass(frozen=True, order=True)
class CellKey:
    """Which cell: its generalisation level in each hierarchy and its labels."""

    industry_level: str
    geo_level: str
    time_level: str
    industry: str
    geo: str
    period: str

    @property
    def level(self) -> str:
        return f"{self.industry_level}/{self.geo_level}/{self.time_level}"


@dataclass
class Cell:
    """A cell's aggregates. ``businesses`` and ``callers`` are distinct counts; ``top_business_calls``
    is the largest number of calls one business contributes."""

    key: CellKey
    calls: float
    answered: float
    voicemail: float
    transferred: float
    missed: float
    booked: float
    duration_sum: float
    after_hours: float
    messages: float
    businesses: float
    callers: float
    top_business_calls: float
    appointments: float = 0.0
    # The exact median call duration (None under differential privacy); released only where
    # ``governance.anonymisation.disclosure.median_releasable`` says so.
    duration_median: float | None = None

    def with_values(self, **values: Any) -> Cell:
        return replace(self, **values)


# The median duration of every cell, exactly ``percentile_cont(0.5)`` of its calls' durations, from
# a histogram: the calls' durations counted per finest cell (one hash aggregation of the call rows),
# rolled up to the 18 grouping sets, and the median read off the cumulative counts (the mean of the
# values at positions floor((n-1)/2)+1 and ceil((n-1)/2)+1). Far cheaper than percentile_cont over
# 18 grouping sets, which sorts the call rows once per rollup.
MEDIANS = sql.SQL(
    """, duration_histogram AS (
    SELECT lc.week, lc.month, lc.quarter, bz.{b_industry} AS industry, bz.{b_country}::text AS country,
           COALESCE(%(sectors)s::jsonb ->> bz.{b_industry}, 'other') AS sector,
           COALESCE(%(regions)s::jsonb ->> bz.{b_country}::text, 'other') AS region, lc.duration_s, count(*) AS n
    FROM labelled_calls lc JOIN {businesses} bz ON bz.{b_key} = lc.business_id
    WHERE lc.duration_s IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
), cell_histogram AS (
    SELECT CASE WHEN GROUPING(industry) = 0 THEN 'industry' ELSE 'sector' END AS industry_level,
           CASE WHEN GROUPING(country) = 0 THEN 'country' WHEN GROUPING(region) = 0 THEN 'region' ELSE 'global' END AS geo_level,
           CASE WHEN GROUPING(week) = 0 THEN 'week' WHEN GROUPING(month) = 0 THEN 'month' ELSE 'quarter' END AS time_level,
           COALESCE(industry, sector) AS industry_label, COALESCE(country, region, 'global') AS geo,
           COALESCE(week, month, quarter) AS period, duration_s, sum(n) AS n
    FROM duration_histogram
    GROUP BY duration_s, GROUPING SETS (
        (week, industry, country), (week, industry, region), (week, industry),
        (week, sector, country), (week, sector, region), (week, sector),
        (month, industry, country), (month, industry, region), (month, industry),
        (month, sector, country), (month, sector, region), (month, sector),
        (quarter, industry, country), (quarter, industry, region), (quarter, industry),
        (quarter, sector, country), (quarter, sector, region), (quarter, sector))
), cumulative AS (
    SELECT *, sum(n) OVER (PARTITION BY industry_level, geo_level, time_level, industry_label, geo, period
                           ORDER BY duration_s) AS cum,
           sum(n) OVER (PARTITION BY industry_level, geo_level, time_level, industry_label, geo, period) AS total
    FROM cell_histogram
), medians AS (
    SELECT industry_level, geo_level, time_level, industry_label, geo, period,
           ((min(duration_s) FILTER (WHERE cum >= floor((total - 1) / 2.0) + 1))
            + (min(duration_s) FILTER (WHERE cum >= ceil((total - 1) / 2.0) + 1)))::float8 / 2 AS duration_median
    FROM cumulative
    GROUP BY 1, 2, 3, 4, 5, 6
)"""
)


def release_cells_query(spec: ReleaseSpec, schema: str, *, bounded: bool) -> sql.Composed:
    """The statement (parameters ``start``, ``end``, ``sectors``, ``regions``, ``opens``,
    ``closes``, ``max_calls``, ``max_messages``, ``max_appointments``, ``max_duration``)."""
    c, m, a, b = spec.calls, spec.messages, spec.appointments, spec.businesses
    ident = sql.Identifier
    outcome_counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE outcome = {}) AS {}").format(sql.Literal(o), ident(o)) for o in c.outcomes
    )
    outcome_sums = sql.SQL(", ").join(sql.SQL("sum({0})::float8 AS {0}").format(ident(o)) for o in c.outcomes)
    duration = sql.SQL("LEAST({}, %(max_duration)s)").format(ident(c.duration)) if bounded else ident(c.duration)
    calls_limit = sql.SQL("WHERE rn <= %(max_calls)s") if bounded else sql.SQL("")
    messages_limit = sql.SQL("WHERE rn <= %(max_messages)s") if bounded else sql.SQL("")
    appointments_limit = sql.SQL("WHERE rn <= %(max_appointments)s") if bounded else sql.SQL("")

    def rank(business: str, time: str) -> sql.Composable:
        """The row's rank in its business-week (bounded only: unbounded, no window is needed)."""
        if not bounded:
            return sql.SQL("1")
        return sql.SQL("row_number() OVER (PARTITION BY {0}, date_trunc('week', {1} AT TIME ZONE 'UTC') ORDER BY id)").format(
            ident(business), ident(time))
    # The median duration of every cell, from the call rows (medians do not compose from
    # per-business rows); not computed under differential privacy, where it is never released.
    medians = sql.SQL("") if bounded else MEDIANS.format(
        b_industry=ident(b.industry), b_country=ident(b.country), businesses=ident(schema, b.table), b_key=ident(b.key),
    )  # fmt: skip
    median_value = sql.SQL("NULL::float8" if bounded else "m.duration_median")
    median_join = sql.SQL("") if bounded else sql.SQL(
        "LEFT JOIN medians m USING (industry_level, geo_level, time_level, industry_label, geo, period)"
    )
    return sql.SQL(
        """
WITH call_rows AS (
    SELECT {c_business} AS business_id, {c_caller} AS caller_id, {duration} AS duration_s, {c_outcome} AS outcome,
           date_trunc('week', {c_time} AT TIME ZONE 'UTC') AS wk,
           (extract(isodow FROM {c_time} AT TIME ZONE 'UTC') >= 6
            OR extract(hour FROM {c_time} AT TIME ZONE 'UTC') < %(opens)s
            OR extract(hour FROM {c_time} AT TIME ZONE 'UTC') >= %(closes)s) AS after_hours,
           {c_rn} AS rn
    FROM {calls}
    WHERE {c_time} >= %(start)s AND {c_time} < %(end)s
), labelled_calls AS (
    SELECT *, to_char(wk, 'IYYY-"W"IW') AS week, to_char(wk + interval '3 days', 'YYYY-MM') AS month,
           to_char(wk + interval '3 days', 'YYYY-"Q"Q') AS quarter FROM call_rows {calls_limit}
), calls_per_business AS (
    SELECT business_id,
           CASE WHEN GROUPING(week) = 0 THEN 'week' WHEN GROUPING(month) = 0 THEN 'month' ELSE 'quarter' END AS time_level,
           COALESCE(week, month, quarter) AS period,
           count(*) AS calls, count(DISTINCT caller_id) AS callers, {outcome_counts},
           sum(duration_s) AS duration_sum, count(*) FILTER (WHERE after_hours) AS after_hours
    FROM labelled_calls
    GROUP BY business_id, GROUPING SETS ((week), (month), (quarter))
), message_rows AS (
    SELECT {m_business} AS business_id, date_trunc('week', {m_time} AT TIME ZONE 'UTC') AS wk,
           {m_rn} AS rn
    FROM {messages}
    WHERE {m_time} >= %(start)s AND {m_time} < %(end)s
), messages_per_business AS (
    SELECT business_id,
           CASE WHEN GROUPING(week) = 0 THEN 'week' WHEN GROUPING(month) = 0 THEN 'month' ELSE 'quarter' END AS time_level,
           COALESCE(week, month, quarter) AS period, count(*) AS messages
    FROM (SELECT *, to_char(wk, 'IYYY-"W"IW') AS week, to_char(wk + interval '3 days', 'YYYY-MM') AS month,
                 to_char(wk + interval '3 days', 'YYYY-"Q"Q') AS quarter FROM message_rows {messages_limit}) x
    GROUP BY business_id, GROUPING SETS ((week), (month), (quarter))
), appointment_rows AS (
    SELECT {a_business} AS business_id, date_trunc('week', {a_time} AT TIME ZONE 'UTC') AS wk,
           {a_rn} AS rn
    FROM {appointments}
    WHERE {a_time} >= %(start)s AND {a_time} < %(end)s
), appointments_per_business AS (
    SELECT business_id,
           CASE WHEN GROUPING(week) = 0 THEN 'week' WHEN GROUPING(month) = 0 THEN 'month' ELSE 'quarter' END AS time_level,
           COALESCE(week, month, quarter) AS period, count(*) AS appointments
    FROM (SELECT *, to_char(wk, 'IYYY-"W"IW') AS week, to_char(wk + interval '3 days', 'YYYY-MM') AS month,
                 to_char(wk + interval '3 days', 'YYYY-"Q"Q') AS quarter FROM appointment_rows {appointments_limit}) x
    GROUP BY business_id, GROUPING SETS ((week), (month), (quarter))
), per_business AS (
    SELECT p.*, COALESCE(mp.messages, 0) AS messages, COALESCE(ap.appointments, 0) AS appointments,
           bz.{b_industry} AS industry, bz.{b_country}::text AS country,
           COALESCE(%(sectors)s::jsonb ->> bz.{b_industry}, 'other') AS sector,
           COALESCE(%(regions)s::jsonb ->> bz.{b_country}::text, 'other') AS region
    FROM calls_per_business p
    JOIN {businesses} bz ON bz.{b_key} = p.business_id
    LEFT JOIN messages_per_business mp USING (business_id, time_level, period)
    LEFT JOIN appointments_per_business ap USING (business_id, time_level, period)
){medians}, lattice AS (
SELECT CASE WHEN GROUPING(industry) = 0 THEN 'industry' ELSE 'sector' END AS industry_level,
       CASE WHEN GROUPING(country) = 0 THEN 'country' WHEN GROUPING(region) = 0 THEN 'region' ELSE 'global' END AS geo_level,
       time_level, COALESCE(industry, sector) AS industry_label, COALESCE(country, region, 'global') AS geo, period,
       sum(calls)::float8 AS calls, {outcome_sums}, sum(duration_sum)::float8 AS duration_sum,
       sum(after_hours)::float8 AS after_hours, sum(messages)::float8 AS messages,
       count(*)::float8 AS businesses, sum(callers)::float8 AS callers, max(calls)::float8 AS top_business_calls,
       sum(appointments)::float8 AS appointments
FROM per_business
GROUP BY time_level, period,
         GROUPING SETS ((industry, country), (industry, region), (industry), (sector, country), (sector, region), (sector))
)
SELECT l.*, {median_value} AS duration_median FROM lattice l {median_join}
ORDER BY 1, 2, 3, 4, 5, 6
"""
    ).format(
        c_business=ident(c.business), c_caller=ident(c.caller), c_outcome=ident(c.outcome), c_time=ident(c.time),
        duration=duration, calls=ident(schema, c.table), calls_limit=calls_limit, outcome_counts=outcome_counts,
        outcome_sums=outcome_sums, m_business=ident(m.business), m_time=ident(m.time), messages=ident(schema, m.table),
        messages_limit=messages_limit, a_business=ident(a.business), a_time=ident(a.time),
        appointments=ident(schema, a.table), appointments_limit=appointments_limit, medians=medians,
        median_value=median_value, median_join=median_join, c_rn=rank(c.business, c.time),
        m_rn=rank(m.business, m.time), a_rn=rank(a.business, a.time), b_industry=ident(b.industry), b_country=ident(b.country),
        businesses=ident(schema, b.table), b_key=ident(b.key),
    )  # fmt: skip


def query_parameters(spec: ReleaseSpec, start: date, end_exclusive: date) -> dict[str, Any]:
    return {
        "start": start, "end": end_exclusive, "sectors": json.dumps(spec.sectors), "regions": json.dumps(spec.regions),
        "opens": spec.opens_hour, "closes": spec.closes_hour,
        "max_calls": spec.privacy.max_calls_per_business_week,
        "max_messages": spec.privacy.max_messages_per_business_week,
        "max_appointments": spec.privacy.max_appointments_per_business_week, "max_duration": spec.privacy.max_duration_s,
    }  # fmt: skip


def fetch_cells(conn: Any, spec: ReleaseSpec, schema: str, start: date, end_exclusive: date, *, bounded: bool) -> list[Cell]:
    """Every cell of the lattice with data in ``[start, end_exclusive)``."""
    rows = conn.execute(release_cells_query(spec, schema, bounded=bounded), query_parameters(spec, start, end_exclusive)).fetchall()
    cells = []
    outcomes = spec.calls.outcomes
    for row in rows:
        key = CellKey(*(str(v) for v in row[:6]))
        values = dict(zip(("calls", *outcomes, "duration_sum", "after_hours", "messages", "businesses", "callers",
                           "top_business_calls", "appointments"), (float(v or 0) for v in row[6:-1]), strict=True))  # fmt: skip
        fields: dict[str, Any] = {k: values.get(k, 0.0) for k in Cell.__dataclass_fields__ if k not in ("key", "duration_median")}
        fields["duration_median"] = None if row[-1] is None else float(row[-1])
        cells.append(Cell(key=key, **fields))
    return cells


def time_nesting(cells: list[Cell]) -> tuple[dict[str, str], dict[str, str]]:
    """``(week -> month, month -> quarter)`` of the periods present (a week belongs to the month
    and quarter of its Thursday, as in the SQL)."""
    week_months: dict[str, str] = {}
    month_quarters: dict[str, str] = {}
    for cell in cells:
        if cell.key.time_level == "week":
            year, week = cell.key.period.split("-W")
            thursday = date.fromisocalendar(int(year), int(week), 4)
            week_months[cell.key.period] = f"{thursday.year:04d}-{thursday.month:02d}"
        elif cell.key.time_level == "month":
            year, month = cell.key.period.split("-")
            month_quarters[cell.key.period] = f"{year}-Q{(int(month) - 1) // 3 + 1}"
    return week_months, month_quarters
