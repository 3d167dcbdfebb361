"""The independent check a release passes before anything leaves (any failure blocks it).

* **Great Expectations** over the table exactly as it would be published: only the spec's public
  columns exist, no value looks like an e-mail address or a phone number, labels come from the
  declared hierarchies, and every cell's published business count meets ``k_businesses``.
* **Thresholds recomputed from the raw tables** (without differential privacy) by a separate,
  plain query (calls per business, caller and week, labelled at every level by a cross join, not
  the release's grouping sets): each published cell has at least ``k_businesses`` distinct businesses and ``k_callers``
  distinct callers, and no business above the dominance share.
* **pyCANON** computes the k-anonymity of the business-level records (one per business and
  published cell, quasi-identifiers generalised to the cell's level): at least ``k_businesses``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql

from governance.anonymisation.spec import GEO_LEVELS, INDUSTRY_LEVELS, TIME_LEVELS, ReleaseSpec
from governance.expectations import ephemeral_context, load

log = logging.getLogger(__name__)

INTERNAL_COLUMNS = ("status", "reason")
EMAIL_PATTERN = r"[^@\s]+@[^@\s]+\.[^@\s]+"
PHONE_PATTERN = r"\+?\d[\d\s().-]{6,}\d"


class ReleaseVerificationFailed(RuntimeError):
    """The release failed its independent check: nothing was published."""


@dataclass
class VerificationOutcome:
    success: bool
    failures: list[str] = field(default_factory=list)
    k_anonymity: dict[str, int] = field(default_factory=dict)
    cells_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def release_frame(conn: Any, release_id: str) -> Any:
    """The release as it would be published: its published cells, every stored column but the
    internal ones (so a column added to the staging table shows up here)."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute("SELECT * FROM governance.insights_release_cells WHERE release_id = %s AND status = 'published'"
                    " ORDER BY level, industry, country, period", (release_id,))  # fmt: skip
        names = [d.name for d in cur.description or []]
        frame = pd.DataFrame(cur.fetchall(), columns=names)
    return frame.drop(columns=[c for c in INTERNAL_COLUMNS if c in frame.columns])


def _great_expectations(frame: Any, spec: ReleaseSpec, k_businesses: int) -> list[str]:
    gx = load()
    context = ephemeral_context()
    asset = context.data_sources.add_pandas(name="insights_release").add_dataframe_asset(name="release")
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="insights_release_is_public"))
    e = gx.expectations
    suite.add_expectation(e.ExpectTableColumnsToMatchSet(column_set=list(spec.public_columns), exact_match=True))
    levels = [f"{i}/{g}/{t}" for i in INDUSTRY_LEVELS for g in GEO_LEVELS for t in TIME_LEVELS]
    industries = sorted({*spec.sectors, *spec.sectors.values(), "other"})
    geos = sorted({*spec.regions, *spec.regions.values(), "global", "other"})
    # Every text column but the generated release id (whose date looks like digits of a phone) and
    # the labels checked against their value sets below.
    text_columns = [c for c in frame.columns if c not in ("release_id", "level", "industry", "country")
                    and (frame[c].dtype == object or str(frame[c].dtype).startswith("str"))]  # fmt: skip
    for column in text_columns:
        for pattern in (EMAIL_PATTERN, PHONE_PATTERN):
            suite.add_expectation(e.ExpectColumnValuesToNotMatchRegex(column=column, regex=pattern))
    if "level" in frame.columns:
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(column="level", value_set=levels))
    if "industry" in frame.columns:
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(column="industry", value_set=industries))
    if "country" in frame.columns:
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(column="country", value_set=geos))
    if "businesses" in frame.columns:
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column="businesses", min_value=k_businesses))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name="insights_release", data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame})
    failures = []
    for item in result.results:
        if not item.success:
            config = item.expectation_config
            kwargs = {k: v for k, v in config.kwargs.items() if k in ("column", "regex")}
            detail = ""
            if config.type == "expect_table_columns_to_match_set":
                observed = set(item.result.get("observed_value") or [])
                detail = f": not public: {sorted(observed - set(spec.public_columns))}, missing: {sorted(set(spec.public_columns) - observed)}"
            failures.append(f"{config.type} {kwargs}{detail}".strip())
    return failures


