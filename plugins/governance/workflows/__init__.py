"""Task-level functions of each workflow: what a DAG's tasks call, testable without a scheduler.

Each returns a small JSON-safe summary for XCom (ids, counts, kinds), never personal data.
"""

from __future__ import annotations
