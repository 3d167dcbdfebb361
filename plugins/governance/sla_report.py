"""The daily privacy-request SLA report (policy 11): an HTML page in the object store.

What it shows, computed in PostgreSQL from ``governance.privacy_requests`` (ids, states and times
only, never an identity):

* open requests by age (days since received, in weekly bands up to the 30-day deadline and
  beyond) and state, as a stacked bar chart (inline SVG: no plotting library in the image);
* per kind, how many were completed and the median and worst time from received to completed;
* how many open requests are overdue or due within 7 days.

Published as ``reports/privacy-requests/sla-YYYY-MM-DD.html`` and ``.../latest.html`` in the
objects bucket: the Asset ``privacy_request_sla_report``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from governance.config import SLA_REPORT_PREFIX as REPORT_PREFIX
from governance.lineage import record_object_write
from governance.request_lifecycle import FINAL_STATES

AGE_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("0-7 days", 0, 7), ("8-14 days", 8, 14), ("15-21 days", 15, 21), ("22-30 days", 22, 30), ("over 30 days", 31, None),
)  # fmt: skip
_COLOURS = {
    "received": "#9aa5b1", "awaiting_verification": "#f0b429", "verified": "#3ebd93", "dispatched": "#2680c2",
    "in_progress": "#4098d7", "failed": "#d64545", "extended": "#8e6fd8",
}  # fmt: skip


@dataclass(frozen=True)
class KindTimes:
    kind: str
    completed: int
    median_days: float | None
    worst_days: float | None


@dataclass
class SlaFigures:
    as_of: datetime
    open_by_band: dict[str, dict[str, int]] = field(default_factory=dict)  # band -> status -> count
    kinds: list[KindTimes] = field(default_factory=list)
    overdue: int = 0
    due_soon: int = 0

    def to_xcom(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "open": sum(sum(v.values()) for v in self.open_by_band.values()),
                "overdue": self.overdue, "due_soon": self.due_soon,
                "completed": {k.kind: k.completed for k in self.kinds}}  # fmt: skip


def sla_figures(conn: psycopg.Connection[Any], *, as_of: datetime, due_soon: timedelta = timedelta(days=7)) -> SlaFigures:
    figures = SlaFigures(as_of=as_of, open_by_band={band: {} for band, _, _ in AGE_BANDS})
    rows = conn.execute(
        """
        SELECT floor(extract(epoch FROM %(as_of)s - received_at) / 86400)::int AS age, status, count(*),
               count(*) FILTER (WHERE due_at <= %(as_of)s), count(*) FILTER (WHERE due_at > %(as_of)s AND due_at <= %(soon)s)
          FROM governance.privacy_requests
         WHERE status <> ALL(%(final)s) AND received_at <= %(as_of)s
         GROUP BY 1, 2
        """,
        {"as_of": as_of, "soon": as_of + due_soon, "final": list(FINAL_STATES)},
    ).fetchall()
    for age, status, count, overdue, soon in rows:
        band = next(name for name, low, high in AGE_BANDS if age >= low and (high is None or age <= high))
        figures.open_by_band[band][status] = figures.open_by_band[band].get(status, 0) + count
        figures.overdue += overdue
        figures.due_soon += soon
    for kind, completed, median, worst in conn.execute(
        """
        SELECT kind, count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - received_at)) / 86400,
               max(extract(epoch FROM completed_at - received_at)) / 86400
          FROM governance.privacy_requests
         WHERE completed_at IS NOT NULL AND completed_at <= %s
         GROUP BY kind ORDER BY kind
        """,
        (as_of,),
    ).fetchall():
        figures.kinds.append(KindTimes(str(kind), int(completed), None if median is None else float(median),
                                       None if worst is None else float(worst)))  # fmt: skip
    return figures


def _chart(figures: SlaFigures) -> str:
    """A stacked bar per age band, one colour per state (inline SVG)."""
    width, height, left, bottom, bar = 640, 260, 40, 40, 70
    top = max([sum(v.values()) for v in figures.open_by_band.values()] + [1])
    scale = (height - bottom - 20) / top
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             "aria-label='Open privacy requests by age and state'>"]  # fmt: skip
    for i, (band, counts) in enumerate(figures.open_by_band.items()):
        x, y = left + 20 + i * (bar + 40), float(height - bottom)
        for status, count in sorted(counts.items()):
            h = count * scale
            y -= h
            parts.append(f"<rect x='{x}' y='{y:.1f}' width='{bar}' height='{h:.1f}' fill='{_COLOURS.get(status, '#666')}'>"
                         f"<title>{html.escape(status)}: {count}</title></rect>")  # fmt: skip
        parts.append(f"<text x='{x + bar / 2}' y='{height - bottom + 16}' text-anchor='middle' font-size='12'>"
                     f"{html.escape(band)}</text>")  # fmt: skip
        total = sum(counts.values())
        parts.append(f"<text x='{x + bar / 2}' y='{y - 4:.1f}' text-anchor='middle' font-size='12'>{total}</text>")
    parts.append("</svg>")
    legend = " ".join(f"<span style='color:{c}'>&#9632;</span> {html.escape(s.replace('_', ' '))}" for s, c in _COLOURS.items())
    return "".join(parts) + f"<p class='legend'>{legend}</p>"


def _days(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} days"


def render_html(figures: SlaFigures) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k.kind)}</td><td>{k.completed}</td><td>{_days(k.median_days)}</td><td>{_days(k.worst_days)}</td></tr>"
        for k in figures.kinds
    ) or "<tr><td colspan='4'>No request completed yet.</td></tr>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Privacy requests: SLA report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Privacy requests: SLA report</h1><p>As of {figures.as_of:%Y-%m-%d %H:%M} UTC. Policy 11: every request "
        "is answered within 30 days (or its jurisdiction's period), extended once at most.</p>"
        f"<p id='deadlines'><strong>{figures.overdue}</strong> open request(s) overdue, <strong>{figures.due_soon}"
        "</strong> due within 7 days.</p>"
        f"<h2>Open requests by age and state</h2>{_chart(figures)}"
        "<h2>Time to complete</h2><table id='times'><tr><th>kind</th><th>completed</th><th>median</th><th>worst</th></tr>"
        f"{rows}</table></body></html>"
    )


def publish(s3: Any, bucket: str, figures: SlaFigures) -> list[str]:
    """Write the day's report and ``latest.html``; returns their s3:// URIs."""
    page = render_html(figures).encode()
    keys = [f"{REPORT_PREFIX}/sla-{figures.as_of:%Y-%m-%d}.html", f"{REPORT_PREFIX}/latest.html"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=page, ContentType="text/html; charset=utf-8")

    record_object_write(bucket, REPORT_PREFIX, objects=len(keys))
    return [f"s3://{bucket}/{key}" for key in keys]
