"""docker-compose.yaml, Dockerfile and .env.example checked against the code.

No Docker engine runs where the tests run, so the production-shaped stack is kept honest by parsing
it: the services the design names, every connection id the package uses, the mounted project
folders, no literal secret, every variable documented, and one Airflow version everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from governance import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"
DEVTOOLS = ROOT / "devtools"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)
REQUIRED_SERVICES = (
    *AIRFLOW_SERVICES,
    "postgres",
    "app-postgres",
    "redis",
    "minio",
    "minio-init",
    "marquez",
    "marquez-db",
    "marquez-web",
)
# Connections that may be absent (the notifier then only logs); still wired to a variable.
OPTIONAL_CONN_IDS = {config.ALERTS_CONN_ID}
# Connections held by one service only, never by every Airflow container (least privilege).
INIT_ONLY_CONN_IDS = {config.MIGRATION_CONN_ID}
# Distributions released in lockstep with Airflow itself (providers and the task SDK have their own
# version numbers).
AIRFLOW_LOCKSTEP_DISTRIBUTIONS = ("apache-airflow", "apache-airflow-core")

SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|KEY|TOKEN", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}
VAR_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])(?P<rest>[^}]*))?\}")
BARE_VAR = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]*:(?P<password>[^@\s]*)@", re.IGNORECASE)


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict) and "services" in loaded
    return loaded


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    return _environment(compose["x-airflow-common"])


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _compose_strings(node: Any) -> Iterator[str]:
    """Every string value in the parsed compose file (comments excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _compose_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _compose_strings(item)


def compose_variables(text: str) -> set[str]:
    """Names compose interpolates in ``text``; ``$$`` is an escaped, container-side dollar."""
    text = text.replace("$$", "")
    return {m["name"] for m in VAR_REF.finditer(text)} | {m["name"] for m in BARE_VAR.finditer(text)}


def fill_vars(value: str) -> str:
    """``value`` with each ${VAR...} replaced by a plain token, as after interpolation."""
    return VAR_REF.sub("placeholder", value)


def is_var_ref(value: str) -> bool:
    return VAR_REF.fullmatch(value.strip()) is not None


def can_resolve_to_empty(value: str) -> bool:
    """True for ``${VAR}``, ``${VAR:-}``, ``${VAR-}`` (empty or unset variable gives "")."""
    match = VAR_REF.fullmatch(value.strip())
    if match is None:
        return value.strip() == ""
    return "?" not in value and not (match["rest"] or "").strip()


def env_example_values() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example line is not NAME=value: {line!r}"
        values[name.strip()] = value.strip().strip("'\"")
    return values


def literal_secrets(key: str, value: str) -> list[str]:
    """Problems with one environment entry: secrets that are literals instead of ${VAR} references."""
    problems: list[str] = []
    if is_var_ref(value):
        return problems
    for match in URL_WITH_PASSWORD.finditer(value):
        if match["password"] and not is_var_ref(match["password"]):
            problems.append(f"{key}: URL with a literal password")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for field_name in ("password",):
            field_value = str(parsed.get(field_name) or "")
            if field_value and not is_var_ref(field_value):
                problems.append(f"{key}: JSON field {field_name!r} is a literal")
        for extra_key, extra_value in (parsed.get("extra") or {}).items():
            if SECRET_NAME.search(extra_key) and isinstance(extra_value, str) and not is_var_ref(extra_value):
                problems.append(f"{key}: extra {extra_key!r} is a literal")
    elif SECRET_NAME.search(key) and value.strip():
        problems.append(f"{key}: secret-looking value is a literal")
    return problems


def requirement_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def dockerfile_base_image() -> tuple[str, str]:
    """(airflow version, python version) of the Dockerfile's ``FROM apache/airflow:X-pythonY``."""
    pattern = r"^FROM\s+apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$"
    match = re.search(pattern, DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile must start FROM apache/airflow:<version>-python<version>"
    return match["airflow"], match["python"]


# --- the helpers themselves (so a broken helper cannot make the checks below vacuous) ----------


def test_secret_detector_flags_literal_secrets_and_accepts_variable_references() -> None:
    assert literal_secrets("AIRFLOW__CORE__FERNET_KEY", "abc123") != []
    assert literal_secrets("AIRFLOW__CORE__FERNET_KEY", "${AIRFLOW_FERNET_KEY:?required}") == []
    assert (
        literal_secrets("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:airflow@postgres/db")
        != []
    )
    assert (
        literal_secrets("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:${PW}@postgres/db") == []
    )
    assert literal_secrets("AIRFLOW_CONN_CRM", '{"conn_type": "http", "password": "hunter22"}') != []
    assert literal_secrets("AIRFLOW_CONN_CRM", '{"conn_type": "http", "password": "${CRM_API_KEY}"}') == []
    assert compose_variables("a ${A:?x} $B $${C} $$D ${E:-}") == {"A", "B", "E"}


# --- services ------------------------------------------------------------------------------


def test_compose_defines_every_service_of_the_stack(compose: dict[str, Any]) -> None:
    missing = sorted(set(REQUIRED_SERVICES) - set(compose["services"]))
    assert missing == []


def test_airflow_services_share_the_image_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]
    build = common["build"]
    context = build if isinstance(build, str) else build["context"]
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        assert service.get("image") == common["image"], name
        assert service.get("build") == common["build"], name


def test_dockerfile_installs_the_pinned_requirements_and_the_governance_package() -> None:
    text = DOCKERFILE.read_text()
    copy = re.search(r"^COPY\s+(?:--\S+\s+)*requirements\.txt\s+(?P<dest>\S+)\s*$", text, re.MULTILINE)
    assert copy, "Dockerfile must COPY requirements.txt into the image"
    assert re.search(rf"pip install[^\n]*-r\s+{re.escape(copy['dest'])}(\s|$)", text), (
        "Dockerfile must pip install -r the requirements.txt it copied"
    )
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in compose["services"].items():
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in _environment(service), f"{name} installs at start-up"
    # `python -m governance` in the image: pyproject.toml and the package copied, then installed.
    assert re.search(r"^COPY\s+(?:--\S+\s+)*pyproject\.toml\s", text, re.MULTILINE)
    assert re.search(r"^COPY\s+(?:--\S+\s+)*plugins/governance\s", text, re.MULTILINE)
    assert re.search(r"pip install[^\n]*--no-deps\s+/\S+", text)


def test_dockerfile_and_build_context_leave_the_development_tools_out() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for line in instructions:
        assert "devtools" not in line and "governance_dev" not in line, line
        assert "requirements-dev" not in line, line
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip().startswith("!")]
    assert not any("devtools" in rule or "requirements-dev" in rule for rule in rules), rules


