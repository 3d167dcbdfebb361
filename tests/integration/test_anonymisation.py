"""aggregate_anonymisation's disclosure control against the real PostgreSQL, on small crafted data
(one ISO week, 2026-W45): the aggregates are computed in the database, a cell of 4 businesses and a
cell dominated by one business are never published, a suppressed cell cannot be recovered from the
published table (checked by an independent linear-programming solver over hand-written
hierarchy sums, not by the code that suppressed it), a later release of the same period keeps
earlier suppressions, and the differential-privacy budget is spent once per release and refused
beyond its limit."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest

from governance.anonymisation.privacy import BudgetExceeded
from governance.anonymisation.release import ReleaseInputError, check_release_input, stage_release
from governance.anonymisation.spec import load_release_spec
from governance.config import SQL_DIR
from governance.migrations import migrate

pytestmark = [pytest.mark.slow(seconds=60), pytest.mark.integration]

WEEK = "2026-W45"
MONDAY = datetime(2026, 11, 2, 10, tzinfo=UTC)  # 10:00 UTC on a Monday: business hours
NEXT_MONDAY = datetime(2026, 11, 9, 10, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
# (industry, country) -> calls per business (one entry per business); each business has 3 callers.
PLANTED: dict[tuple[str, str], list[int]] = {
    ("dental clinic", "US"): [6, 6, 6, 6, 6, 6],
    ("dental clinic", "MX"): [5, 5, 5, 5, 5, 5, 5],
    ("dental clinic", "CA"): [6, 6, 6, 6],  # 4 businesses: below k_businesses = 5
    ("law firm", "GB"): [100, 5, 5, 5, 5, 5],  # one business holds 80% of the calls
    ("law firm", "DE"): [6, 6, 6, 6, 6, 6],
    ("law firm", "FR"): [7, 7, 7, 7, 7, 7],
    ("accounting", "DE"): [6, 6, 6, 6, 6],
    ("accounting", "FR"): [6, 6, 6, 6, 6],
}
# Appointments booked per business (from the appointments table, not the calls' outcome column):
# 2 for each accounting firm, none elsewhere, and one more per firm booked the week after.
APPOINTMENTS = {"accounting": 2}
# Hand-written hierarchies of the planted labels (include/insights_release.yaml says the same).
SECTOR = {"dental clinic": "health", "law firm": "professional services", "accounting": "professional services"}
REGION = {"US": "Americas", "MX": "Americas", "CA": "Americas", "GB": "Europe", "DE": "Europe", "FR": "Europe"}


def plant(conn: psycopg.Connection[Any]) -> None:
    """The planted businesses, callers and calls (one message per call) and appointments."""
    business = caller = call = message = appointment = 0
    for (industry, country), per_business in PLANTED.items():
        for calls in per_business:
            business += 1
            conn.execute("INSERT INTO app.businesses VALUES (%s, %s, %s, %s, %s)",
                         (business, f"b{business}", industry, country, MONDAY))  # fmt: skip
            callers = []
            for _ in range(3):
                caller += 1
                callers.append(caller)
                conn.execute("INSERT INTO app.callers (id, business_id, phone, first_seen_at) VALUES (%s, %s, %s, %s)",
                             (caller, business, f"+1555000{caller:04d}", MONDAY))  # fmt: skip
            for n in range(calls):
                call += 1
                outcome = ("answered", "voicemail", "transferred", "missed", "booked")[n % 5]
                conn.execute(
                    "INSERT INTO app.calls (id, business_id, caller_id, started_at, duration_s, outcome) VALUES (%s, %s, %s, %s, %s, %s)",
                    (call, business, callers[n % 3], MONDAY, 60 + n, outcome),
                )
                message += 1
                conn.execute(
                    "INSERT INTO app.messages (id, business_id, channel, direction, body, sent_at) VALUES (%s, %s, 'sms', 'inbound', 'x', %s)",
                    (message, business, MONDAY),
                )
            for booked_at in [MONDAY] * APPOINTMENTS.get(industry, 0) + [NEXT_MONDAY] * (industry in APPOINTMENTS):
                appointment += 1
                conn.execute("INSERT INTO app.appointments (id, business_id, caller_id, scheduled_for, created_at)"
                             " VALUES (%s, %s, %s, %s, %s)", (appointment, business, callers[0], NEXT_MONDAY, booked_at))  # fmt: skip


@pytest.fixture
def planted_db(make_db: Callable[[str], str]) -> Iterator[str]:
    url = make_db("anonymisation")
    with psycopg.connect(url) as conn:
        conn.execute((SQL_DIR / "app_schema.sql").read_text())
        plant(conn)
    migrate(url)
    yield url


def request(**params: Any) -> Any:
    return check_release_input({"period_start": "2026-11-02", "period_end": "2026-11-08", **params},
                               spec=load_release_spec(), logical_date=NOW, now=NOW)  # fmt: skip


def staged(url: str, release_id: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT level, industry, country, period, status, calls, businesses FROM governance.insights_release_cells WHERE release_id = %s",
            (release_id,),
        ).fetchall()
    return {r[:4]: {"status": r[4], "calls": r[5], "businesses": r[6]} for r in rows}


def published_calls(cells: dict[tuple[str, str, str, str], dict[str, Any]]) -> dict[tuple[str, str, str, str], float]:
    return {k: v["calls"] for k, v in cells.items() if v["status"] == "published"}


def recoverable(published: dict[tuple[str, str, str, str], float]) -> dict[tuple[str, str, str, str], tuple[float, float]]:
    """An attacker's solver: every cell of the lattice over the planted labels not published is
    unknown (>= 0); each hierarchy sum (country -> region -> global, industry -> sector, week ->
    month -> quarter) is an equation. Returns the [min, max] of calls of each unknown cell that
    the published table pins to a single positive value (a combination nobody is in, pinned at 0,
    discloses no business: empty cells are not protected)."""
    from scipy.optimize import linprog

    industries = {("industry", i) for i in SECTOR} | {("sector", s) for s in SECTOR.values()}
    geos = {("country", c) for c in REGION} | {("region", r) for r in REGION.values()} | {("global", "global")}
    times = {("week", WEEK), ("month", "2026-11"), ("quarter", "2026-Q4")}
    cells = [(f"{il}/{gl}/{tl}", i, g, p) for (il, i), (gl, g), (tl, p) in itertools.product(industries, geos, times)]
    unknown = [c for c in cells if c not in published]
    index = {c: n for n, c in enumerate(unknown)}

    def parent_of(cell: tuple[str, str, str, str], dim: str) -> tuple[str, str, str, str] | None:
        (il, gl, tl), i, g, p = cell[0].split("/"), cell[1], cell[2], cell[3]
        if dim == "industry" and il == "industry":
            return (f"sector/{gl}/{tl}", SECTOR[i], g, p)
        if dim == "geo" and gl != "global":
            return (f"{il}/{'region' if gl == 'country' else 'global'}/{tl}", i, REGION[g] if gl == "country" else "global", p)
        if dim == "time" and tl != "quarter":
            return (f"{il}/{gl}/{'month' if tl == 'week' else 'quarter'}", i, g, "2026-11" if tl == "week" else "2026-Q4")
        return None

    equations: dict[tuple[str, tuple[str, str, str, str]], list[tuple[str, str, str, str]]] = {}
    for cell, dim in itertools.product(cells, ("industry", "geo", "time")):
        parent = parent_of(cell, dim)
        if parent is not None:
            equations.setdefault((dim, parent), []).append(cell)
    a_eq, b_eq = [], []
    for (_, parent), children in equations.items():
        row = [0.0] * len(unknown)
        rhs = 0.0
        for cell, sign in [(parent, 1.0), *((c, -1.0) for c in children)]:
            if cell in index:
                row[index[cell]] += sign
            else:
                rhs -= sign * published[cell]
        if any(row):
            a_eq.append(row)
            b_eq.append(rhs)
    pinned = {}
    for cell, n in index.items():
        objective = [0.0] * len(unknown)
        bounds = []
        for sign in (1.0, -1.0):
            objective[n] = sign
            result = linprog(objective, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
            assert result.status in (0, 3), result.message  # 3: unbounded above
            bounds.append(sign * result.fun if result.status == 0 else float("inf"))
        if bounds[1] - bounds[0] < 0.5 and bounds[1] >= 0.5:  # pinned to a positive count
            pinned[cell] = (bounds[0], bounds[1])
    return pinned


def test_small_and_dominated_cells_are_suppressed_and_no_suppressed_cell_is_recoverable_by_subtraction(planted_db: str) -> None:
    with psycopg.connect(planted_db) as conn:
        release = stage_release(conn, load_release_spec(), "app", request(), run_id="run-1")
    cells = staged(planted_db, release["release_id"])
    finest = "industry/country/week"
    # The aggregates are the planted ones (computed in PostgreSQL): 5 businesses x 6 calls.
    assert cells[(finest, "accounting", "DE", WEEK)] == {"status": "published", "calls": 30, "businesses": 5}
    assert cells[(finest, "dental clinic", "CA", WEEK)]["status"] == "suppressed_primary"  # 4 businesses
    assert cells[(finest, "law firm", "GB", WEEK)]["status"] == "suppressed_primary"  # dominated
    # Generalised: the 4 Canadian clinics are published inside the Americas (with US and MX).
    americas = cells[("industry/region/week", "dental clinic", "Americas", WEEK)]
    assert americas == {"status": "published", "calls": 36 + 35 + 24, "businesses": 17}
    # Complementary: a sibling of each suppressed cell is hidden too.
    assert [cells[(finest, "dental clinic", c, WEEK)]["status"] for c in ("US", "MX")].count("suppressed_secondary") == 1
    # Hiding DE beside GB is not enough: GB + DE would still be dominated by GB's big firm (100 of
    # 161 calls), so FR goes too; the Europe total (100 of 203) passes and is published.
    assert {c: cells[(finest, "law firm", c, WEEK)]["status"] for c in ("DE", "FR")} == {
        "DE": "suppressed_secondary", "FR": "suppressed_secondary"}
    assert cells[("industry/region/week", "law firm", "Europe", WEEK)]["calls"] == 203
    published = published_calls(cells)
    assert all(v is not None for v in published.values())
    assert recoverable(published) == {}
    # The solver is not blind: undo the one complementary suppression among the clinics and it
    # recovers the 4 Canadian clinics' 24 calls (95 - 36 - 35).
    exposed = {**published, (finest, "dental clinic", "MX", WEEK): 35.0, (finest, "dental clinic", "US", WEEK): 36.0}
    assert recoverable(exposed)[(finest, "dental clinic", "CA", WEEK)] == pytest.approx((24.0, 24.0))


def test_the_booked_share_is_appointments_booked_per_call_from_the_appointments_table(planted_db: str) -> None:
    with psycopg.connect(planted_db) as conn:
        release = stage_release(conn, load_release_spec(), "app", request(), run_id="run-1")
        shares = dict(conn.execute(
            "SELECT industry, booked_share FROM governance.insights_release_cells WHERE release_id = %s"
            " AND level = 'industry/country/week' AND country IN ('DE', 'US') AND status = 'published'",
            (release["release_id"],)).fetchall())  # fmt: skip
    # 5 firms x 2 appointments booked in the week over 30 calls (the next week's are not counted);
    # the calls' outcome column would say 5 booked calls (1 in 6).
    assert shares == {"accounting": round(10 / 30, 4), "dental clinic": 0.0}


def planted_durations(level: str, industry: str, country: str) -> list[int]:
    """The planted durations of a cell (every period holds the one planted week)."""
    industry_level, geo_level, _ = level.split("/")
    out = []
    for (i, c), per_business in PLANTED.items():
        if (i if industry_level == "industry" else SECTOR[i]) != industry:
            continue
        if {"country": c, "region": REGION[c], "global": "global"}[geo_level] != country:
            continue
        out += [60 + n for calls in per_business for n in range(calls)]
    return out


def test_every_cell_gets_the_exact_median_of_its_durations_from_the_database(planted_db: str) -> None:
    """The SQL reads the median off a duration histogram; it is exactly the median of the rows."""
    import statistics

    from governance.anonymisation.cells import fetch_cells

    with psycopg.connect(planted_db) as conn:
        cells = fetch_cells(conn, load_release_spec(), "app", date(2026, 11, 2), date(2026, 11, 9), bounded=False)
    assert len(cells) == (8 + 3 + 3 + 6 + 2 + 2) * 3  # industry, sector x country, region, global; 3 time levels
    for cell in cells:
        assert cell.duration_median == statistics.median(planted_durations(cell.key.level, cell.key.industry, cell.key.geo)), cell.key


def test_the_median_duration_is_released_only_in_cells_with_enough_calls_and_callers_and_checked(planted_db: str) -> None:
    import statistics

    from governance.anonymisation.verify import verify_release

    spec = load_release_spec()  # median: at least 50 calls and 2 x k_callers callers, rounded to 5 s
    with psycopg.connect(planted_db) as conn:
        release = stage_release(conn, spec, "app", request(), run_id="run-1")
        rows = conn.execute(
            "SELECT level, industry, country, status, calls, median_duration_s FROM governance.insights_release_cells"
            " WHERE release_id = %s", (release["release_id"],)).fetchall()  # fmt: skip
        medians = {r[:3]: r[5] for r in rows if r[5] is not None}
        assert verify_release(conn, spec, "app", release["release_id"]).success
        conn.rollback()
    assert medians, "no cell has a median"
    for (level, industry, country, status, calls, median) in rows:
        durations = planted_durations(level, industry, country)
        if median is None:
            # Withheld from every published cell with too few calls (e.g. 5 accounting firms in DE: 30).
            assert status != "published" or calls < 50 or len(durations) < 50, (level, industry, country)
            continue
        assert status == "published" and calls >= 50
        assert median % 5 == 0 and abs(median - statistics.median(durations)) <= 2.5, (level, industry, country)
    assert medians.get(("industry/country/week", "accounting", "DE")) is None
    assert ("sector/region/week", "professional services", "Europe") in medians
    # A median forged onto a small published cell is caught by the independent recount.
    with psycopg.connect(planted_db) as conn:
        conn.execute("UPDATE governance.insights_release_cells SET median_duration_s = 62 WHERE release_id = %s"
                     " AND level = 'industry/country/week' AND industry = 'accounting' AND country = 'DE'",
                     (release["release_id"],))  # fmt: skip
        forged = verify_release(conn, spec, "app", release["release_id"])
    assert "industry/country/week accounting/DE/2026-W45: a median over 30 calls from 15 callers breaks the median rule" in forged.failures


def test_empty_combinations_are_never_published_and_stay_indistinguishable_from_suppressed_cells(planted_db: str) -> None:
    """A combination nobody is in (no accounting firm in the US, no dental clinic in GB) gets no
    row, as a suppressed cell gets none in what is published: the published table does not tell
    an empty cell from a suppressed one. Complementary suppression assumes the worst (an attacker
    who knows which combinations are empty): even then no suppressed cell is pinned."""
    with psycopg.connect(planted_db) as conn:
        release = stage_release(conn, load_release_spec(), "app", request(), run_id="run-1")
    cells = staged(planted_db, release["release_id"])
    planted = {(i, c) for i, c in PLANTED}
    finest = {(k[1], k[2]) for k in cells if k[0] == "industry/country/week"}
    assert finest == planted  # no row at all for an empty combination, published or not
    published = published_calls(cells)
    assert all(calls > 0 for calls in published.values())
    industries, countries = {i for i, _ in PLANTED}, {c for _, c in PLANTED}
    empty = {("industry/country/week", i, c, WEEK): 0.0 for i in industries for c in countries if (i, c) not in planted}
    assert ("industry/country/week", "accounting", "US", WEEK) in empty
    assert recoverable({**published, **empty}) == {}


def test_a_later_release_of_the_same_period_keeps_earlier_suppressions_and_the_union_stays_safe(planted_db: str) -> None:
    with psycopg.connect(planted_db) as conn:
        first = stage_release(conn, load_release_spec(), "app", request(), run_id="run-1")
        conn.execute("UPDATE governance.insights_releases SET status = 'published' WHERE release_id = %s", (first["release_id"],))
        conn.commit()
        second = stage_release(conn, load_release_spec(), "app", request(k_businesses=3), run_id="run-2")
    assert second["version"] == 2
    before, after = staged(planted_db, first["release_id"]), staged(planted_db, second["release_id"])
    # 4 businesses pass k = 3, but the cell was suppressed before: it stays suppressed.
    assert after[("industry/country/week", "dental clinic", "CA", WEEK)]["status"] != "published"
    union = {**published_calls(before), **published_calls(after)}
    assert recoverable(union) == {}


def test_bad_input_is_refused_with_a_message_before_anything_is_read() -> None:
    for params, message in [
        ({"k_businesses": 1}, "at least 2"),
        ({"k_callers": 0}, "at least 2"),
        ({"epsilon": 1}, "set delta too"),
        ({"epsilon": 0, "delta": 1e-6}, "epsilon must be greater than 0"),
        ({"epsilon": 1, "delta": 1.5}, "delta must be between 0 and 1"),
        ({"period_start": "2026-11-09", "period_end": "2026-11-02"}, "reversed"),
        ({"period_start": "2026-11-23", "period_end": "2026-12-03"}, "not over yet"),
    ]:
        with pytest.raises(ReleaseInputError, match=message):
            request(**params)


def budget_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT release_id, week_start, epsilon FROM governance.insights_budget_spends ORDER BY 1").fetchall()


def test_dp_releases_spend_the_week_budget_once_per_release_and_a_release_beyond_it_is_refused(planted_db: str) -> None:
    spec = load_release_spec()  # budget 2.0 per week
    with psycopg.connect(planted_db) as conn:
        first = stage_release(conn, spec, "app", request(epsilon=1.5, delta=1e-6), run_id="dp-1")
        retried = stage_release(conn, spec, "app", request(epsilon=1.5, delta=1e-6), run_id="dp-1")
    assert retried["reused"] and retried["release_id"] == first["release_id"]
    assert [(r[0], r[1].isoformat(), r[2]) for r in budget_rows(planted_db)] == [(first["release_id"], "2026-11-02", 1.5)]
    # The noisy release of the retry is the one staged first (nothing recomputed, nothing re-drawn).
    assert staged(planted_db, retried["release_id"]) == staged(planted_db, first["release_id"])
    with psycopg.connect(planted_db) as conn, pytest.raises(BudgetExceeded, match="2026-11-02"):
        stage_release(conn, spec, "app", request(epsilon=1.0, delta=1e-6), run_id="dp-2")
    with psycopg.connect(planted_db) as conn:
        refused = conn.execute("SELECT count(*) FROM governance.insights_releases WHERE run_id = 'dp-2'").fetchone()
    assert refused == (0,)  # nothing staged for the refused release
    assert len(budget_rows(planted_db)) == 1
    # Tiny data and strong noise: every cell falls below the noise-aware threshold.
    assert first["published_cells"] == 0 and first["empty_reason"]


def test_under_dp_the_exact_thresholds_dominance_rule_and_complementary_suppression_still_apply(
    planted_db: str, tmp_path: Any
) -> None:
    """With near-zero noise (a huge epsilon, bounds of 10 calls per business-week) the noise-aware
    threshold alone would publish the law firms of GB (noisy calls and businesses above it), though
    one firm holds 80% of the true calls; the DP release applies the exact rules to the true counts,
    so its cells have exactly the statuses of the release without DP."""
    import yaml

    from governance.anonymisation.cells import fetch_cells
    from governance.anonymisation.privacy import add_noise, noise_plan
    from governance.anonymisation.spec import SPEC_PATH

    raw = yaml.safe_load(SPEC_PATH.read_text())
    raw["differential_privacy"].update(max_calls_per_business_week=10, max_messages_per_business_week=10,
                                       max_appointments_per_business_week=10, epsilon_budget_per_week=1e7)  # fmt: skip
    path = tmp_path / "insights_release.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_release_spec(path)
    plan = noise_plan(spec.privacy, 6e5, 1e-6, 10)
    with psycopg.connect(planted_db) as conn:
        exact = stage_release(conn, spec, "app", request(), run_id="exact")
        dp = stage_release(conn, spec, "app", request(epsilon=6e5, delta=1e-6), run_id="dp")
        noisy_gb = conn.execute(
            "SELECT calls, businesses, median_duration_s FROM governance.insights_release_cells WHERE release_id = %s"
            " AND level = 'industry/country/week' AND industry = 'law firm' AND country = 'GB'",
            (dp["release_id"],)).fetchone()  # fmt: skip
    exact_cells, dp_cells = staged(planted_db, exact["release_id"]), staged(planted_db, dp["release_id"])
    assert {k: v["status"] for k, v in dp_cells.items()} == {k: v["status"] for k, v in exact_cells.items()}
    finest = "industry/country/week"
    assert dp_cells[(finest, "law firm", "GB", WEEK)]["status"] == "suppressed_primary"  # dominated, true counts
    assert [dp_cells[(finest, "dental clinic", c, WEEK)]["status"] for c in ("US", "MX")].count("suppressed_secondary") == 1
    # ... while the noise-aware threshold alone would have let it through (its noisy values are
    # not stored: drawn again here on its bounded counts, 10 calls per firm, 35 in all).
    assert noisy_gb == (None, None, None)
    with psycopg.connect(planted_db) as conn:
        bounded = fetch_cells(conn, spec, "app", date(2026, 11, 2), date(2026, 11, 9), bounded=True)
    gb = next(c for c in add_noise(bounded, spec.privacy, plan, spec.calls.outcomes)
              if (c.key.level, c.key.industry, c.key.geo) == (finest, "law firm", "GB"))  # fmt: skip
    assert gb.calls >= plan.calls_threshold and gb.businesses >= 5
    # Published values are the noisy ones, drawn on bounded contributions (10 calls per firm).
    published = [k for k, v in dp_cells.items() if v["status"] == "published"]
    assert published and dp_cells[(finest, "accounting", "DE", WEEK)]["calls"] == pytest.approx(5 * 6, abs=1)
    with psycopg.connect(planted_db) as conn:
        medians = conn.execute("SELECT count(*) FROM governance.insights_release_cells WHERE release_id = %s"
                               " AND median_duration_s IS NOT NULL", (dp["release_id"],)).fetchone()  # fmt: skip
    assert medians == (0,)  # no median under DP


def test_verification_passes_a_safe_release_and_blocks_one_with_a_planted_free_text_column(planted_db: str) -> None:
    from governance.anonymisation.verify import verify_release

    spec = load_release_spec()
    with psycopg.connect(planted_db) as conn:
        release = stage_release(conn, spec, "app", request(), run_id="run-1")
        passed = verify_release(conn, spec, "app", release["release_id"])
        conn.commit()
        assert passed.success, passed.failures
        assert passed.k_anonymity["industry/country/week"] >= 5 and len(passed.k_anonymity) >= 6
        # A transcript excerpt slips into the staged table: the release is blocked, naming the column.
        conn.execute("ALTER TABLE governance.insights_release_cells ADD COLUMN caller_note text")
        conn.execute("UPDATE governance.insights_release_cells SET caller_note = 'call me back on +1 555 000 1234'")
        blocked = verify_release(conn, spec, "app", release["release_id"])
        conn.commit()
        status = conn.execute("SELECT status FROM governance.insights_releases WHERE release_id = %s",
                              (release["release_id"],)).fetchone()  # fmt: skip
    assert not blocked.success and status == ("blocked",)
    assert any("caller_note" in f and "not public" in f for f in blocked.failures), blocked.failures
    assert any("not_match_regex" in f and "caller_note" in f for f in blocked.failures), blocked.failures
    # A small cell let through by a fault (4 Canadian clinics published with a forged count of 5):
    # the raw recount and pyCANON both catch it.
    with psycopg.connect(planted_db) as conn:
        conn.execute("ALTER TABLE governance.insights_release_cells DROP COLUMN caller_note")
        conn.execute(
            "UPDATE governance.insights_release_cells SET status = 'published', calls = 24, businesses = 5"
            " WHERE level = 'industry/country/week' AND industry = 'dental clinic' AND country = 'CA'"
        )
        forged = verify_release(conn, spec, "app", release["release_id"])
    assert "industry/country/week dental clinic/CA/2026-W45: 4 businesses, fewer than 5" in forged.failures
    assert forged.k_anonymity["industry/country/week"] == 4


def test_a_period_with_too_little_data_publishes_an_empty_release_whose_report_says_why(
    planted_db: str, s3: Any, make_bucket: Callable[[str], str]
) -> None:
    from governance.anonymisation.publish import publish_release
    from governance.anonymisation.verify import verify_release

    spec = load_release_spec()
    bucket = make_bucket("insights")
    with psycopg.connect(planted_db) as conn:
        conn.execute("DELETE FROM app.calls WHERE business_id NOT IN (SELECT id FROM app.businesses WHERE country = 'CA')")
        conn.commit()
        release = stage_release(conn, spec, "app", request(), run_id="small")
        assert verify_release(conn, spec, "app", release["release_id"]).success
        conn.commit()
        published = publish_release(conn, release["release_id"], s3=s3, bucket=bucket, budget_limit=2.0)
        rows = conn.execute("SELECT count(*) FROM insights.industry_insights").fetchone()
        listed = conn.execute("SELECT cells, empty_reason FROM insights.releases").fetchall()
    assert release["cells"] > 0 and release["published_cells"] == 0  # the 4 clinics: every level fails
    assert rows == (0,) and listed == [(0, release["empty_reason"])]
    assert "too little data" in (release["empty_reason"] or "")
    report = s3.get_object(Bucket=bucket, Key=next(k for k in published["objects"] if k.endswith("report.html")))
    assert "too little data" in report["Body"].read().decode()
