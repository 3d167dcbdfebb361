"""Erasure of one person across every system the data map names (policy 5.3, ``dsr_erasure``).

The parts, in the order a run uses them:

* :mod:`.resolve`: where the person's rows are, in one snapshot, narrowed to one person (rows that
  carry another person's identity are left out; several candidates in one business are flagged);
* :mod:`.holds`: legal holds in force (a person, a business, a table), which win over everything;
* :mod:`.planner`: the :class:`~governance.erasure.planner.ErasureWork` (keys per table and
  effect in reference order, object keys, processor record ids, what is kept, why and until when);
* :mod:`.guard`: refuses plans that are too broad (share of a table, more than one person);
* :mod:`.store`: persistence of plans and per-step progress (``governance.erasure_*``);
* :mod:`.executor`: set-based statements keyed by primary keys, one transaction per database;
  version-aware object deletes; processor erase calls; progress recorded per step;
* :mod:`.verify`: resolution again, checked with Great Expectations (zero residue but the kept);
* :mod:`.suppression` and :mod:`.reapply`: the suppression list and ``reapply-suppressions``;
* :mod:`.certificate`: the erasure certificate (JSON and HTML, keyed hashes only);
* :mod:`.locking`: advisory locks on the person's keyed hashes (same person: one at a time).

Nothing here writes an identity to a log, XCom, an exception message or a stored document.
"""

from __future__ import annotations
