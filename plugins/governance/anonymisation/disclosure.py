"""Statistical disclosure control of a release's cells (with or without differential privacy:
under DP the same rules run on the exact counts, and the published values are the noisy ones).

* **Primary suppression**: a cell fails when it aggregates fewer than ``k_businesses`` distinct
  businesses or ``k_callers`` distinct callers, or one business contributes more than
  ``dominance_share`` of its calls. A cell suppressed in an earlier release of the same period
  stays suppressed.
* **Generalisation**: the lattice holds every cell at each level of the hierarchies (country ->
  region -> global, industry -> sector, week -> month -> quarter); a failing cell's calls are
  published only inside its coarser ancestors that pass (reported per level).
* **Complementary suppression**: every parent is the sum of its children along each hierarchy.
  Where a published parent has suppressed children, their residual (parent minus published
  children) must itself pass the thresholds (taken conservatively across time, where a business
  counts in several weeks); otherwise the smallest published sibling is suppressed too, or the
  parent when no sibling is left. Cells published by an earlier release of the period count as
  known and are never chosen. Finally an exact linear-algebra check finds any suppressed cell still
  determined by the published table (and earlier releases) and suppresses more until none is.
* **The median call duration** is one caller's real value (or the mean of two), so a stricter
  rule: only in a published cell (the thresholds and the dominance rule hold) with at least the
  spec's ``median_duration.min_calls`` calls and ``min_callers_factor`` x ``k_callers`` distinct
  callers, rounded to ``round_to_s`` seconds (:func:`median_releasable`). Medians do not add up,
  so no hierarchy sum recovers one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from governance.anonymisation.cells import Cell, CellKey
from governance.anonymisation.spec import MedianRule, ReleaseSpec, Thresholds

PUBLISHED = "published"
PRIMARY = "suppressed_primary"
SECONDARY = "suppressed_secondary"


@dataclass(frozen=True)
class Relation:
    """``parent = sum(children)`` along one hierarchy (``dimension``: industry, geo or time)."""

    dimension: str
    parent: CellKey
    children: tuple[CellKey, ...]


@dataclass
class SuppressionResult:
    status: dict[CellKey, str]
    reasons: dict[CellKey, str] = field(default_factory=dict)

    def published(self) -> list[CellKey]:
        return sorted(k for k, s in self.status.items() if s == PUBLISHED)


def failing_reason(cell: Cell, thresholds: Thresholds) -> str | None:
    """Why ``cell`` may not be published on its own, or None."""
    if cell.businesses < thresholds.k_businesses:
        return f"fewer than {thresholds.k_businesses} businesses"
    if cell.callers < thresholds.k_callers:
        return f"fewer than {thresholds.k_callers} callers"
    if cell.calls > 0 and cell.top_business_calls / cell.calls > thresholds.dominance_share:
        return f"one business has more than {thresholds.dominance_share:.0%} of the calls"
    return None


def median_releasable(cell: Cell, thresholds: Thresholds, rule: MedianRule) -> bool:
    """May ``cell``'s median duration be released (the cell itself being published)?"""
    return (
        cell.duration_median is not None
        and failing_reason(cell, thresholds) is None
        and cell.calls >= rule.min_calls
        and cell.callers >= rule.min_callers_factor * thresholds.k_callers
    )


def released_median(cell: Cell, thresholds: Thresholds, rule: MedianRule) -> float | None:
    """The median as released: rounded to ``rule.round_to_s`` seconds, or None where not safe."""
    if not median_releasable(cell, thresholds, rule) or cell.duration_median is None:
        return None
    return float(int(cell.duration_median / rule.round_to_s + 0.5) * rule.round_to_s)


def _parent_key(key: CellKey, dimension: str, spec: ReleaseSpec, month_of: dict[str, str], quarter_of: dict[str, str]) -> CellKey | None:
    if dimension == "industry" and key.industry_level == "industry":
        return CellKey("sector", key.geo_level, key.time_level, spec.sector_of(key.industry), key.geo, key.period)
    if dimension == "geo" and key.geo_level == "country":
        return CellKey(key.industry_level, "region", key.time_level, key.industry, spec.region_of(key.geo), key.period)
    if dimension == "geo" and key.geo_level == "region":
        return CellKey(key.industry_level, "global", key.time_level, key.industry, "global", key.period)
    if dimension == "time" and key.time_level == "week" and key.period in month_of:
        return CellKey(key.industry_level, key.geo_level, "month", key.industry, key.geo, month_of[key.period])
    if dimension == "time" and key.time_level == "month" and key.period in quarter_of:
        return CellKey(key.industry_level, key.geo_level, "quarter", key.industry, key.geo, quarter_of[key.period])
    return None


def relations(cells: Iterable[Cell], spec: ReleaseSpec, week_months: dict[str, str], month_quarters: dict[str, str]) -> list[Relation]:
    """Every ``parent = sum(children)`` the lattice implies (absent cells are known zeros)."""
    keys = {c.key for c in cells}
    groups: dict[tuple[str, CellKey], list[CellKey]] = defaultdict(list)
    for key in keys:
        for dimension in ("industry", "geo", "time"):
            parent = _parent_key(key, dimension, spec, week_months, month_quarters)
            if parent is not None and parent in keys:
                groups[(dimension, parent)].append(key)
    return [Relation(d, p, tuple(sorted(ch))) for (d, p), ch in sorted(groups.items())]