def _recount(conn: Any, spec: ReleaseSpec, schema: str, frame: Any, start: Any, end_exclusive: Any) -> list[tuple[Any, ...]]:
    """Per published cell, from the raw rows: distinct businesses, distinct callers, calls, the
    largest business's calls; and one row per business and cell (for pyCANON)."""
    c, b = spec.calls, spec.businesses
    ident = sql.Identifier
    query = sql.SQL(
        """
WITH published AS (
    SELECT * FROM unnest(%(levels)s::text[], %(industries)s::text[], %(countries)s::text[], %(periods)s::text[])
        AS p (level, industry, country, period)
), per_caller_week AS (
    -- one row per business, caller and ISO week (what the labels and the distinct counts need)
    SELECT x.{c_business} AS business_id, x.{c_caller} AS caller_id,
           date_trunc('week', x.{c_time} AT TIME ZONE 'UTC') AS wk, count(*) AS calls
    FROM {calls} x
    WHERE x.{c_time} >= %(start)s AND x.{c_time} < %(end)s
    GROUP BY 1, 2, 3
), labelled AS (
    SELECT w.business_id, w.caller_id, w.calls,
           il || '/' || gl || '/' || tl AS level,
           CASE il WHEN 'industry' THEN bz.{b_industry} ELSE COALESCE(%(sectors)s::jsonb ->> bz.{b_industry}, 'other') END AS industry,
           CASE gl WHEN 'country' THEN bz.{b_country}::text
                   WHEN 'region' THEN COALESCE(%(regions)s::jsonb ->> bz.{b_country}::text, 'other') ELSE 'global' END AS country,
           CASE tl WHEN 'week' THEN to_char(w.wk, 'IYYY-"W"IW')
                   WHEN 'month' THEN to_char(w.wk + interval '3 days', 'YYYY-MM')
                   ELSE to_char(w.wk + interval '3 days', 'YYYY-"Q"Q') END AS period
    FROM per_caller_week w JOIN {businesses} bz ON bz.{b_key} = w.business_id
    CROSS JOIN (VALUES ('industry'), ('sector')) i (il)
    CROSS JOIN (VALUES ('country'), ('region'), ('global')) g (gl)
    CROSS JOIN (VALUES ('week'), ('month'), ('quarter')) t (tl)
), in_release AS (
    SELECT l.* FROM labelled l JOIN published p USING (level, industry, country, period)
), per_business AS (
    SELECT level, industry, country, period, business_id, sum(calls) AS calls FROM in_release GROUP BY 1, 2, 3, 4, 5
), tops AS (
    SELECT level, industry, country, period, max(calls) AS top FROM per_business GROUP BY 1, 2, 3, 4
), counted AS (
    SELECT level, industry, country, period, count(DISTINCT business_id) AS businesses,
           count(DISTINCT caller_id) AS callers, sum(calls) AS calls
    FROM in_release GROUP BY 1, 2, 3, 4
)
SELECT level, industry, country, period, businesses, callers, calls, top
FROM counted JOIN tops USING (level, industry, country, period)
"""
    ).format(
        c_business=ident(c.business), c_caller=ident(c.caller), c_time=ident(c.time), b_industry=ident(b.industry),
        b_country=ident(b.country), calls=ident(schema, c.table), businesses=ident(schema, b.table), b_key=ident(b.key),
    )  # fmt: skip
    import json

    params = {"levels": list(frame["level"]), "industries": list(frame["industry"]), "countries": list(frame["country"]),
              "periods": list(frame["period"]), "sectors": json.dumps(spec.sectors), "regions": json.dumps(spec.regions),
              "start": start, "end": end_exclusive}  # fmt: skip
    return list(conn.execute(query, params).fetchall())


