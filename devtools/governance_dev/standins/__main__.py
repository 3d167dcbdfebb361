"""``python -m governance_dev.standins``: run both processor stand-ins until SIGTERM or SIGINT.

Prints one JSON line ``{"payments_url": ..., "crm_url": ...}`` to stdout once both accept
connections (port 0 picks a free port), so a launcher can read the URLs; logs go to stderr.
Exit status 0 after a clean stop, 2 on bad arguments, 1 when a server cannot start.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from governance_dev.standins.base import StateStore
from governance_dev.standins.crm import CrmStandin
from governance_dev.standins.payments import PaymentsProcessorStandin
from governance_dev.standins.support_desk import SupportDeskStandin


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m governance_dev.standins",
        description="Run the payments_processor and crm stand-in servers until SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--payments-port", type=int, required=True, help="port for payments_processor (0 = free port)"
    )
    parser.add_argument("--crm-port", type=int, required=True, help="port for crm (0 = free port)")
    parser.add_argument(
        "--support-desk-port", type=int, default=None, help="port for support_desk (0 = free port; default: not started)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--api-key", default="test-key", help="key both stand-ins require (default test-key)")
    parser.add_argument(
        "--state-file",
        default=None,
        help="JSON file both keep their state in (loaded at start, rewritten after every change)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request (never query strings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-ins; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    try:
        # One store shared by both: each writes only its own section of the file.
        store = StateStore(args.state_file) if args.state_file else None
        payments = PaymentsProcessorStandin(args.host, args.payments_port, args.api_key, store)
        crm = CrmStandin(args.host, args.crm_port, args.api_key, store)
        desk = (
            SupportDeskStandin(args.host, args.support_desk_port, args.api_key, store)
            if args.support_desk_port is not None
            else None
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    started: list[PaymentsProcessorStandin | CrmStandin | SupportDeskStandin] = []
    try:
        for server in (payments, crm, desk):
            if server is None:
                continue
            server.start()
            started.append(server)
        urls = {"payments_url": payments.url, "crm_url": crm.url}
        if desk is not None:
            urls["support_desk_url"] = desk.url
        print(json.dumps(urls), flush=True)
        # wait() with a timeout so signal handlers run promptly on every platform.
        while not stop.wait(0.5):
            pass
    except OSError as exc:
        print(f"error: cannot start the stand-ins: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(started):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
