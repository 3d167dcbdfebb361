"""Publishing a verified release: the ``insights`` schema (read by the analyst role), and Parquet,
CSV, a manifest and an HTML report (charts drawn as inline SVG) in the object store.

Idempotent: rows are inserted once (``ON CONFLICT DO NOTHING``), objects are written from the
staged cells (the same bytes on a retry, noise included: it was drawn once, when staging), and the
release is marked published only after both.
"""

from __future__ import annotations

import html
import io
import json
from datetime import date
from typing import Any, TypedDict

from psycopg import sql

from governance.anonymisation.verify import ReleaseVerificationFailed, release_frame
from governance.config import INSIGHTS_PREFIX_ENV, INSIGHTS_SCHEMA, insights_prefix

INSIGHTS_TABLE = "industry_insights"
PREFIX_ENV = INSIGHTS_PREFIX_ENV


class PublishedRelease(TypedDict):
    release_id: str
    version: int
    cells: int
    objects: list[str]
    empty_reason: str | None


def release_prefix(name: str, period_start: date, period_end: date, version: int) -> str:
    return f"{insights_prefix()}{name}/{period_start.isoformat()}_{period_end.isoformat()}/v{version}/"


def _bars(title: str, values: dict[str, float], *, limit: float | None = None, percent: bool = False) -> str:
    """A horizontal bar chart as inline SVG."""
    if not values:
        return f"<h3>{html.escape(title)}</h3><p>Nothing to chart.</p>"
    width, row = 640, 22
    top = max([*values.values(), limit or 0, 1e-9])
    parts = [f'<svg width="{width + 260}" height="{row * len(values) + 10}" role="img" aria-label="{html.escape(title)}">']
    for n, (label, value) in enumerate(values.items()):
        y = n * row + 4
        w = max(value / top * width, 0)
        shown = f"{value:.1%}" if percent else f"{value:g}"
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(label)}</text>'
                     f'<rect x="200" y="{y}" width="{w:.1f}" height="{row - 6}" fill="#4a78b5"/>'
                     f'<text x="{205 + w:.1f}" y="{y + 14}" font-size="12">{shown}</text>')  # fmt: skip
    if limit:
        x = 200 + limit / top * width
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{row * len(values) + 10}" stroke="#c0392b"/>')
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def report_html(release: dict[str, Any], budget: dict[str, float], budget_limit: float) -> str:
    report = release["report"] or {}
    levels = report.get("levels", {})
    suppressed = {lvl: float(c.get("suppressed_primary", 0) + c.get("suppressed_secondary", 0)) for lvl, c in levels.items()}
    secondary = {lvl: float(c.get("suppressed_secondary", 0)) for lvl, c in levels.items()}
    published = {lvl: float(c.get("published", 0)) for lvl, c in levels.items()}
    verification = report.get("verification", {})
    dp = release["epsilon"] is not None
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in [
            ("Release", release["release_id"]), ("Period", f"{release['period_start']} to {release['period_end']}"),
            ("Version", release["version"]), ("k (businesses, callers)", f"{release['k_businesses']}, {release['k_callers']}"),
            ("Dominance share", release["dominance_share"]),
            ("Differential privacy", f"epsilon {release['epsilon']}, delta {release['delta']}" if dp else "off"),
            ("Cells published", int(sum(published.values()))), ("Cells suppressed", int(sum(suppressed.values()))),
            ("Medians released (median rule)", "none under differential privacy" if dp else report.get("medians_released", 0)),
            ("Verification", "passed" if verification.get("success") else "not passed"),
            ("k-anonymity (pyCANON, lowest level)", min(verification.get("k_anonymity", {}).values(), default="n/a")),
        ]
    )  # fmt: skip
    why_empty = f"<p><strong>Empty release:</strong> {html.escape(release['empty_reason'])}</p>" if release["empty_reason"] else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Industry insights release report</title></head><body>"
        f"<h1>Industry insights: release report</h1>{why_empty}<table>{rows}</table>"
        + _bars("Cells published per level (generalisation)", published)
        + _bars("Cells suppressed per level (primary and complementary)", suppressed)
        + _bars("Complementary suppressions per level", secondary)
        + _bars("Utility loss per level: share of the raw calls not in a published cell",
                report.get("utility_loss_by_level", {}), percent=True)  # fmt: skip
        + (_bars("Privacy budget spent per ISO week (line: the budget)", budget, limit=budget_limit) if dp else "")
        + "<p>Every published cell aggregates at least k businesses and k callers, with no business above the "
        "dominance share; suppressed cells cannot be recovered from published totals. Counts only: no business, "
        "caller or message is named.</p></body></html>"
    )


