"""Stand-ins for the processors reached over HTTP (``payments_processor``, ``crm`` and
``support_desk``, the last one reached through a Python connector).

Small standard-library HTTP servers that keep state, answer on loopback and can be told to fail or be
slow, for tests, the demo and benchmarks (DESIGN.md section 2). Each serves its processor's API plus
``/_admin`` endpoints (health, load, reset, state, faults); see :mod:`governance_dev.standins.base`.

Run both from a shell with ``python -m governance_dev.standins --payments-port 0 --crm-port 0``.
"""

from __future__ import annotations

import os
from pathlib import Path

from governance_dev.standins.base import Fault, FaultMode, StandinServer, StateStore
from governance_dev.standins.crm import CrmStandin
from governance_dev.standins.payments import PaymentsProcessorStandin
from governance_dev.standins.support_desk import SupportDeskStandin

__all__ = [
    "CrmStandin",
    "Fault",
    "FaultMode",
    "PaymentsProcessorStandin",
    "StandinServer",
    "StateStore",
    "SupportDeskStandin",
    "start_standins",
    "start_support_desk",
]


def start_standins(
    host: str = "127.0.0.1",
    payments_port: int = 0,
    crm_port: int = 0,
    api_key: str = "test-key",
    state_dir: str | os.PathLike[str] | None = None,
) -> tuple[PaymentsProcessorStandin, CrmStandin]:
    """Start both stand-ins (port 0 picks a free port) and return them running; the caller stops
    them. With ``state_dir`` (created if missing) each keeps its state in
    ``<state_dir>/<service>.json``, loaded now and rewritten after every change. If the second fails
    to start, the first is stopped before the error propagates."""
    payments_state: Path | None = None
    crm_state: Path | None = None
    if state_dir is not None:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        payments_state = directory / f"{PaymentsProcessorStandin.service}.json"
        crm_state = directory / f"{CrmStandin.service}.json"
    payments = PaymentsProcessorStandin(host, payments_port, api_key, payments_state)
    crm = CrmStandin(host, crm_port, api_key, crm_state)
    payments.start()
    try:
        crm.start()
    except BaseException:
        payments.stop()
        raise
    return payments, crm


def start_support_desk(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = "test-key",
    state_dir: str | os.PathLike[str] | None = None,
) -> SupportDeskStandin:
    """Start the ``support_desk`` stand-in (OAuth client secret ``api_key``, client id
    ``governance``) and return it running; state in ``<state_dir>/support_desk.json`` if given."""
    state: Path | None = None
    if state_dir is not None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        state = Path(state_dir) / f"{SupportDeskStandin.service}.json"
    server = SupportDeskStandin(host, port, api_key, state)
    server.start()
    return server
