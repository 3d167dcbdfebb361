"""``python -m governance inventory-reference [--stale] [--max-age-days N] [--as-of DATE]``: the
transfer reference data (``include/reference/``), one line per dated entry (file, entry, last
checked, source); with ``--stale`` only those last checked more than N days (default 365) before
the date given (default today), exit 1 when any is.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from governance.datamap.model import DataMapError
from governance.inventory.loader import load_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None, help="reference folder (default include/reference)")
    parser.add_argument("--stale", action="store_true", help="only entries last checked too long ago")
    parser.add_argument("--max-age-days", type=int, default=365, help="how old is too old (default 365)")
    parser.add_argument("--as-of", type=date.fromisoformat, default=None, help="YYYY-MM-DD (default today)")


def stale_reference_entries(
    entries: list[tuple[str, str, date, str]], *, as_of: date, max_age_days: int = 365
) -> list[tuple[str, str, date, str]]:
    """The entries last checked more than ``max_age_days`` before ``as_of``, oldest first."""
    cutoff = as_of - timedelta(days=max_age_days)
    return sorted((e for e in entries if e[2] < cutoff), key=lambda e: (e[2], e[0], e[1]))


def run(args: argparse.Namespace) -> int:
    try:
        reference = load_reference(args.dir)
    except DataMapError as exc:
        print(exc, file=sys.stderr)
        return 1
    entries = reference.dated_entries()
    as_of = args.as_of or datetime.now(UTC).date()
    if args.stale:
        entries = stale_reference_entries(entries, as_of=as_of, max_age_days=args.max_age_days)
    for file, entry, checked, source in entries:
        print(f"{file}\t{entry}\t{checked.isoformat()}\t{source}")
    if args.stale:
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} last checked more than "
              f"{args.max_age_days} days before {as_of.isoformat()}", file=sys.stderr)  # fmt: skip
        return 1 if entries else 0
    return 0
