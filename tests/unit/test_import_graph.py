"""The package's import graph, read from the source (AST, every import including those inside
functions): configuration, identity normalisation and the data map do not import each other in
a circle, so normalising an identity never reads YAML and configuration never loads the map."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "governance"
CORE = ("governance.config", "governance.identity", "governance.datamap")


def _module_name(path: Path) -> str:
    parts = ["governance", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: governance modules it imports}``; ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _in(module: str, group: str) -> bool:
    return module == group or module.startswith(group + ".")


def test_config_identity_and_the_data_map_import_each_other_in_no_circle() -> None:
    graph = import_graph()
    assert "governance.datamap.loader" in graph and "governance.config" in graph["governance.datamap.loader"]
    for group in CORE:
        members = [m for m in graph if _in(m, group)]
        for member in members:
            for other in CORE:
                if other == group:
                    continue
                # member reaches the other group, which must not reach back into this one
                if any(_in(m, other) for m in _reach(graph, member)):
                    back = {m for o in graph if _in(o, other) for m in _reach(graph, o) if _in(m, group)}
                    assert not back, f"import circle: {member} -> {other} -> {sorted(back)}"


def test_identity_normalisation_and_configuration_import_nothing_of_the_package() -> None:
    graph = import_graph()
    assert graph["governance.identity"] == set()
    assert graph["governance.config"] == set()
