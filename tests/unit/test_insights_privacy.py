"""The differential-privacy noise of insights releases (OpenDP): calibrated to the privacy unit's
sensitivity, actually drawn, and the small-cell threshold holds back a cell one unit could make."""

from __future__ import annotations

import statistics

from governance.anonymisation.cells import Cell, CellKey
from governance.anonymisation.privacy import CELLS_PER_UNIT, MEASUREMENTS, add_noise, noise_plan
from governance.anonymisation.spec import load_release_spec


def cell(n: int, calls: float) -> Cell:
    per = calls / 5
    return Cell(key=CellKey("industry", "country", "week", "law firm", f"C{n}", "2026-W45"), calls=calls, answered=per,
                voicemail=per, transferred=per, missed=per, booked=per, duration_sum=calls * 60, after_hours=calls / 10,
                messages=calls / 2, businesses=50, callers=500, top_business_calls=calls / 20)  # fmt: skip


def test_noise_is_calibrated_to_the_unit_and_drawn_for_every_count() -> None:
    bounds = load_release_spec().privacy
    plan = noise_plan(bounds, epsilon=5.0, delta=1e-6, k_callers=10)
    part = 5.0 / MEASUREMENTS
    assert plan.scales["outcomes"] == bounds.max_calls_per_business_week * CELLS_PER_UNIT / part
    assert plan.scales["businesses"] == CELLS_PER_UNIT / part
    # One business-week alone (at most its bound of calls) stays below the threshold but for delta.
    assert plan.calls_threshold > bounds.max_calls_per_business_week + 5 * plan.scales["outcomes"] * 10
    true = [cell(n, 1_000_000) for n in range(200)]
    noisy = add_noise(true, bounds, plan, ("answered", "voicemail", "transferred", "missed", "booked"))
    errors = [n.answered - t.answered for n, t in zip(noisy, true, strict=True)]
    assert len(set(errors)) > 150  # drawn afresh for each cell
    # Laplace(b) has mean absolute deviation b: the drawn noise has the planned scale.
    assert 0.7 < statistics.mean(abs(e) for e in errors) / plan.scales["outcomes"] < 1.3
    assert all(n.calls == n.answered + n.voicemail + n.transferred + n.missed + n.booked for n in noisy)
    assert all(n.callers == 0 and n.top_business_calls == 0 for n in noisy)  # never published under DP
