"""The subprocessor file and the transfer reference data: a malformed file fails with the file,
the entry and the reason (``FILE: PATH: MESSAGE (line N)``), every problem at once, no traceback.

Each case writes a real file (a copy of ``include/subprocessors.yaml`` with one thing broken) to a
temporary folder and loads it as the DAG does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance.cli import main
from governance.config import INCLUDE_DIR
from governance.datamap import load_datamap
from governance.datamap.model import DataMap, DataMapIssue
from governance.inventory.loader import SubprocessorFileError, load_reference, load_subprocessors
from governance.inventory.model import TransferReference
from governance.inventory.reference_command import stale_reference_entries

SHIPPED = INCLUDE_DIR / "subprocessors.yaml"


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(INCLUDE_DIR / "datamap.yaml")


@pytest.fixture(scope="module")
def reference() -> TransferReference:
    return load_reference(INCLUDE_DIR / "reference")


def _entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["subprocessors"] if s["name"] == name)


def write_copy(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(SHIPPED.read_text())
    change(data)
    path = tmp_path / "subprocessors.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


def problems(path: Path, datamap: DataMap, reference: TransferReference, **kwargs: Any) -> list[DataMapIssue]:
    with pytest.raises(SubprocessorFileError) as caught:
        load_subprocessors(path, datamap=datamap, reference=reference, connection_exists=lambda _c: False, **kwargs)
    return caught.value.issues


def test_the_shipped_file_is_valid_against_the_shipped_map_and_reference(datamap: DataMap, reference: TransferReference) -> None:
    declared = load_subprocessors(SHIPPED, datamap=datamap, reference=reference, connection_exists=lambda _c: False)
    names = {s.name for s in declared.subprocessors}
    assert {"cloud_hosting", "telecom_carrier", "speech_to_text", "language_model", "payments", "crm", "calendar",
            "support_desk", "product_analytics", "email_delivery"} <= names  # fmt: skip
    assert len(declared.sha256) == 64 and declared.source == str(SHIPPED)


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node: Any = _entry(data, str(path[0]))
        for key in path[1:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return change


_DELETE = object()

CASES = [
    pytest.param(_set(("crm", "processing_countries"), ["XX"]), "subprocessors[crm].processing_countries[0]",
                 "'XX' is not an ISO 3166-1 country code", "XX", id="unknown-country"),
    pytest.param(_set(("crm", "processing_countries"), ["UK"]), "subprocessors[crm].processing_countries[0]",
                 "'UK' is not an ISO 3166-1 country code", "UK", id="uk-is-not-iso"),
    pytest.param(_set(("crm", "data_categories"), ["user.contact.fax"]), "subprocessors[crm].data_categories[0]",
                 "unknown fideslang data category 'user.contact.fax'", "user.contact.fax", id="unknown-category"),
    pytest.param(_set(("crm", "purpose"), "essential.service.operashuns"), "subprocessors[crm].purpose",
                 "unknown fideslang data use 'essential.service.operashuns'", "operashuns", id="unknown-purpose"),
    pytest.param(_set(("crm", "transfer", "mechanism"), "adequacy"), "subprocessors[crm].transfer.mechanism",
                 "'adequacy' is not allowed; expected", "adequacy", id="unknown-mechanism"),
    pytest.param(_set(("crm", "receives_through"), [{"processor": "crn"}]),
                 "subprocessors[crm].receives_through[0].processor",
                 "no processor 'crn' in the data map (did you mean 'crm'?)", "crn", id="unknown-processor"),
    pytest.param(_set(("cloud_hosting", "receives_through"), [{"system": "aircalls_datalake"}]),
                 "subprocessors[cloud_hosting].receives_through[0].system",
                 "no system 'aircalls_datalake' in the data map", "aircalls_datalake", id="unknown-system"),
    pytest.param(_set(("speech_to_text", "receives_through"), [{"connection": "speech_api"}]),
                 "subprocessors[speech_to_text].receives_through[0].connection",
                 "Airflow connection 'speech_api' is not configured", "speech_api", id="unknown-connection"),
    pytest.param(_set(("crm", "dpa", "signed"), "01/06/2025"), "subprocessors[crm].dpa.signed",
                 "'01/06/2025' is not a date in the form YYYY-MM-DD", "01/06/2025", id="date-format"),
    pytest.param(_set(("telecom_carrier", "transfer", "scc_module"), _DELETE), "subprocessors[telecom_carrier].transfer",
                 "scc_2021 needs scc_module", "scc_2021", id="scc-without-module"),
    pytest.param(_set(("crm", "receives_through"), [{"processor": "crm", "system": "aircalls_app"}]),
                 "subprocessors[crm].receives_through[0]", "give exactly one of processor, system, connection or "
                 "contractual_only (got processor, system)", "processor", id="two-channels-in-one"),
    pytest.param(_set(("crm", "transfer", "adequacy_conditions"), ["pipeda_comercial"]),
                 "subprocessors[crm].transfer.adequacy_conditions[0]",
                 "no partial adequacy decision applies to 'pipeda_comercial'", "pipeda_comercial", id="unknown-condition"),
    pytest.param(_set(("crm", "sla"), "99.9"), "subprocessors[crm].sla", "unknown key 'sla'", "sla", id="unknown-key"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "where", "message", "on_line"), CASES)
def test_a_malformed_entry_is_reported_with_the_file_the_entry_and_the_reason(
    tmp_path: Path, datamap: DataMap, reference: TransferReference, change: Callable[[dict[str, Any]], None],
    where: str, message: str, on_line: str,
) -> None:  # fmt: skip
    path = write_copy(tmp_path, change)
    found = problems(path, datamap, reference)
    assert [(i.file, i.path) for i in found] == [(str(path), where)], found
    assert message in found[0].message
    line = path.read_text().splitlines()[found[0].line - 1] if found[0].line else ""
    assert on_line in line, (found[0].line, line)
    assert str(found[0]).startswith(f"{path}: {where}: ")


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path, datamap: DataMap, reference: TransferReference) -> None:
    def change(data: dict[str, Any]) -> None:
        _set(("crm", "processing_countries"), ["XX"])(data)
        _set(("payments", "data_categories"), ["user.financial", "user.contact.fax"])(data)
        _set(("calendar", "receives_through"), [{"processor": "calender"}])(data)

    found = problems(write_copy(tmp_path, change), datamap, reference)
    assert sorted(i.path for i in found) == [
        "subprocessors[calendar].receives_through[0].processor",
        "subprocessors[crm].processing_countries[0]",
        "subprocessors[payments].data_categories[1]",
    ]


def test_the_same_processor_declared_by_two_subprocessors_is_refused(
    tmp_path: Path, datamap: DataMap, reference: TransferReference
) -> None:
    found = problems(write_copy(tmp_path, _set(("calendar", "receives_through"), [{"processor": "crm"}])), datamap, reference)
    assert [(i.path, i.message) for i in found] == [
        ("subprocessors[calendar].receives_through[0].processor", "processor 'crm' is already declared by 'crm'")
    ]


def test_a_yaml_syntax_error_is_placed_at_its_line_and_column(tmp_path: Path, datamap: DataMap, reference: TransferReference) -> None:
    path = tmp_path / "subprocessors.yaml"
    path.write_text('version: "1"\nsubprocessors:\n  - name: crm\n    data_categories: [user.name\n')
    found = problems(path, datamap, reference)
    assert len(found) == 1 and found[0].path == "" and found[0].line is not None
    assert str(found[0]).startswith(f"{path}:") and "YAML syntax error" in found[0].message


def test_the_command_prints_placed_problems_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_copy(tmp_path, _set(("crm", "dpa", "review_by"), "next year"))
    assert main(["validate-subprocessors", str(path), "--skip-connections"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: subprocessors[crm].dpa.review_by: 'next year' is not a date in the form YYYY-MM-DD (line " in err
    assert "Traceback" not in err
    assert main(["validate-subprocessors", str(SHIPPED), "--skip-connections"]) == 0


# --------------------------------------------------------------------------------------------
# Reference data


def copy_reference(tmp_path: Path) -> Path:
    target = tmp_path / "reference"
    shutil.copytree(INCLUDE_DIR / "reference", target)
    return target


def test_a_malformed_reference_file_is_reported_placed(tmp_path: Path) -> None:
    folder = copy_reference(tmp_path)
    eea = folder / "eea_states.yaml"
    eea.write_text(eea.read_text().replace('code: "MT"', 'code: "MX"').replace("last_checked: 2026-11-20}", "last_checked: 20/11/2026}", 1))
    adequacy = folder / "adequacy_decisions.yaml"
    adequacy.write_text(adequacy.read_text().replace("scope: partial, applies_to: pipeda_commercial,", "scope: partial,"))
    with pytest.raises(SubprocessorFileError) as caught:
        load_reference(folder)
    found = sorted((Path(i.file).name, i.path, i.message) for i in caught.value.issues)
    assert found == [
        ("adequacy_decisions.yaml", "decisions[Canada]",
         "a partial decision says whom it applies_to (dpf_certified or a condition name)"),
        ("eea_states.yaml", "states[Austria].last_checked", "'20/11/2026' is not a date in the form YYYY-MM-DD"),
    ]  # fmt: skip
    eea.write_text((INCLUDE_DIR / "reference" / "eea_states.yaml").read_text().replace('code: "MT"', 'code: "QQ"'))
    adequacy.write_text((INCLUDE_DIR / "reference" / "adequacy_decisions.yaml").read_text())
    with pytest.raises(SubprocessorFileError) as caught:
        load_reference(folder)
    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("states[Malta].code", "'QQ' is not an ISO 3166-1 country code")
    ]


def test_reference_entries_older_than_a_year_are_listed_and_the_command_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_reference(tmp_path)
    adequacy = folder / "adequacy_decisions.yaml"
    adequacy.write_text(adequacy.read_text().replace(
        'source: "https://eur-lex.europa.eu/eli/dec_impl/2019/419/oj", last_checked: 2026-11-20',
        'source: "https://eur-lex.europa.eu/eli/dec_impl/2019/419/oj", last_checked: 2025-11-01'))  # fmt: skip
    entries = load_reference(folder).dated_entries()
    stale = stale_reference_entries(entries, as_of=date(2026, 12, 3))
    assert [(f, e, d) for f, e, d, _s in stale] == [("adequacy_decisions.yaml", "JP Japan (full)", date(2025, 11, 1))]
    assert stale_reference_entries(load_reference(INCLUDE_DIR / "reference").dated_entries(), as_of=date(2026, 12, 3)) == []

    assert main(["inventory-reference", "--dir", str(folder), "--stale", "--as-of", "2026-12-03"]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "adequacy_decisions.yaml\tJP Japan (full)\t2025-11-01\thttps://eur-lex.europa.eu/eli/dec_impl/2019/419/oj"
    ]
    assert "1 entry last checked more than 365 days before 2026-12-03" in out.err
    assert main(["inventory-reference", "--stale", "--as-of", "2026-12-03"]) == 0
