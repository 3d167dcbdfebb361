"""Differential privacy for a release, through OpenDP, and its budget ledger.

Privacy unit: **one business in one ISO week**, contributing at most
``max_calls_per_business_week`` calls, ``max_messages_per_business_week`` messages and
``max_appointments_per_business_week`` appointments, each
call's duration clamped to ``max_duration_s`` (the SQL keeps the first ones by id). That unit's
data reaches exactly one cell of each of the lattice's grouping sets per time level, so the L1
sensitivity of each measured vector is its per-unit bound times the number of cells a unit
reaches. ``epsilon`` is split evenly over six measurements (the outcome counts, after-hours
calls, the clamped duration sum, messages, appointments, businesses), each a Laplace mechanism made with
OpenDP; their sum is what the release spends on every week it covers (parallel composition
across weeks: a unit lives in one week). Cells whose noisy call count (the sum of the five noisy
outcome counts) is below a noise-aware threshold (the per-unit bound plus
``5 * scale * ln(5 * cells_per_unit / (2 * delta))``, and at least ``k_callers``) or whose noisy
business count is below ``k_businesses`` are dropped, so a cell that one unit alone makes appear
is published with probability at most ``delta`` in all; the rest is post-processing.

The exact rules still apply on top (``governance.anonymisation.release.compute_release``): the
k thresholds, the dominance rule and complementary suppression run on the true, unbounded counts,
with the cells below the noise-aware threshold as further primary suppressions, and only then are
the noisy values of the cells left published released. The ``(epsilon, delta)`` guarantee covers
the values and the noise-aware threshold; which cells the exact rules suppress depends on the true
counts, exactly as in a release without differential privacy (what that pattern can disclose is
what complementary suppression already bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from governance.anonymisation.cells import GROUPING_SETS, TIME_LEVELS_N, Cell
from governance.anonymisation.spec import PrivacyBounds

MEASUREMENTS = 6
CELLS_PER_UNIT = len(GROUPING_SETS) * TIME_LEVELS_N
OUTCOMES = 5  # noisy counts a cell's calls add up (governance.anonymisation.spec.CALL_OUTCOMES)


class BudgetExceeded(RuntimeError):
    """The release would spend more epsilon on a week than its budget allows."""


@dataclass(frozen=True)
class NoisePlan:
    epsilon: float
    delta: float
    scales: dict[str, float]
    calls_threshold: float


def _measurement(sensitivity: int, epsilon_part: float) -> Any:
    """An OpenDP Laplace measurement over a vector of integer counts with the given L1
    sensitivity, calibrated so that it spends exactly ``epsilon_part`` (checked by its map)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    # 64-bit counts: a duration sum over a quarter passes 2**31 seconds.
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    scale = sensitivity / epsilon_part
    measurement = space >> dp.m.then_laplace(scale=scale)
    spent = measurement.map(sensitivity)
    if spent > epsilon_part * (1 + 1e-9):
        raise BudgetExceeded(f"OpenDP reports {spent} for a measurement given {epsilon_part}")
    return measurement


def noise_plan(bounds: PrivacyBounds, epsilon: float, delta: float, k_callers: int) -> NoisePlan:
    part = epsilon / MEASUREMENTS
    sens = {
        "outcomes": bounds.max_calls_per_business_week * CELLS_PER_UNIT,
        "after_hours": bounds.max_calls_per_business_week * CELLS_PER_UNIT,
        "duration_sum": bounds.max_calls_per_business_week * bounds.max_duration_s * CELLS_PER_UNIT,
        "messages": bounds.max_messages_per_business_week * CELLS_PER_UNIT,
        "appointments": bounds.max_appointments_per_business_week * CELLS_PER_UNIT,
        "businesses": CELLS_PER_UNIT,
    }
    scales = {name: s / part for name, s in sens.items()}
    # A cell's noisy calls are the sum of its outcomes' noisy counts: by a union bound, each noise
    # stays below scale * ln(n / (2 delta')) but with probability delta' in all, and a unit reaches
    # CELLS_PER_UNIT cells, so delta' = delta / CELLS_PER_UNIT keeps the release's total to delta.
    n = OUTCOMES
    per_cell_delta = delta / CELLS_PER_UNIT
    threshold = max(
        float(k_callers),
        bounds.max_calls_per_business_week + n * scales["outcomes"] * math.log(n / (2 * per_cell_delta)),
    )
    return NoisePlan(epsilon=epsilon, delta=delta, scales=scales, calls_threshold=threshold)


