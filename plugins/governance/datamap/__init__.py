"""The data map: the single source of truth export, erasure, retention and the subprocessor
inventory are computed from (``include/datamap.yaml``, DESIGN.md section 3).

* :mod:`.model`: the typed, immutable map (pydantic), ``TableRef``/``PrefixRef``, ``DataMapError``;
* :mod:`.loader`: ``load_datamap`` (read, validate, cache) and ``validate_datamap``;
* :mod:`.taxonomy`: fideslang data categories and data uses;
* :mod:`.graph`: references as a graph: who owns which rows, erasure order;
* :mod:`.plans`: pure SQL plan builders (resolution, erasure, retention, export) with bound
  parameters only;
* :mod:`.drift`: the map against a live database (unmapped columns, stale entries, indexes);
* :mod:`.command`: ``python -m governance validate-datamap``.

Importing this package loads only the model (pydantic); the other submodules load when used.
"""

from __future__ import annotations

import os
from pathlib import Path

from governance.datamap.model import DataMap, DataMapError, DataMapIssue, PrefixRef, TableRef

__all__ = ["DataMap", "DataMapError", "DataMapIssue", "PrefixRef", "TableRef", "load_datamap", "phone_region"]


def load_datamap(path: Path | None = None) -> DataMap:
    """Shortcut for :func:`governance.datamap.loader.load_datamap`."""
    from governance.datamap.loader import load_datamap as _load

    return _load(path)


def phone_region(datamap: DataMap | None = None) -> str:
    """ISO-3166 region used to read phone numbers typed without a country code.

    ``GOVERNANCE_PHONE_REGION`` when set (a deployment's override), else the data map's
    ``settings.default_phone_region`` (of ``datamap``, or the loaded map). Callers pass it to
    :mod:`governance.identity`, which reads no configuration itself.
    """
    override = os.environ.get("GOVERNANCE_PHONE_REGION", "").strip()
    if override:
        return override.upper()
    return str((datamap or load_datamap()).settings.default_phone_region).upper()
