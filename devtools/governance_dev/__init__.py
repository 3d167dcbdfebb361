"""Development tools for the aircalls governance project; never part of the Airflow image.

The reference deployment's seeder (:mod:`governance_dev.seed`), the processor stand-ins
(:mod:`governance_dev.standins`), the embedded services (:mod:`governance_dev.services`: PostgreSQL
from ``pgserver``, moto's S3 server, the stand-ins), ``make demo`` (:mod:`governance_dev.demo`) and
``make airflow`` (:mod:`governance_dev.standalone`). Run them with ``python -m governance_dev COMMAND``.

This package depends on the runtime package ``governance``; the runtime never imports this one
(``tests/unit/test_runtime_split.py`` checks it). Installed for development only, by ``make venv``
(``pip install -e devtools``, with ``requirements-dev.txt``). Importing it imports nothing else,
so ``python -m governance_dev.standins`` runs on a bare Python (the stand-ins are standard library only).
"""