def test_airflow_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker
    # A fixed host port would make the second replica fail to start.
    assert not worker.get("ports")
    assert worker.get("command") == "celery worker"


def test_executor_is_celery_with_the_redis_service_as_broker(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(fill_vars(common_env["AIRFLOW__CELERY__BROKER_URL"])).hostname == "redis"
    assert urlsplit(fill_vars(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])).hostname == "postgres"
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"


@pytest.mark.parametrize("service", ["postgres", "app-postgres", "redis", "minio", "marquez-db", "marquez"])
def test_backing_service_has_a_healthcheck(compose: dict[str, Any], service: str) -> None:
    healthcheck = compose["services"][service].get("healthcheck") or {}
    assert healthcheck.get("test"), f"{service} has no healthcheck test"


def test_airflow_components_wait_for_healthy_backends_and_the_init_job(compose: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        if name == "airflow-init":
            continue
        depends = compose["services"][name]["depends_on"]
        for backend in ("postgres", "redis", "app-postgres", "marquez"):
            assert depends[backend]["condition"] == "service_healthy", (name, backend)
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
    init_depends = compose["services"]["airflow-init"]["depends_on"]
    assert init_depends["postgres"]["condition"] == "service_healthy"
    assert init_depends["app-postgres"]["condition"] == "service_healthy"


def test_airflow_init_migrates_the_metadata_db_and_the_governance_schema(compose: dict[str, Any]) -> None:
    init = compose["services"]["airflow-init"]
    assert _environment(init)["_AIRFLOW_DB_MIGRATE"] == "true"
    command = init["command"] if isinstance(init["command"], str) else "\n".join(init["command"])
    assert re.search(r"(^|\s)python -m governance migrate(\s|$)", command)


def test_minio_init_creates_a_versioned_bucket_with_default_encryption(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "mc mb --ignore-existing" in script
    assert "mc version enable" in script
    assert re.search(r"mc encrypt set sse-(s3|kms)", script)
    assert _environment(init)["BUCKET"].startswith("${GOVERNANCE_OBJECTS_BUCKET")
    assert compose["services"]["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_lineage_is_redacted_then_sent_over_http_to_the_marquez_service(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    from governance.lineage import LineageEventRedactor

    wrapper = json.loads(common_env["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    assert wrapper["type"] == "transform"
    module, _, name = wrapper["transformer_class"].rpartition(".")
    assert (module, name) == (LineageEventRedactor.__module__, LineageEventRedactor.__name__)
    transport = wrapper["transport"]
    assert transport["type"] == "http"
    host = urlsplit(transport["url"]).hostname
    assert host in compose["services"]
    assert compose["services"][host]["image"].startswith("marquezproject/marquez:")
    assert common_env["AIRFLOW__OPENLINEAGE__NAMESPACE"]


# --- mounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["dags", "plugins", "include"])
def test_project_folder_is_mounted_into_every_airflow_container(compose: dict[str, Any], folder: str) -> None:
    for name in AIRFLOW_SERVICES:
        mounts = [fill_vars(str(v)).split(":") for v in compose["services"][name]["volumes"]]
        assert any(
            src.rstrip("/").endswith(f"/{folder}") and dest == f"/opt/airflow/{folder}"
            for src, dest, *_ in mounts
        ), f"{name} does not mount ./{folder} at /opt/airflow/{folder}"
        assert (ROOT / folder).is_dir()


# --- connections -------------------------------------------------------------------------------


def project_conn_ids() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(config).items()
        if name.endswith("_CONN_ID") and isinstance(value, str) and value not in INIT_ONLY_CONN_IDS
    }


def test_project_connection_ids_are_found_in_governance_config() -> None:
    # Guards the next test against passing vacuously if the constants were renamed.
    assert {"aircalls_app", "aircalls_objects", "governance_db", "governance_hash_key"} <= set(
        project_conn_ids().values()
    )


@pytest.mark.parametrize("const_name", sorted(project_conn_ids()))
def test_every_connection_id_in_config_is_provided_as_an_airflow_conn_variable(
    common_env: dict[str, str], const_name: str
) -> None:
    conn_id = project_conn_ids()[const_name]
    env_name = f"AIRFLOW_CONN_{conn_id.upper()}"
    assert env_name in common_env, (
        f"{const_name}={conn_id!r} is not wired: add {env_name} to x-airflow-common"
    )
    value = common_env[env_name]
    assert compose_variables(value), f"{env_name} must be built from variables"
    if conn_id not in OPTIONAL_CONN_IDS:
        assert not can_resolve_to_empty(value), f"{env_name} may silently be empty: use ${{VAR:?message}}"


def test_connection_json_is_valid_once_variables_are_filled_in(common_env: dict[str, str]) -> None:
    checked = 0
    for name, value in common_env.items():
        if not name.startswith("AIRFLOW_CONN_") or is_var_ref(value):
            continue
        conn = json.loads(fill_vars(value))
        assert conn.get("conn_type"), name
        checked += 1
    assert checked >= 4
    objects = json.loads(fill_vars(common_env[f"AIRFLOW_CONN_{config.OBJECTS_CONN_ID.upper()}"]))
    assert urlsplit(objects["extra"]["endpoint_url"]).hostname == "minio"
    app = json.loads(fill_vars(common_env[f"AIRFLOW_CONN_{config.APP_CONN_ID.upper()}"]))
    assert app["host"] == "app-postgres"


def test_key_connections_take_their_secret_from_variables(common_env: dict[str, str]) -> None:
    for conn_id in (config.HASH_KEY_CONN_ID, config.ENCRYPTION_KEY_CONN_ID):
        value = common_env[f"AIRFLOW_CONN_{conn_id.upper()}"]
        assert is_var_ref(value) and "?" in value, f"{conn_id} must be a required ${{VAR:?...}}"


# --- secrets and variables -------------------------------------------------------------------


def test_no_service_environment_holds_a_literal_secret(compose: dict[str, Any]) -> None:
    problems: list[str] = []
    for name, service in {"x-airflow-common": compose["x-airflow-common"], **compose["services"]}.items():
        for key, value in _environment(service).items():
            problems += [f"{name}: {p}" for p in literal_secrets(key, value)]
    for name, cfg in (compose.get("configs") or {}).items():
        for line in str(cfg.get("content") or "").splitlines():
            if (m := re.match(r"\s*password:\s*(\S.*)$", line)) and not is_var_ref(m[1]):
                problems.append(f"configs.{name}: literal password")
    assert problems == []


def test_jwt_secret_and_fernet_key_are_required_variables(common_env: dict[str, str]) -> None:
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        value = common_env[key]
        assert is_var_ref(value) and ":?" in value, f"{key} must be ${{VAR:?message}}"


def test_every_compose_variable_is_listed_in_env_example(compose: dict[str, Any]) -> None:
    used = set().union(*(compose_variables(s) for s in _compose_strings(compose)))
    assert len(used) > 10
    assert sorted(used - set(env_example_values())) == []


def test_env_example_lists_only_variables_the_compose_file_uses(compose: dict[str, Any]) -> None:
    used = set().union(*(compose_variables(s) for s in _compose_strings(compose)))
    assert sorted(set(env_example_values()) - used) == []


def test_env_example_secrets_are_placeholders_to_replace() -> None:
    for name, value in env_example_values().items():
        if SECRET_NAME.search(name) or name.endswith("_CONN"):
            if value:
                assert "REPLACE_ME" in value, f"{name} in .env.example must be a REPLACE_ME placeholder"
                for field_value in re.findall(r'"password":\s*"([^"]*)"', value):
                    assert "REPLACE_ME" in field_value, name


def test_dockerignore_keeps_local_secrets_and_state_out_of_the_image() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "start from an empty build context and allow-list what the Dockerfile copies"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+?)/?\s+\S+\s*$", DOCKERFILE.read_text(), re.MULTILINE))
    assert all(any(c == a or c.startswith(a + "/") for a in allowed) for c in copied), (copied, allowed)
    assert not any(a.startswith(".env") or a.startswith(".venv") or a.startswith(".state") for a in allowed)


# --- one Airflow version everywhere -------------------------------------------------------------


def test_airflow_pins_in_requirements_match_the_dockerfile_base_image() -> None:
    airflow_version, _python = dockerfile_base_image()
    pins = requirement_pins()
    for dist in AIRFLOW_LOCKSTEP_DISTRIBUTIONS:
        assert pins.get(dist) == airflow_version, (
            f"{dist}=={pins.get(dist)} but the image is Airflow {airflow_version}"
        )
    default_image = re.search(r"\$\{AIRFLOW_IMAGE_NAME:-[^:}]+:(?P<tag>[^}]+)\}", COMPOSE_FILE.read_text())
    assert default_image and default_image["tag"] == airflow_version


def test_dockerfile_python_matches_the_python_requirements_were_locked_for() -> None:
    _airflow, python_version = dockerfile_base_image()
    locked_for = re.search(r"--python-version\s+(\d+\.\d+)", REQUIREMENTS.read_text())
    assert locked_for, "requirements.txt header must record the Python it was compiled for"
    assert python_version == locked_for[1]


# --- privacy of Airflow itself -----------------------------------------------------------------


def test_identity_field_names_are_sensitive_to_airflows_secrets_masker(common_env: dict[str, str]) -> None:
    names = {n.strip() for n in common_env["AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES"].split(",")}
    assert names == set(config.AIRFLOW_SENSITIVE_NAMES.split(","))


def test_maintenance_service_runs_the_maintain_loop_with_the_project_image_after_init(compose: dict[str, Any]) -> None:
    service = compose["services"]["governance-maintenance"]
    common = compose["x-airflow-common"]
    assert service["image"] == common["image"]
    command = service["command"] if isinstance(service["command"], str) else "\n".join(service["command"])
    match = re.search(r"(^|\s)python -m governance maintain(?P<args>[^\n]*)", command)
    assert match, command
    # The arguments are the command's own: parsing them must succeed, and scrubbing and anchoring
    # happen at least every 5 minutes.
    from governance import maintenance

    parser = argparse.ArgumentParser()
    maintenance.add_arguments(parser)
    args = parser.parse_args(match.group("args").split())
    assert not args.once and args.every <= 300
    assert maintenance.parse_age(args.anchor_interval).total_seconds() <= 300
    heartbeat = str(args.heartbeat)
    assert heartbeat in " ".join(service["healthcheck"]["test"]), "the healthcheck reads the heartbeat the loop writes"
    assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- development tools in the stack -------------------------------------------------------------


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else "\n".join(command)


def test_no_service_on_the_airflow_image_runs_the_development_package(compose: dict[str, Any]) -> None:
    # The image has no governance_dev (Dockerfile: runtime only), so such a service would fail at start.
    image = compose["x-airflow-common"]["image"]
    for name, service in compose["services"].items():
        if service.get("image") == image:
            assert "governance_dev" not in _command_text(service), name
            assert "governance_dev" not in str(service.get("entrypoint") or ""), name


def test_processor_standins_run_from_the_mounted_development_package_on_a_plain_python_image(
    compose: dict[str, Any],
) -> None:
    service = compose["services"]["processor-standins"]
    assert service["profiles"] == ["standins"]
    _airflow, python_version = dockerfile_base_image()
    assert re.fullmatch(rf"python:{re.escape(python_version)}(-slim)?", service["image"]), service["image"]
    env = _environment(service)
    mounts = [fill_vars(str(v)).split(":") for v in service["volumes"]]
    assert any(src.rstrip("/").endswith("/devtools") and dest == env["PYTHONPATH"] for src, dest, *_ in mounts), mounts
    match = re.search(r"python -m governance_dev\.standins(?P<args>[^\n]*)", _command_text(service))
    assert match, _command_text(service)
    # The arguments are the stand-ins' own: parsing them must succeed.
    from governance_dev.standins.__main__ import _parser

    args = _parser().parse_args(shlex.split(match["args"].replace("$$", "$")))
    assert args.host == "0.0.0.0" and {args.payments_port, args.crm_port, args.support_desk_port} == {8101, 8102, 8103}
    assert set(map(str, service["expose"])) == {"8101", "8102", "8103"}


def test_processor_standins_need_only_the_standard_library() -> None:
    # What the plain python image has: no site-packages (-S), only the mounted devtools on the path.
    result = subprocess.run(
        [sys.executable, "-S", "-m", "governance_dev.standins", "--help"],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(DEVTOOLS), "PYTHONNOUSERSITE": "1"},
        cwd=DEVTOOLS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--payments-port" in result.stdout


def test_published_ports_listen_on_loopback_unless_a_bind_address_is_set(compose: dict[str, Any]) -> None:
    published = [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]
    assert published, "the UI ports are published"
    for name, port in published:
        assert str(port).startswith("${GOVERNANCE_BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"


def _init_guard(compose: dict[str, Any]) -> str:
    script = compose["services"]["airflow-init"]["command"][-1].replace("$$", "$")
    start, end = script.index("set -euo pipefail"), script.index("mkdir -p /opt/airflow/logs")
    return script[start:end] + "echo guard passed\n"


def test_airflow_init_refuses_to_start_with_the_placeholders_of_env_example(compose: dict[str, Any]) -> None:
    guard = _init_guard(compose)
    clean = {"PATH": os.environ["PATH"], "APP_DB_PASSWORD": "s3cret-generated"}
    ok = subprocess.run(["bash", "-c", guard], env=clean, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "guard passed" in ok.stdout, ok.stderr
    placeholders = {**clean, "AIRFLOW_CONN_CRM": '{"host": "https://crm.REPLACE_ME.invalid"}',
                    "AIRFLOW__CORE__FERNET_KEY": "REPLACE_ME_fernet_key"}  # fmt: skip
    refused = subprocess.run(["bash", "-c", guard], env=placeholders, capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "guard passed" not in refused.stdout
    assert "AIRFLOW_CONN_CRM" in refused.stderr and "AIRFLOW__CORE__FERNET_KEY" in refused.stderr
    assert "crm.REPLACE_ME" not in refused.stderr, "names the variables, never prints their values"


def test_minio_grants_the_objects_connection_only_the_actions_it_needs_on_its_two_buckets(
    compose: dict[str, Any],
) -> None:
    script = compose["services"]["minio-init"]["command"][-1].replace("$$", "$")
    policy_text = script.split("<<EOF\n", 1)[1].split("\nEOF", 1)[0]
    policy = json.loads(policy_text.replace("$BUCKET", "data").replace("$ANCHOR_BUCKET", "anchors"))
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert not any("*" in a for a in actions), "no wildcard actions"
    assert resources == {"arn:aws:s3:::data", "arn:aws:s3:::data/*", "arn:aws:s3:::anchors", "arn:aws:s3:::anchors/*"}
    anchor_actions = {a for s in policy["Statement"] for a in s["Action"] if "arn:aws:s3:::anchors/*" in s["Resource"]}
    assert anchor_actions == {"s3:GetObject", "s3:PutObject"}, "anchors can be written and read, never deleted"
    assert "|| true" not in script, "a failed step is not ignored"


# --- database roles (least privilege) -----------------------------------------------------------

ROLES_SCRIPT = ROOT / "include" / "sql" / "roles" / "database_roles.sql"


def _conn_json(env: dict[str, str], conn_id: str) -> dict[str, Any]:
    return dict(json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"]))


def _var_name(value: str) -> str:
    match = VAR_REF.fullmatch(value.strip())
    assert match, f"{value!r} is not a ${{VAR}} reference"
    return match["name"]


def test_airflow_containers_log_in_to_the_app_database_as_the_task_role_never_as_its_superuser(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    for conn_id in (config.APP_CONN_ID, config.GOVERNANCE_CONN_ID):
        conn = _conn_json(common_env, conn_id)
        assert _var_name(conn["login"]) == config.TASK_ROLE_ENV, conn_id
        assert _var_name(conn["password"]) == "GOVERNANCE_TASK_DB_PASSWORD", conn_id
        assert ":?" in conn["password"], f"{conn_id}: the task role's password is required"
    # The app database's superuser password is app-postgres's own: no other service sees it.
    holders = [name for name, service in compose["services"].items() if "APP_DB_PASSWORD" in json.dumps(service)]
    assert holders == ["app-postgres"]
    assert "APP_DB_PASSWORD" not in json.dumps(compose["x-airflow-common"])
    # Tasks check the schema rather than migrate it: the migration role is named for every container.
    assert _var_name(common_env[config.MIGRATION_ROLE_ENV]) == config.MIGRATION_ROLE_ENV
    assert _var_name(common_env[config.LEDGER_WRITER_ROLE_ENV]) == config.LEDGER_WRITER_ROLE_ENV


def test_only_airflow_init_holds_the_migration_roles_connection_and_it_migrates_then_applies_the_grants(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    env_name = f"AIRFLOW_CONN_{config.MIGRATION_CONN_ID.upper()}"
    assert env_name not in common_env
    holders = [name for name, service in compose["services"].items() if env_name in _environment(service)]
    assert holders == ["airflow-init"]
    init = _environment(compose["services"]["airflow-init"])
    conn = _conn_json(init, config.MIGRATION_CONN_ID)
    assert conn["conn_type"] == "postgres" and conn["host"] == "app-postgres"
    assert _var_name(conn["login"]) == config.MIGRATION_ROLE_ENV
    assert _var_name(conn["password"]) == "GOVERNANCE_MIGRATOR_DB_PASSWORD" and ":?" in conn["password"]
    assert conn["schema"] == _conn_json(common_env, config.GOVERNANCE_CONN_ID)["schema"]
    lines = [line.strip() for line in _command_text(compose["services"]["airflow-init"]).splitlines()]
    migrate, grants = lines.index("python -m governance migrate"), lines.index("python -m governance grants --apply")
    assert migrate < grants, "grants cover the tables the migrations create"
    # The arguments are the command's own.
    from governance import grants as grants_command

    parser = argparse.ArgumentParser()
    grants_command.add_arguments(parser)
    assert parser.parse_args(["--apply"]).apply


def test_app_postgres_creates_the_roles_after_the_app_schema_with_the_names_and_passwords_the_script_reads(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    service = compose["services"]["app-postgres"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"] if m.startswith("./")}
    scripts = sorted((target, source) for source, target in mounts.items() if "docker-entrypoint-initdb.d" in target)
    assert [Path(source).name for _target, source in scripts] == ["app_schema.sql", "database_roles.sql"]
    assert scripts[1][1].removeprefix("./") == str(ROLES_SCRIPT.relative_to(ROOT))
    read = set(re.findall(r"^\\getenv\s+\w+\s+(\w+)$", ROLES_SCRIPT.read_text(), re.MULTILINE))
    assert {"GOVERNANCE_MIGRATOR_DB_PASSWORD", "GOVERNANCE_TASK_DB_PASSWORD", config.TASK_ROLE_ENV} <= read
    env = _environment(service)
    assert sorted(read - set(env)) == ["GOVERNANCE_APP_SCHEMA"], "the app schema's default (app) is the map's"
    # One name per role across the stack: what app-postgres creates is what the containers use.
    for name in (config.MIGRATION_ROLE_ENV, config.TASK_ROLE_ENV, config.LEDGER_WRITER_ROLE_ENV):
        assert env[name] == common_env[name], name


def test_app_owner_runs_the_roles_script_again_after_airflow_init_to_own_the_partition_function(
    compose: dict[str, Any],
) -> None:
    # The script hands governance.drop_expired_partition to whoever runs it only where the function
    # exists, i.e. after airflow-init migrated: app-postgres's first start ran it too early.
    script = (ROOT / "include/sql/roles/database_roles.sql").read_text()
    assert "ALTER FUNCTION governance.drop_expired_partition" in script and "OWNER TO %I', current_user" in script
    owner = compose["services"]["app-db-owner-init"]
    assert owner["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert owner["depends_on"]["app-postgres"]["condition"] == "service_healthy"
    mount = next(v for v in owner["volumes"] if v.startswith("./include/sql/roles/database_roles.sql:"))
    assert owner["command"][-1] == mount.split(":")[1]
    env, app = _environment(owner), _environment(compose["services"]["app-postgres"])
    # The app's owner (app-postgres's POSTGRES_USER) on the app database, with what the script reads.
    # ... logged in over app-postgres's own loopback (the image trusts it), so the superuser's
    # password stays app-postgres's alone (test above).
    assert owner["network_mode"] == "service:app-postgres"
    assert (env["PGHOST"], env["PGUSER"], env["PGDATABASE"]) == ("127.0.0.1", app["POSTGRES_USER"], app["POSTGRES_DB"])
    assert "PGPASSWORD" not in env
    for name in ("GOVERNANCE_MIGRATION_ROLE", "GOVERNANCE_TASK_ROLE", "GOVERNANCE_LEDGER_WRITER_ROLE",
                 "GOVERNANCE_MIGRATOR_DB_PASSWORD", "GOVERNANCE_TASK_DB_PASSWORD"):  # fmt: skip
        assert env[name] == app[name], name
    assert owner["restart"] == "no"