def _pycanon_k(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """k-anonymity per level of the business-level records (each cell's business count expanded
    to that many records with the cell's generalised quasi-identifiers)."""
    import pandas as pd
    from pycanon import anonymity

    records = pd.DataFrame(
        [(r[0], r[1], r[2], r[3]) for r in rows for _ in range(int(r[4]))],
        columns=["level", "industry", "country", "period"],
    )
    out: dict[str, int] = {}
    for level, group in records.groupby("level"):
        out[str(level)] = int(anonymity.k_anonymity(group.drop(columns=["level"]).reset_index(drop=True),
                                                    ["industry", "country", "period"]))  # fmt: skip
    return out


def verify_release(
    conn: Any, spec: ReleaseSpec, schema: str, release_id: str, *, app_conn: Any | None = None
) -> VerificationOutcome:
    """Run every check on the staged release ``release_id`` (raw rows read through ``app_conn``,
    default ``conn``); record the outcome on the release (``verified`` or ``blocked``) and return
    it. Does not raise: the caller decides."""
    from datetime import timedelta

    row = conn.execute(
        "SELECT period_start, period_end, k_businesses, k_callers, dominance_share, epsilon FROM governance.insights_releases"
        " WHERE release_id = %s",
        (release_id,),
    ).fetchone()
    if row is None:
        raise ReleaseVerificationFailed(f"no staged release {release_id}")
    start, end, k_businesses, k_callers, dominance, _epsilon = row
    frame = release_frame(conn, release_id)
    outcome = VerificationOutcome(success=True, cells_checked=len(frame))
    outcome.failures.extend(_great_expectations(frame, spec, k_businesses) if len(frame) else [])
    # Under differential privacy too: the exact thresholds hold for the true counts of every cell.
    if len(frame):
        rows = _recount(app_conn or conn, spec, schema, frame, start, end + timedelta(days=1))
        with_median = set()
        if "median_duration_s" in frame.columns:
            released = frame[frame["median_duration_s"].notna()]
            with_median = set(zip(released["level"], released["industry"], released["country"], released["period"], strict=True))
        for level, industry, country, period, businesses, callers, calls, top in rows:
            where = f"{level} {industry}/{country}/{period}"
            if (level, industry, country, period) in with_median and (
                calls < spec.median.min_calls or callers < spec.median.min_callers_factor * k_callers
            ):
                outcome.failures.append(f"{where}: a median over {calls} calls from {callers} callers breaks the median rule")
            if businesses < k_businesses:
                outcome.failures.append(f"{where}: {businesses} businesses, fewer than {k_businesses}")
            if callers < k_callers:
                outcome.failures.append(f"{where}: {callers} callers, fewer than {k_callers}")
            if calls and top / calls > dominance:
                outcome.failures.append(f"{where}: one business has {top / calls:.0%} of the calls")
        if len(rows) != len(frame):
            outcome.failures.append(f"{len(frame)} published cells but {len(rows)} found in the raw data")
        outcome.k_anonymity = _pycanon_k(rows)
        for level, k in outcome.k_anonymity.items():
            if k < k_businesses:
                outcome.failures.append(f"pyCANON: level {level} is only {k}-anonymous (need {k_businesses})")
    outcome.success = not outcome.failures
    from psycopg.types.json import Jsonb

    conn.execute(
        "UPDATE governance.insights_releases SET status = %s, report = report || jsonb_build_object('verification', %s::jsonb)"
        " WHERE release_id = %s AND status IN ('staged', 'verified', 'blocked')",
        ("verified" if outcome.success else "blocked", Jsonb(outcome.as_dict()), release_id),
    )
    if not outcome.success:
        log.error("release %s blocked: %s", release_id, "; ".join(outcome.failures[:20]))
    return outcome


def email_or_phone(value: str) -> bool:
    return bool(re.search(EMAIL_PATTERN, value) or re.search(PHONE_PATTERN, value))
