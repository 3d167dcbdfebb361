"""The package's own imports sit at module top, except where a local import is the point.

A function-local import of a ``governance`` or ``governance_dev`` module hides the dependency from
readers and keeps mypy from seeing it at module level. Local imports stay only in the modules
that are imported when a DAG file is parsed or when the plugins load (those import task code
lazily so that parsing stays cheap), and where a module-top import would close an import cycle.
The parse-time set is measured here, not listed by hand, so a module that starts being imported at
parse time is allowed its lazy imports, and one that stops is held to the rule.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"governance": ROOT / "plugins" / "governance", "governance_dev": ROOT / "devtools" / "governance_dev"}

# Module-top imports here would close a cycle: the package __init__ re-exports from the module
# that imports it, or a package's registry imports its members which import the package.
CYCLES = {
    ("governance.connectors.base", "governance.connectors"),
    ("governance.datamap", "governance.datamap.loader"),
    ("governance_dev.seed.load", "governance_dev.seed"),
}
# Command-line entry points load each command's module when that command runs.
ENTRY_POINTS = {"governance.cli", "governance.__main__", "governance_dev.cli", "governance_dev.__main__"}

PROBE = r"""
import importlib.util, json, sys
from pathlib import Path
root = Path(sys.argv[1])
for path in sorted((root / "dags").glob("*.py")) + sorted((root / "plugins").glob("*_plugin.py")):
    spec = importlib.util.spec_from_file_location(f"probe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("governance", "governance_dev"))))
"""


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _local_first_party_imports(packages: dict[str, Path]) -> list[tuple[str, int, str]]:
    found = []
    for package, root in packages.items():
        for path in sorted(root.rglob("*.py")):
            module = _module_name(package, root, path)
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        targets = [_resolve(module, path.name == "__init__.py", node)]
                    elif isinstance(node, ast.Import):
                        targets = [alias.name for alias in node.names]
                    else:
                        continue
                    for target in targets:
                        if target.split(".")[0] in PACKAGES:
                            found.append((module, node.lineno, target))
    return sorted(set(found))


def test_only_parse_time_modules_and_cycle_breakers_import_the_package_inside_functions() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, timeout=300, check=True
    )
    parse_time = set(json.loads(probe.stdout.strip().splitlines()[-1]))
    assert "governance.airflow.blocks" in parse_time, "the probe imported the DAG files"

    offenders = [
        f"{module}:{line} imports {target}"
        for module, line, target in _local_first_party_imports(PACKAGES)
        if module not in parse_time
        and module not in ENTRY_POINTS
        and not any(module == m and (target == t or target.startswith(t + ".")) for m, t in CYCLES)
    ]
    assert not offenders, "move these imports to module top (TYPE_CHECKING for types only):\n" + "\n".join(
        offenders
    )


def test_the_scanner_finds_a_planted_local_import_and_ignores_module_top_ones(tmp_path: Path) -> None:
    """So an empty list of offenders above means there are none, not that the scan saw nothing."""
    package = tmp_path / "governance"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text(
        "from governance.identity import normalise_email\n"
        "import json\n\n"
        "def f():\n"
        "    import json as j\n"
        "    from ..config import Settings\n"
        "    return j, Settings, normalise_email\n"
    )
    assert _local_first_party_imports({"governance": package}) == [("governance.sub.mod", 6, "governance.config")]
