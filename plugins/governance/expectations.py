"""Great Expectations, the engine that records the project's expectations, loaded once per process.

``import great_expectations`` loads about 1,900 modules (every expectation, scipy, altair for
rendering, its data-source registry): 5-14 s on a loaded 2-core machine, far more than the checks
it runs (a few milliseconds each). Python cannot import a GX submodule without running the
package's ``__init__``, which pulls all of it, so the only way not to pay it per task is to pay it
once in the process that forks task processes: :class:`governance.executors.PreloadingLocalExecutor`
(and the erasure benchmark) call :func:`load` before forking. Task code calls :func:`load` too, which
is then a dictionary look-up.

GX logs hundreds of INFO lines while it imports (its API-docs registry); inside a task they would be
shipped to the task log one by one, so its loggers are quieted before the import, not after.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_NOISY_LOGGERS = ("great_expectations", "great_expectations.core", "great_expectations.data_context",
                  "great_expectations._docs_decorators", "great_expectations.expectations.registry")  # fmt: skip

log = logging.getLogger(__name__)


def quiet() -> None:
    """Keep GX's import-time and progress chatter out of task logs (warnings still show)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def is_loaded() -> bool:
    """Whether this process already holds GX (preloaded by the process it was forked from)."""
    return "great_expectations" in sys.modules


def load() -> Any:
    """The ``great_expectations`` module, imported quietly (free when already loaded)."""
    preloaded = is_loaded()
    quiet()
    started = time.perf_counter()
    import great_expectations as gx

    if not preloaded:
        log.info("Great Expectations imported in this process in %.1f s", time.perf_counter() - started)
    return gx


def ephemeral_context() -> Any:
    """A new in-memory GX context: no files, no analytics, no progress bars, no data docs.

    Creating one takes about 10 ms once GX is loaded, so each check run gets its own and no
    suite or data source name can clash with another run's in the same process (``dag.test()``).
    """
    gx = load()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    return gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        ),
    )
