"""Airflow plugin: lineage for every task and the tamper-evident audit ledger.

Lives at the top of plugins/ because the plugins manager does not look inside ``governance/``
(see plugins/.airflowignore); the code is in the ``governance`` package.

* ``listeners``: ``governance.ledger_listener`` (per-task lineage isolation, a ledger row for
  every task instance final state; reconciliation and anchoring run beside the scheduler:
  ``python -m governance maintain``).
* ``hook_lineage_readers``: Airflow only collects hook lineage (``S3Hook``, SQL hooks, the
  project's connectors) when a reader is registered; the ledger needs it even when OpenLineage
  is switched off.

When OpenLineage is on, its transport must pass events through
``governance.lineage.LineageEventRedactor`` (``governance.lineage.openlineage_env()`` sets it up):
the provider copies run configurations into events. Anything else is reported at start-up.
"""

from __future__ import annotations

import logging

from airflow.sdk.lineage import HookLineageReader
from airflow.sdk.plugins_manager import AirflowPlugin

from governance.ledger_listener import ledger_listener

log = logging.getLogger(__name__)


def _warn_if_events_are_not_redacted() -> None:
    try:
        from airflow.providers.openlineage import conf as ol_conf

        from governance.lineage import redaction_is_configured

        if ol_conf.is_disabled():
            return
        if ol_conf.config_path(True) or ol_conf.config_conn_id() or not redaction_is_configured(ol_conf.transport()):
            log.error(
                "OpenLineage is on but its transport does not route events through "
                "governance.lineage.LineageEventRedactor: run configurations and other identities may "
                "leave in lineage events. Configure it with governance.lineage.openlineage_env()."
            )
    except Exception:  # the provider is optional; never break plugin loading
        log.debug("OpenLineage configuration not checked", exc_info=True)


_warn_if_events_are_not_redacted()


class GovernanceLineagePlugin(AirflowPlugin):
    name = "governance_lineage"
    listeners = [ledger_listener]
    hook_lineage_readers = [HookLineageReader]
