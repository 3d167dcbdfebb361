"""``PreloadingLocalExecutor``: LocalExecutor whose task processes start with Great Expectations loaded.

Under LocalExecutor (``airflow standalone``, ``make airflow``) task processes are forks: the
scheduler forks the executor's worker processes when the executor starts, and each worker's
supervisor forks one process per task. Every module the scheduler holds before
:meth:`LocalExecutor.start` is therefore already in every task process, for free (copy-on-write;
LocalExecutor freezes the garbage collector around the fork so the pages stay shared). Stock
Airflow preloads only its own modules, so each verification and export-gate task paid the whole
Great Expectations import (5-14 s) itself.

This executor imports ``GOVERNANCE_PRELOAD_MODULES`` (comma-separated; default Great Expectations
and the modules the ledger listener needs in every task) in the scheduler, once, just before the workers are forked. Select it with
``AIRFLOW__CORE__EXECUTOR=governance.executors.PreloadingLocalExecutor`` (``airflow standalone``
keeps it: it is a local executor). Costs: the scheduler starts that much later, once, and holds
the modules (about 150 MB, shared with the workers). A module that fails to import is logged and
skipped; the executor starts regardless and tasks import what they need themselves.

With the ``spawn`` start method (macOS) workers do not inherit the scheduler's modules, so nothing
is preloaded. CeleryExecutor (docker-compose) forks its task processes from the Celery worker's
pool processes instead: preloading there is the Celery worker's business, not this class's.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import time

from airflow.executors.local_executor import LocalExecutor

from governance import expectations

PRELOAD_ENV = "GOVERNANCE_PRELOAD_MODULES"
# Great Expectations (verification, export gate) and what the ledger listener imports in every
# task process when it writes the task's row (about 1.8 s per task on a loaded 2-core machine).
DEFAULT_PRELOAD = ("great_expectations", "governance.ledger", "governance.lineage", "governance.db")

log = logging.getLogger(__name__)


def preload_names() -> list[str]:
    """The modules to preload: ``GOVERNANCE_PRELOAD_MODULES`` (empty: none), else the default."""
    value = os.environ.get(PRELOAD_ENV)
    if value is None:
        return list(DEFAULT_PRELOAD)
    return [name.strip() for name in value.split(",") if name.strip()]


def preload_modules(names: list[str]) -> dict[str, float]:
    """Import ``names`` in this process; seconds per module imported (failures are logged, skipped)."""

    took: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        try:
            if name == "great_expectations":
                expectations.load()
            else:
                importlib.import_module(name)
        except Exception:
            log.exception("preload: could not import %s; task processes will import it themselves", name)
            continue
        took[name] = time.perf_counter() - started
    return took


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor that imports the preload modules before forking its workers (see the module)."""

    preloaded: dict[str, float]

    def start(self) -> None:
        self.preloaded = {}
        if self.is_mp_using_fork:
            self.preloaded = preload_modules(preload_names())
            if self.preloaded:
                log.info("preloaded for task processes: %s",
                         ", ".join(f"{n} ({s:.1f} s)" for n, s in self.preloaded.items()))  # fmt: skip
        else:
            log.warning("preload skipped: workers are spawned, not forked, so they would not inherit it")
        super().start()
        if self.preloaded:
            # The preloaded modules live as long as the scheduler: keep them out of its later full
            # collections (LocalExecutor unfreezes after forking, so freeze again afterwards).
            gc.collect()
            gc.freeze()
