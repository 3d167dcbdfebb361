"""The release spec (``include/insights_release.yaml``): sources, quasi-identifiers, hierarchies,
thresholds and the differential-privacy bounds, validated with placed errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from governance.config import INCLUDE_DIR

SPEC_PATH = INCLUDE_DIR / "insights_release.yaml"
# Generalisation levels of each quasi-identifier, finest first (the spec must declare these).
INDUSTRY_LEVELS = ("industry", "sector")
GEO_LEVELS = ("country", "region", "global")
TIME_LEVELS = ("week", "month", "quarter")
CALL_OUTCOMES = ("answered", "voicemail", "transferred", "missed", "booked")


class ReleaseSpecError(ValueError):
    """The release spec is invalid: ``FILE: PATH: MESSAGE``."""


@dataclass(frozen=True)
class CallsSource:
    table: str
    business: str
    caller: str
    time: str
    duration: str
    outcome: str
    outcomes: tuple[str, ...]


@dataclass(frozen=True)
class MessagesSource:
    table: str
    business: str
    time: str


@dataclass(frozen=True)
class AppointmentsSource:
    """Feeds the booked share: appointments booked (at ``time``) per call of the cell."""

    table: str
    business: str
    time: str


@dataclass(frozen=True)
class BusinessesSource:
    table: str
    key: str
    industry: str
    country: str


@dataclass(frozen=True)
class Thresholds:
    k_businesses: int
    k_callers: int
    dominance_share: float


@dataclass(frozen=True)
class MedianRule:
    """When a cell's median call duration may be released (see :func:`median_releasable`)."""

    min_calls: int
    min_callers_factor: int
    round_to_s: int


@dataclass(frozen=True)
class PrivacyBounds:
    """Contribution bounds of the privacy unit (one business in one ISO week) and the budget."""

    max_calls_per_business_week: int
    max_messages_per_business_week: int
    max_appointments_per_business_week: int
    max_duration_s: int
    epsilon_budget_per_week: float


@dataclass(frozen=True)
class ReleaseSpec:
    release: str
    system: str
    businesses: BusinessesSource
    calls: CallsSource
    messages: MessagesSource
    appointments: AppointmentsSource
    sectors: dict[str, str]  # industry -> sector
    regions: dict[str, str]  # country -> region
    opens_hour: int
    closes_hour: int
    thresholds: Thresholds
    median: MedianRule
    privacy: PrivacyBounds
    public_columns: tuple[str, ...]
    path: Path

    def sector_of(self, industry: str) -> str:
        return self.sectors.get(industry, "other")

    def region_of(self, country: str) -> str:
        return self.regions.get(country, "other")


