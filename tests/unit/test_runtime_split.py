"""Runtime and development apart: what the Airflow image installs runs the DAGs on its own.

The image installs ``requirements.txt`` and the ``governance`` package (plugins/) only. The
development tools (tests, lint, embedded services, seeder, stand-ins, demo) live in
``requirements-dev.txt`` and the ``governance_dev`` package (devtools/), which the runtime must never
import. The last test proves it the way the image would: a fresh virtualenv built from
``requirements.txt`` alone imports every DAG file and every runtime module.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIRS = (ROOT / "plugins", ROOT / "dags")
DEV_PACKAGE = "governance_dev"
# Distributions only development needs; none may reach the runtime lock (and so the image).
DEV_DISTRIBUTIONS = {"pytest", "pytest-xdist", "ruff", "mypy", "moto", "pgserver", "faker", "selenium"}
# What the development modules were before they moved: the runtime package must not grow them back.
MOVED_OUT_OF_RUNTIME = ("seed", "standins", "services.py", "demo.py", "standalone.py")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;#]+)", re.MULTILINE)
REQUIREMENT_NAME = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)", re.MULTILINE)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    return {_normalise(m["name"]): m["version"] for m in PIN.finditer(path.read_text())}


def _requirement_names(path: Path) -> set[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {
        _normalise(m["name"])
        for line in lines
        if line and not line.startswith(("#", "-"))
        if (m := REQUIREMENT_NAME.match(line))
    }


def _is_dev_distribution(name: str) -> bool:
    return name in DEV_DISTRIBUTIONS or name.startswith("types-")


# --- the requirement sets ----------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["requirements.in", "requirements.txt"])
def test_runtime_requirements_hold_no_development_package(file_name: str) -> None:
    names = _requirement_names(ROOT / file_name)
    assert "apache-airflow" in names  # guards against a parser that finds nothing
    assert sorted(n for n in names if _is_dev_distribution(n)) == []


def test_development_lock_is_constrained_by_the_runtime_lock_and_pins_every_development_tool() -> None:
    dev_in = [
        line.strip()
        for line in (ROOT / "requirements-dev.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dev_in[0] == "-c requirements.txt", "requirements-dev.in must start with -c requirements.txt"
    # Every top-level development requirement is an exact pin.
    assert [line for line in dev_in[1:] if "==" not in line] == []
    dev = _pins(ROOT / "requirements-dev.txt")
    runtime = _pins(ROOT / "requirements.txt")
    assert sorted(DEV_DISTRIBUTIONS - set(dev)) == []
    assert dev["selenium"] == "4.51.0"
    # One version of each shared dependency, so the development venv runs what the image runs.
    assert {n: (v, dev[n]) for n, v in runtime.items() if n in dev and dev[n] != v} == {}
    # Both were compiled for the image's Python.
    for path in (ROOT / "requirements.txt", ROOT / "requirements-dev.txt"):
        assert "--python-version 3.11" in path.read_text().split("\n", 3)[1], path.name


# --- the code ------------------------------------------------------------------------------------


def _development_imports(tree: ast.AST) -> Iterator[str]:
    """Where ``tree`` imports or runs the development package: import statements, dynamic imports
    (``importlib.import_module``, ``__import__``, ``find_spec``, ``runpy``) and ``-m governance_dev``
    command lines."""

    def is_dev(name: object) -> bool:
        return isinstance(name, str) and (name == DEV_PACKAGE or name.startswith(DEV_PACKAGE + "."))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (f"line {node.lineno}: import {a.name}" for a in node.names if is_dev(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_dev(node.module):
            yield f"line {node.lineno}: from {node.module} import ..."
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if called in {"import_module", "__import__", "find_spec", "run_module"} and isinstance(
                first, ast.Constant
            ) and is_dev(first.value):
                yield f"line {node.lineno}: {called}({first.value!r})"
        elif isinstance(node, ast.List | ast.Tuple):
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, target in zip(values, values[1:], strict=False):
                if flag == "-m" and is_dev(target):
                    yield f"line {node.lineno}: runs -m {target}"


def _runtime_sources() -> Iterator[Path]:
    for folder in RUNTIME_DIRS:
        yield from sorted(folder.rglob("*.py"))


def test_development_import_scanner_finds_every_form_of_import() -> None:
    # So the next test cannot pass because the scanner sees nothing.
    source = textwrap.dedent(
        """
        import governance_dev
        import governance_dev.seed as seed
        from governance_dev.standins import CrmStandin
        importlib.import_module("governance_dev.demo")
        __import__("governance_dev")
        subprocess.run([sys.executable, "-m", "governance_dev", "seed"])
        from governance import config
        import governance_development_notes
        """
    )
    assert len(list(_development_imports(ast.parse(source)))) == 6


def test_runtime_code_never_imports_the_development_package() -> None:
    sources = list(_runtime_sources())
    assert any(p.name == "cli.py" for p in sources) and any(p.parent.name == "dags" for p in sources)
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sources
        if (hits := list(_development_imports(ast.parse(path.read_text(), filename=str(path)))))
    }
    assert found == {}


def test_development_tools_are_no_longer_in_the_runtime_package() -> None:
    runtime = ROOT / "plugins" / "governance"
    assert sorted(name for name in MOVED_OUT_OF_RUNTIME if (runtime / name).exists()) == []
    dev = ROOT / "devtools" / DEV_PACKAGE
    assert sorted(name for name in MOVED_OUT_OF_RUNTIME if not (dev / name).exists()) == []


def test_runtime_cli_names_the_development_command_instead_of_running_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from governance import cli as runtime_cli
    from governance_dev import cli as dev_cli

    assert set(runtime_cli.DEVELOPMENT_COMMANDS) == set(dev_cli.COMMANDS)
    assert set(runtime_cli.COMMANDS).isdisjoint(dev_cli.COMMANDS)
    assert all(not module.startswith(DEV_PACKAGE) for module, _help in runtime_cli.COMMANDS.values())
    for name in dev_cli.COMMANDS:
        assert runtime_cli.main([name, "--scale", "small"]) == 2
        err = capsys.readouterr().err
        assert f"python -m governance_dev {name} --scale small" in err, err


# --- the image's requirement set, for real ---------------------------------------------------------

# Runs inside the runtime-only venv: prints what it found as one JSON line.
PROBE = """
import importlib, importlib.util, json, pkgutil, sys
dev = sorted(m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
import governance
modules = [m.name for m in pkgutil.walk_packages(governance.__path__, "governance.")
           if not m.name.endswith(".__main__")]
failed = {}
for name in modules + sys.argv[3].split(","):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "development_packages_importable": dev,
    "import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
    "dag_files": sorted({dag.fileloc.rsplit("/", 1)[-1] for dag in bag.dags.values()}),
    "runtime_modules": len(modules),
    "module_errors": failed,
    "development_modules_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "governance_dev"),
}))
"""


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    assert found, "uv not found: `make venv` installs it into .venv"
    return found


@pytest.mark.runtime_venv
def test_every_dag_and_runtime_module_imports_in_a_venv_built_from_requirements_txt_alone(
    tmp_path: Path,
) -> None:
    # A fixed place, rebuilt from nothing each run: uv hard-links the packages from its cache (about
    # 2 s), and the bytecode cache outside the venv is reused across runs (the sources are the same
    # hard-linked files), which saves compiling Airflow on every run.
    venv = ROOT / ".state" / "runtime-venv"
    shutil.rmtree(venv, ignore_errors=True)
    uv = _uv()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", "requirements.txt"]
    # From the cache when it has everything (make venv filled it); otherwise from the registry.
    if subprocess.run([*install, "--offline"], cwd=ROOT, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(install, cwd=ROOT, check=True, timeout=900)

    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    plugin_modules = sorted(p.stem for p in (ROOT / "plugins").glob("*.py"))
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        # As in the image: the plugins folder on the path (Dockerfile ENV PYTHONPATH), nothing else.
        "PYTHONPATH": str(ROOT / "plugins"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONPYCACHEPREFIX": str(ROOT / ".state" / "runtime-venv-pycache"),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
    }
    dev_modules = ["pytest", "xdist", "ruff", "mypy", "moto", "pgserver", "faker", "selenium", DEV_PACKAGE]
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, str(ROOT / "dags"), ",".join(dev_modules), ",".join(plugin_modules)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["development_packages_importable"] == []
    assert report["import_errors"] == {}
    assert report["dag_files"] == sorted(p.name for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
    assert report["runtime_modules"] > 30
    assert report["module_errors"] == {}
    assert report["development_modules_loaded"] == []
    shutil.rmtree(venv, ignore_errors=True)
