# The Airflow image for the production-shaped stack (docker-compose.yaml).
#
# Extends the official image rather than using _PIP_ADDITIONAL_REQUIREMENTS, as the official
# docker-compose file recommends: dependencies are installed once, at build time, from the same
# pinned requirements.txt the tests run against. The base image's Airflow version must equal the
# apache-airflow pin in requirements.txt (tests/unit/test_compose.py checks it).
#
# Runtime only: requirements.txt holds what the DAGs and the governance package import. The
# development lock (requirements-dev.txt: tests, lint, embedded services) and the development
# package (devtools/: seeder, stand-ins, demo) never enter the image; .dockerignore keeps them out
# of the build context, and tests/unit/test_runtime_split.py imports every DAG with requirements.txt alone.
FROM apache/airflow:3.3.2-python3.11

# Pinning apache-airflow to the image's own version alongside the lock file keeps pip from
# replacing the Airflow the image was built with; the providers the image ships (celery, redis,
# fab) stay installed.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

# The governance package itself (package-dir "plugins"), so `python -m governance ...` works in every
# container, including airflow-init before any volume is mounted.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/project/pyproject.toml
COPY --chown=airflow:0 plugins/governance /opt/airflow/project/plugins/governance
RUN pip install --no-cache-dir --no-deps /opt/airflow/project

# DAGs, plugins and include/ baked in, so the image runs as built; docker-compose.yaml mounts the
# working tree over them for development.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include

# The mounted/baked plugins folder wins over the installed copy (edits take effect without a
# rebuild), and the data map and SQL are read from /opt/airflow/include whichever copy is imported.
ENV PYTHONPATH=/opt/airflow/plugins \
    GOVERNANCE_INCLUDE_DIR=/opt/airflow/include