def _need(raw: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(raw, dict) or key not in raw:
        raise ReleaseSpecError(f"{path}: {where}: missing {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ReleaseSpecError(f"{path}: {where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _inverse(raw: Any, where: str, path: Path) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise ReleaseSpecError(f"{path}: {where}: expected a mapping of group -> members")
    out: dict[str, str] = {}
    for group, members in raw.items():
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ReleaseSpecError(f"{path}: {where}.{group}: expected a list of names")
        for member in members:
            if member in out:
                raise ReleaseSpecError(f"{path}: {where}.{group}: {member!r} is already in {out[member]!r}")
            out[member] = str(group)
    return out


def load_release_spec(path: Path | None = None) -> ReleaseSpec:
    """Read and check the spec; raises :class:`ReleaseSpecError` naming the place of a fault."""
    path = path or SPEC_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReleaseSpecError(f"{path}: cannot read the release spec: {exc}") from exc
    sources = _need(raw, "sources", "", path, dict)
    b = _need(sources, "businesses", "sources", path, dict)
    c = _need(sources, "calls", "sources", path, dict)
    m = _need(sources, "messages", "sources", path, dict)
    a = _need(sources, "appointments", "sources", path, dict)
    qis = _need(raw, "quasi_identifiers", "", path, list)
    if qis != ["industry", "country", "week"]:
        raise ReleaseSpecError(f"{path}: quasi_identifiers: expected [industry, country, week], got {qis}")
    hierarchies = _need(raw, "hierarchies", "", path, dict)
    for name, levels in (("industry", INDUSTRY_LEVELS), ("country", GEO_LEVELS), ("week", TIME_LEVELS)):
        declared = _need(_need(hierarchies, name, "hierarchies", path, dict), "levels", f"hierarchies.{name}", path, list)
        if tuple(declared) != levels:
            raise ReleaseSpecError(f"{path}: hierarchies.{name}.levels: expected {list(levels)}, got {declared}")
    t = _need(raw, "thresholds", "", path, dict)
    dp = _need(raw, "differential_privacy", "", path, dict)
    hours = _need(raw, "after_hours", "", path, dict)
    md = _need(raw, "median_duration", "", path, dict)
    median = MedianRule(*(_need(md, k, "median_duration", path, int) for k in ("min_calls", "min_callers_factor", "round_to_s")))
    if median.min_calls < 1 or median.min_callers_factor < 1 or median.round_to_s < 1:
        raise ReleaseSpecError(f"{path}: median_duration: min_calls, min_callers_factor and round_to_s must be at least 1")
    thresholds = Thresholds(
        k_businesses=_need(t, "k_businesses", "thresholds", path, int),
        k_callers=_need(t, "k_callers", "thresholds", path, int),
        dominance_share=float(_need(t, "dominance_share", "thresholds", path, (int, float))),
    )
    if thresholds.k_businesses < 2 or thresholds.k_callers < 2 or not 0 < thresholds.dominance_share <= 1:
        raise ReleaseSpecError(f"{path}: thresholds: k values must be at least 2 and dominance_share in (0, 1]")
    outcomes = tuple(_need(c, "outcomes", "sources.calls", path, list))
    if set(outcomes) != set(CALL_OUTCOMES):
        raise ReleaseSpecError(f"{path}: sources.calls.outcomes: expected {list(CALL_OUTCOMES)} (the measures a cell holds), got {list(outcomes)}")
    return ReleaseSpec(
        release=_need(raw, "release", "", path),
        system=_need(raw, "system", "", path),
        businesses=BusinessesSource(*(_need(b, k, "sources.businesses", path) for k in ("table", "key", "industry", "country"))),
        calls=CallsSource(
            table=_need(c, "table", "sources.calls", path), business=_need(c, "business", "sources.calls", path),
            caller=_need(c, "caller", "sources.calls", path), time=_need(c, "time", "sources.calls", path),
            duration=_need(c, "duration", "sources.calls", path), outcome=_need(c, "outcome", "sources.calls", path),
            outcomes=outcomes,
        ),
        messages=MessagesSource(*(_need(m, k, "sources.messages", path) for k in ("table", "business", "time"))),
        appointments=AppointmentsSource(*(_need(a, k, "sources.appointments", path) for k in ("table", "business", "time"))),
        sectors=_inverse(_need(hierarchies["industry"], "sector", "hierarchies.industry", path, dict), "hierarchies.industry.sector", path),
        regions=_inverse(_need(hierarchies["country"], "region", "hierarchies.country", path, dict), "hierarchies.country.region", path),
        opens_hour=_need(hours, "opens_hour", "after_hours", path, int),
        closes_hour=_need(hours, "closes_hour", "after_hours", path, int),
        thresholds=thresholds,
        median=median,
        privacy=PrivacyBounds(
            max_calls_per_business_week=_need(dp, "max_calls_per_business_week", "differential_privacy", path, int),
            max_messages_per_business_week=_need(dp, "max_messages_per_business_week", "differential_privacy", path, int),
            max_appointments_per_business_week=_need(dp, "max_appointments_per_business_week", "differential_privacy", path, int),
            max_duration_s=_need(dp, "max_duration_s", "differential_privacy", path, int),
            epsilon_budget_per_week=float(_need(dp, "epsilon_budget_per_week", "differential_privacy", path, (int, float))),
        ),
        public_columns=tuple(_need(raw, "public_columns", "", path, list)),
        path=path,
    )