def _release_row(conn: Any, release_id: str) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM governance.insights_releases WHERE release_id = %s", (release_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    if row is None:
        raise ReleaseVerificationFailed(f"no staged release {release_id}")
    return dict(zip(names, row, strict=True))


def publish_release(conn: Any, release_id: str, *, s3: Any, bucket: str, budget_limit: float) -> PublishedRelease:
    """Publish the verified release ``release_id`` (again, on a retry: nothing doubles)."""
    release = _release_row(conn, release_id)
    if release["status"] not in ("verified", "published"):
        raise ReleaseVerificationFailed(
            f"release {release_id} is {release['status']}, not verified: nothing is published"
        )
    frame = release_frame(conn, release_id)
    columns = [c for c in frame.columns]
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM governance.insights_release_cells WHERE release_id = %s"
                    " AND status = 'published' ON CONFLICT DO NOTHING").format(
                sql.Identifier(INSIGHTS_SCHEMA, INSIGHTS_TABLE), sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(map(sql.Identifier, columns)),
            ),
            (release_id,),
        )  # fmt: skip
        conn.execute(
            """INSERT INTO insights.releases (release_id, release_name, period_start, period_end, version, k_businesses,
                   k_callers, epsilon, delta, cells, empty_reason, published_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (release_id) DO NOTHING""",
            (release_id, release["release_name"], release["period_start"], release["period_end"], release["version"],
             release["k_businesses"], release["k_callers"], release["epsilon"], release["delta"], len(frame),
             release["empty_reason"]),
        )  # fmt: skip
    weeks = conn.execute(
        "SELECT week_start, sum(epsilon) FROM governance.insights_budget_spends WHERE week_start BETWEEN %s AND %s GROUP BY 1 ORDER BY 1",
        (release["period_start"], release["period_end"]),
    ).fetchall()
    budget = {w.isoformat(): float(e) for w, e in weeks}
    prefix = release_prefix(release["release_name"], release["period_start"], release["period_end"], release["version"])
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    manifest = {
        "release_id": release_id, "release": release["release_name"], "version": release["version"],
        "period_start": release["period_start"].isoformat(), "period_end": release["period_end"].isoformat(),
        "k_businesses": release["k_businesses"], "k_callers": release["k_callers"],
        "dominance_share": release["dominance_share"], "epsilon": release["epsilon"], "delta": release["delta"],
        "privacy_unit": "one business in one ISO week" if release["epsilon"] is not None else None,
        "cells": len(frame), "empty_reason": release["empty_reason"], "columns": columns,
    }  # fmt: skip
    objects = {
        "cells.parquet": (parquet.getvalue(), "application/vnd.apache.parquet"),
        "cells.csv": (frame.to_csv(index=False).encode(), "text/csv"),
        "release.json": (json.dumps(manifest, indent=2).encode(), "application/json"),
        "report.html": (report_html(release, budget, budget_limit).encode(), "text/html"),
    }
    for name, (body, content_type) in objects.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=body, ContentType=content_type)
    conn.execute(
        "UPDATE governance.insights_releases SET status = 'published', published_at = coalesce(published_at, now()) WHERE release_id = %s",
        (release_id,),
    )
    return PublishedRelease(release_id=release_id, version=release["version"], cells=len(frame),
                            objects=[prefix + n for n in objects], empty_reason=release["empty_reason"])  # fmt: skip