def _residual_fails(children: list[Cell], dimension: str, thresholds: Thresholds) -> bool:
    """Would the sum of ``children`` (what subtraction reveals) fail the thresholds? Across time a
    business may be in several children: distinct counts are then bounded below by the largest
    child's, the top business's calls above by the sum."""
    calls = sum(c.calls for c in children)
    if dimension == "time":
        businesses = max(c.businesses for c in children)
        callers = max(c.callers for c in children)
        top = min(sum(c.top_business_calls for c in children), calls)
    else:
        businesses = sum(c.businesses for c in children)
        callers = sum(c.callers for c in children)
        top = max(c.top_business_calls for c in children)
    return (
        businesses < thresholds.k_businesses
        or callers < thresholds.k_callers
        or (calls > 0 and top / calls > thresholds.dominance_share)
    )


def determined_cells(rels: list[Relation], hidden: set[CellKey]) -> set[CellKey]:
    """Hidden cells whose value the known cells determine exactly through the relations (each
    relation ``parent - sum(children) = 0``; everything not hidden is known)."""
    unknown = sorted(k for k in hidden if any(k == r.parent or k in r.children for r in rels))
    if not unknown:
        return set()
    index = {k: i for i, k in enumerate(unknown)}
    rows = []
    for r in rels:
        row = np.zeros(len(unknown))
        if r.parent in index:
            row[index[r.parent]] = 1.0
        for child in r.children:
            if child in index:
                row[index[child]] -= 1.0
        if row.any():
            rows.append(row)
    if not rows:
        return set()
    matrix = np.array(rows)
    # x_i is determined iff e_i lies in the row space, i.e. the null space has no weight on i.
    _, singular, vt = np.linalg.svd(matrix)
    rank = int((singular > 1e-9 * max(matrix.shape)).sum())
    null = vt[rank:]
    if null.shape[0] == 0:
        return set(unknown)
    weight = np.abs(null).max(axis=0)
    return {k for k, w in zip(unknown, weight, strict=True) if w < 1e-9}


def suppress(
    cells: list[Cell],
    spec: ReleaseSpec,
    thresholds: Thresholds,
    *,
    week_months: dict[str, str],
    month_quarters: dict[str, str],
    earlier_suppressed: set[CellKey] = frozenset(),  # type: ignore[assignment]
    earlier_published: set[CellKey] = frozenset(),  # type: ignore[assignment]
    also_primary: dict[CellKey, str] | None = None,
) -> SuppressionResult:
    """Primary, then complementary suppression; returns each cell's status and reason.
    ``also_primary`` holds cells suppressed for another reason (under differential privacy: below
    the noise-aware threshold), protected like the rest."""
    by_key = {c.key: c for c in cells}
    status: dict[CellKey, str] = {}
    reasons: dict[CellKey, str] = {}
    for cell in cells:
        reason = failing_reason(cell, thresholds)
        if reason is None and also_primary and cell.key in also_primary:
            reason = also_primary[cell.key]
        if reason is None and cell.key in earlier_suppressed:
            reason = "suppressed in an earlier release of this period"
        status[cell.key] = PRIMARY if reason else PUBLISHED
        if reason:
            reasons[cell.key] = reason
    rels = relations(cells, spec, week_months, month_quarters)

    def hide(key: CellKey, why: str) -> None:
        status[key] = SECONDARY
        reasons[key] = why

    def candidates(relation: Relation) -> list[CellKey]:
        return sorted(
            (k for k in relation.children if status[k] == PUBLISHED and k not in earlier_published),
            key=lambda k: (by_key[k].calls, k),
        )

    def fix(relation: Relation, why: str) -> bool:
        options = candidates(relation)
        if options:
            hide(options[0], why)
            return True
        if status[relation.parent] == PUBLISHED and relation.parent not in earlier_published:
            hide(relation.parent, why)
            return True
        return False

    for _ in range(10_000):
        changed = False
        for relation in rels:
            if status[relation.parent] != PUBLISHED and relation.parent not in earlier_published:
                continue
            hidden = [by_key[k] for k in relation.children if status[k] != PUBLISHED and k not in earlier_published]
            if not hidden:
                continue
            if len(hidden) == 1 or _residual_fails(hidden, relation.dimension, thresholds):
                changed |= fix(relation, f"complementary: protects a suppressed {relation.dimension} sibling")
        if not changed:
            determined = determined_cells(
                rels, {k for k, s in status.items() if s != PUBLISHED and k not in earlier_published}
            )
            for key in sorted(determined):
                for relation in rels:
                    if key == relation.parent or key in relation.children:
                        if fix(relation, "complementary: the published table determined a suppressed cell"):
                            changed = True
                            break
                if changed:
                    break
            if determined and not changed:
                raise ReleaseBlocked(
                    f"{len(determined)} suppressed cell(s) stay derivable from earlier releases of this period"
                )
        if not changed:
            return SuppressionResult(status=status, reasons=reasons)
    raise ReleaseBlocked("complementary suppression did not settle")


class ReleaseBlocked(RuntimeError):
    """The release cannot be made safe; nothing is published."""


def generalisation_summary(cells: list[Cell], result: SuppressionResult, spec: ReleaseSpec) -> dict[str, dict[str, int]]:
    """Per level: cells published, suppressed (primary, complementary)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {PUBLISHED: 0, PRIMARY: 0, SECONDARY: 0})
    for cell in cells:
        out[cell.key.level][result.status[cell.key]] += 1
    return {level: dict(counts) for level, counts in sorted(out.items())}
