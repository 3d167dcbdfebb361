# aircalls governance workflows. Two commands do all set-up from a fresh clone:
#   make demo   - venv, embedded services, reference data, every DAG run once, a summary
#   make test   - lint, type-check and the whole test suite against real services
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
# pytest-xdist workers; each has its own Airflow metadata DB, S3 server, stand-ins and reference
# template, so tests stay isolated (--dist loadfile keeps a module's fixtures in one worker; the
# longest modules start first, see tests/conftest.py).
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: help venv lint test test-fast demo airflow airflow-stop services-start services-stop lock bench bench-intake celery-check clean

help:
	@echo "make demo | make test | make airflow | make lint | make bench | make lock | make clean"
	@echo "make celery-check: intake, export and erasure end to end under the CeleryExecutor (two workers, Redis on 127.0.0.1:6379)"
	@echo "make bench-intake REQUESTS=N: N requests dispatched by the intake under LocalExecutor and CeleryExecutor (requests/hour, p50/p95)"

# uv itself, in the venv (make lock needs only this, not the locked packages).
$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The development venv: the runtime lock (what the Airflow image installs) plus the development
# lock (tests, lint, embedded services, seeder), then both packages editable: governance
# (plugins/) and governance_dev (devtools/, never in the image).
$(STAMP): $(UV) requirements.txt requirements-dev.txt pyproject.toml devtools/pyproject.toml
	$(UV) pip install --quiet --python $(PY) -r requirements.txt -r requirements-dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps -e . -e devtools
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check plugins devtools dags tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: venv
	$(PY) -m pytest -q tests/unit

demo: venv
	$(PY) -m governance_dev demo

services-start: venv
	$(PY) -m governance_dev services start

services-stop: venv
	$(PY) -m governance_dev services stop

# The Airflow UI on the embedded services: http://127.0.0.1:8080 (GOVERNANCE_AIRFLOW_PORT), user
# "admin", password in .state/airflow/simple_auth_manager_passwords.json.generated. Ctrl-C (or
# `make airflow-stop` from another shell) stops Airflow and every task process; the services keep
# running until `make services-stop`. exec: make's SIGTERM reaches the launcher itself.
airflow: venv
	exec $(PY) -m governance_dev airflow

airflow-stop: venv
	$(PY) -m governance_dev airflow --stop

bench: venv
	$(PY) benchmarks/parse.py
	$(PY) benchmarks/seed.py --scale large

# Intake, export and erasure under the CeleryExecutor: api-server, scheduler, dag-processor and two
# `airflow celery worker` processes on loopback (metadata and result backend on PostgreSQL, broker
# the Redis on 127.0.0.1:6379); every process is stopped after. About 5 minutes on 2 busy cores.
celery-check: venv
	$(PY) -m pytest -q -n 0 -p no:cacheprovider tests/dags/test_celery_executor.py

REQUESTS ?= 200
bench-intake: venv
	$(PY) benchmarks/intake.py --requests $(REQUESTS)

# Runtime first: the development lock is constrained by it (-c requirements.txt).
lock: $(UV)
	$(UV) pip compile --quiet requirements.in -o requirements.txt --python-version 3.11
	$(UV) pip compile --quiet requirements-dev.in -o requirements-dev.txt --python-version 3.11

clean:
	-$(PY) -m governance_dev services stop
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache
