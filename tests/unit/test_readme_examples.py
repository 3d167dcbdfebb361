"""Every YAML example in the README is a piece of a valid data map.

A data engineer extends coverage by copying the README's examples into the map, so each fenced
``yaml`` block is extracted, placed where it belongs in a copy of ``include/datamap.yaml`` (a table
under the database system's ``tables``, a prefix under the object store's ``prefixes``, a
processor, a retention rule, a legal exception, a whole system, or top-level sections) and the
copy is run through the same validator as the shipped map. An example whose references name
fields it does not declare, or that uses a key the model does not know, fails here with the
README line it starts on.
"""

from __future__ import annotations

import copy
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from governance.config import INCLUDE_DIR
from governance.datamap.loader import validate_datamap
from governance.datamap.model import DataMapError

README = INCLUDE_DIR.parent / "README.md"
_FENCE = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_TOP_LEVEL = {"version", "settings", "identity_kinds", "systems", "processors", "retention", "legal_exceptions"}


@dataclass(frozen=True)
class Example:
    line: int  # README line of the opening fence
    text: str

    def __str__(self) -> str:
        return f"README.md line {self.line}"


def readme_examples() -> list[Example]:
    text = README.read_text()
    return [Example(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def _section(item: dict[str, Any]) -> str:
    """Where a list item of the map goes, from the keys only a thing of that kind has."""
    if "primary_key" in item:
        return "tables"
    if "key_template" in item:
        return "prefixes"
    if item.get("kind") in ("postgres", "s3", "dynamodb"):
        return "systems"
    if "action" in item and "period" in item:
        return "retention"
    if "basis" in item and "period" in item:
        return "legal_exceptions"
    if "connection_id" in item and ("recipient" in item or "connector" in item or "lookup" in item):
        return "processors"
    raise AssertionError(f"not a recognisable data map item (keys {sorted(item)})")


def _put(items: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """Replace the item of the same name (an example may show a shipped one), else append."""
    for position, existing in enumerate(items):
        if existing.get("name") == item.get("name"):
            items[position] = item
            return
    items.append(item)


def place(fragment: Any, datamap: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``datamap`` with ``fragment`` (a list of items or a mapping of top-level sections)
    where a data engineer would paste it."""
    placed = copy.deepcopy(datamap)
    database = next(s for s in placed["systems"] if s["kind"] == "postgres")
    objects = next(s for s in placed["systems"] if s["kind"] == "s3")
    if isinstance(fragment, dict) and set(fragment) <= _TOP_LEVEL:
        for key, value in fragment.items():
            if isinstance(value, list):
                for item in value:
                    _put(placed.setdefault(key, []), item)
            else:
                placed[key] = value
        return placed
    assert isinstance(fragment, list) and fragment, "expected list items (`- name: ...`) or top-level sections"
    for item in fragment:
        assert isinstance(item, dict), "each item is a mapping"
        section = _section(item)
        target = {"tables": database, "prefixes": objects}.get(section, placed)
        _put(target.setdefault(section, []), item)
    return placed


@pytest.fixture(scope="module")
def shipped_map() -> dict[str, Any]:
    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_readme_has_yaml_examples_to_check() -> None:
    examples = readme_examples()
    assert len(examples) >= 2, "the README's extension section shows a table and a Python connector"
    assert any("name: voicemails" in e.text for e in examples), "the 'Add a table' example"


@pytest.mark.parametrize("example", readme_examples(), ids=str)
def test_readme_yaml_example_placed_in_a_copy_of_the_map_validates(example: Example, shipped_map: dict[str, Any]) -> None:
    fragment = yaml.safe_load(textwrap.dedent(example.text))
    placed = place(fragment, shipped_map)
    try:
        validate_datamap(placed, source=f"README.md example at line {example.line}")
    except DataMapError as exc:
        pytest.fail(f"{example} does not validate when placed in the map:\n{exc}")


def test_an_example_whose_references_name_undeclared_fields_is_caught(shipped_map: dict[str, Any]) -> None:
    """The check is not vacuous: the README's old 'Add a table' example (references to
    business_id and assigned_user_id, neither in its fields) is refused."""
    old = textwrap.dedent("""\
        - name: voicemails
          primary_key: id
          references:
            - {field: business_id, to: {table: businesses}, kind: scope}
            - {field: caller_id, to: {table: callers}, kind: ownership}
            - {field: assigned_user_id, to: {table: users}, kind: mention}
          fields:
            - {name: id, data_category: system.operations, data_use: essential.service.operations}
            - {name: caller_id, data_category: user.unique_id, data_use: essential.service.operations, erasure: delete_row}
            - {name: summary, data_category: user.content.private, data_use: essential.service.operations, erasure: delete_row}
        """)
    with pytest.raises(DataMapError) as caught:
        validate_datamap(place(yaml.safe_load(old), shipped_map), source="old example")
    paths = {issue.path for issue in caught.value.issues}
    assert any("tables[voicemails].references[business_id]" in p for p in paths), caught.value
    assert any("tables[voicemails].references[assigned_user_id]" in p for p in paths), caught.value
