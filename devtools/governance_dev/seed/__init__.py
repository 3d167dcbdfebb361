"""The reference deployment seeder: ``python -m governance_dev seed --scale {small,large}``.

The public API: :func:`seed_reference_deployment` with :class:`SeedTargets` and the resulting
:class:`SeedReport`; the named test subjects in :data:`CAST` (:mod:`governance_dev.seed.cast`); the pure
generator in :mod:`governance_dev.seed.generate`.
"""

from __future__ import annotations

from governance_dev.seed.cast import CAST, CAST_ID_BASE, CAST_KEYS, CastSubject, cast_member
from governance_dev.seed.generate import DEFAULT_SEED, SCALES, TABLE_ORDER, generate_reference_data
from governance_dev.seed.load import (
    SeedError,
    SeedRefused,
    SeedReport,
    SeedTargets,
    seed_reference_deployment,
)

__all__ = [
    "CAST",
    "CAST_ID_BASE",
    "CAST_KEYS",
    "DEFAULT_SEED",
    "SCALES",
    "TABLE_ORDER",
    "CastSubject",
    "SeedError",
    "SeedRefused",
    "SeedReport",
    "SeedTargets",
    "cast_member",
    "generate_reference_data",
    "seed_reference_deployment",
]
