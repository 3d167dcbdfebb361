"""aircalls.ai data-governance workflows: the package behind the DAGs.

Everything here is importable and testable without a scheduler. DAG files in ``dags/`` only wire
these functions into tasks.
"""

from __future__ import annotations

__version__ = "0.1.0"
