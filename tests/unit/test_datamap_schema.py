"""The shipped JSON Schema of the data map (include/datamap.schema.json, for editors) is what the
pydantic model generates, and it accepts the shipped map and refuses what the model refuses."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from governance.config import datamap_path
from governance.datamap.schema import SCHEMA_PATH, render_schema


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def shipped_map() -> dict[str, Any]:
    return dict(yaml.safe_load(datamap_path().read_text(encoding="utf-8")))


def test_the_shipped_schema_is_what_the_model_generates() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), (
        "include/datamap.schema.json is stale: run `python -m governance datamap-schema --write`"
    )


def test_the_shipped_map_names_the_schema_for_the_yaml_language_server() -> None:
    first_line = datamap_path().read_text(encoding="utf-8").splitlines()[0]
    assert first_line == f"# yaml-language-server: $schema={SCHEMA_PATH.name}"


def test_the_shipped_map_is_valid_under_the_schema(schema: dict[str, Any], shipped_map: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(shipped_map)


def test_the_schema_refuses_an_unknown_key_as_the_model_does(schema: dict[str, Any], shipped_map: dict[str, Any]) -> None:
    broken = copy.deepcopy(shipped_map)
    broken["systems"][0]["tables"][0]["primary_kee"] = "id"
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(broken))
    assert errors and any("primary_kee" in e.message for e in errors)


def test_the_schema_refuses_an_unknown_erasure_action(schema: dict[str, Any], shipped_map: dict[str, Any]) -> None:
    broken = copy.deepcopy(shipped_map)
    field = next(f for t in broken["systems"][0]["tables"] for f in t["fields"] if "erasure" in f)
    field["erasure"] = "shred"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))


def test_the_package_ships_its_type_information() -> None:
    """py.typed marks the package typed for DAG authors' type checkers; it must be packaged."""
    import tomllib
    from pathlib import Path

    import governance

    root = Path(__file__).resolve().parents[2]
    assert (Path(governance.__file__).parent / "py.typed").exists()
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["governance"]