def add_noise(cells: list[Cell], bounds: PrivacyBounds, plan: NoisePlan, outcomes: tuple[str, ...]) -> list[Cell]:
    """The cells with calibrated noise on every count (calls = sum of the noisy outcome counts)."""
    if not cells:
        return []
    part = plan.epsilon / MEASUREMENTS
    sens = {name: round(scale * part) for name, scale in plan.scales.items()}

    def noisy(values: list[float], name: str) -> list[int]:
        return list(_measurement(sens[name], part)([int(round(v)) for v in values]))

    outcome_vector = [getattr(c, o) for c in cells for o in outcomes]
    noisy_outcomes = noisy(outcome_vector, "outcomes")
    noisy_after = noisy([c.after_hours for c in cells], "after_hours")
    noisy_duration = noisy([c.duration_sum for c in cells], "duration_sum")
    noisy_messages = noisy([c.messages for c in cells], "messages")
    noisy_appointments = noisy([c.appointments for c in cells], "appointments")
    noisy_businesses = noisy([c.businesses for c in cells], "businesses")
    out = []
    n = len(outcomes)
    for i, cell in enumerate(cells):
        per_outcome = {o: float(max(noisy_outcomes[i * n + j], 0)) for j, o in enumerate(outcomes)}
        out.append(
            cell.with_values(
                calls=sum(per_outcome.values()), **per_outcome, after_hours=float(max(noisy_after[i], 0)),
                duration_sum=float(max(noisy_duration[i], 0)), messages=float(max(noisy_messages[i], 0)),
                appointments=float(max(noisy_appointments[i], 0)),
                businesses=float(max(noisy_businesses[i], 0)), callers=0.0, top_business_calls=0.0,
            )  # fmt: skip
        )
    return out


def budget_spent(conn: Any, week_starts: list[Any]) -> dict[Any, float]:
    rows = conn.execute(
        "SELECT week_start, sum(epsilon) FROM governance.insights_budget_spends WHERE week_start = ANY(%s) GROUP BY 1",
        (week_starts,),
    ).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def spend_budget(conn: Any, release_id: str, week_starts: list[Any], epsilon: float, delta: float, budget: float) -> dict[str, float]:
    """Record ``epsilon`` on every week in the caller's transaction, or raise
    :class:`BudgetExceeded` naming the week. Weeks are locked (advisory, per week) so two
    releases cannot both pass the check. Returns the total spent per week afterwards."""
    for week in sorted(week_starts):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('insights_budget'), %s)", (week.toordinal(),))
    spent = budget_spent(conn, week_starts)
    for week in sorted(week_starts):
        if spent.get(week, 0.0) + epsilon > budget + 1e-12:
            raise BudgetExceeded(
                f"the release would spend epsilon {epsilon:g} on the week of {week.isoformat()}, which has "
                f"{spent.get(week, 0.0):g} of its budget {budget:g} spent already: choose a smaller epsilon or release without it"
            )
    for week in week_starts:
        conn.execute(
            "INSERT INTO governance.insights_budget_spends (release_id, week_start, epsilon, delta) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (release_id, week_start) DO NOTHING",
            (release_id, week, epsilon, delta),
        )
    return {w.isoformat(): spent.get(w, 0.0) + epsilon for w in week_starts}
