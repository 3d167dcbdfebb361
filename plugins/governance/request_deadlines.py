"""When a privacy request is due, per jurisdiction (``include/request_deadlines.yaml``).

A request is due ``default_days`` (30, policy 11) after it was received, or the number of days its
jurisdiction's law gives (for example 45 under the CCPA). A bad file fails with the file and what
is wrong in it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from governance.config import INCLUDE_DIR

JURISDICTION_RE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")


class DeadlineConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ResponsePeriods:
    """Days to answer a request, by jurisdiction; and when an open request counts as due soon."""

    default_days: int = 30
    due_soon_days: int = 7
    jurisdictions: dict[str, int] = field(default_factory=dict)

    def days_for(self, jurisdiction: str | None) -> int:
        """A subdivision (US-CA) falls back to its country (US), then to the default."""
        if jurisdiction:
            for key in (jurisdiction, jurisdiction.split("-")[0]):
                if key in self.jurisdictions:
                    return self.jurisdictions[key]
        return self.default_days

    def due_at(self, received_at: datetime, jurisdiction: str | None) -> datetime:
        return received_at + timedelta(days=self.days_for(jurisdiction))

    @property
    def due_soon(self) -> timedelta:
        return timedelta(days=self.due_soon_days)


def deadlines_path() -> Path:
    return Path(os.environ.get("GOVERNANCE_REQUEST_DEADLINES", INCLUDE_DIR / "request_deadlines.yaml"))


def _days(path: Path, where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 365:
        raise DeadlineConfigError(f"{path}: {where}: must be a whole number of days between 1 and 365, not {value!r}")
    return value


def parse_periods(data: object, path: Path) -> ResponsePeriods:
    if not isinstance(data, dict):
        raise DeadlineConfigError(f"{path}: must be a mapping with default_days and jurisdictions")
    unknown = sorted(set(data) - {"default_days", "due_soon_days", "jurisdictions"})
    if unknown:
        raise DeadlineConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}")
    jurisdictions: dict[str, int] = {}
    raw = data.get("jurisdictions") or {}
    if not isinstance(raw, dict):
        raise DeadlineConfigError(f"{path}: jurisdictions: must map a jurisdiction code to days")
    for code, days in raw.items():
        if not isinstance(code, str) or not JURISDICTION_RE.match(code):
            raise DeadlineConfigError(f"{path}: jurisdictions.{code}: not an ISO 3166 code like GB or US-CA")
        jurisdictions[code] = _days(path, f"jurisdictions.{code}", days)
    return ResponsePeriods(
        default_days=_days(path, "default_days", data.get("default_days", 30)),
        due_soon_days=_days(path, "due_soon_days", data.get("due_soon_days", 7)),
        jurisdictions=jurisdictions,
    )


@cache
def _load(path: Path, mtime: float) -> ResponsePeriods:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DeadlineConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    return parse_periods(data, path)


def response_periods() -> ResponsePeriods:
    """The configured periods (the built-in 30 days when the file does not exist)."""
    path = deadlines_path()
    if not path.exists():
        return ResponsePeriods()
    return _load(path, path.stat().st_mtime)


def validate_jurisdiction(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    code = value.strip().upper()
    if not JURISDICTION_RE.match(code):
        raise ValueError("jurisdiction must be an ISO 3166 code such as GB or US-CA")
    return code
