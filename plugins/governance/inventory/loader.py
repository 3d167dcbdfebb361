"""Read and check ``include/subprocessors.yaml`` and ``include/reference/``, reporting every problem
placed as the data map's validator places its own (``FILE: PATH: MESSAGE (line N)``).

Two passes, as for the data map: the pydantic shape (unknown keys, wrong types, dates not
``YYYY-MM-DD``, an SCC without its module), then the checks that need other files: countries that
exist (ISO 3166), fideslang categories and uses, processors and systems of the data map, Airflow
connections that are configured, DPF participants and adequacy conditions that the reference data
knows. Either pass reports all of its problems at once; nothing is read from a system before both
pass.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from governance.config import INCLUDE_DIR
from governance.connections import ConnectionNotConfigured, get_connection
from governance.datamap.loader import _convert_pydantic_error, _index_nodes, _line_for
from governance.datamap.model import DataMap, DataMapError, DataMapIssue
from governance.datamap.taxonomy import suggest, taxonomy_problem
from governance.inventory.model import (
    DPF_CERTIFIED,
    AdequacyDecisions,
    CountryList,
    DpfParticipants,
    EeaStates,
    SubprocessorList,
    TransferMechanism,
    TransferReference,
)

__all__ = [
    "SubprocessorFileError",
    "load_reference",
    "load_subprocessors",
    "reference_dir",
    "subprocessors_path",
]

M = TypeVar("M", bound=BaseModel)


class SubprocessorFileError(DataMapError):
    """The subprocessor file or the reference data cannot be used; one placed line per problem."""


def subprocessors_path() -> Path:
    """``GOVERNANCE_SUBPROCESSORS`` or ``include/subprocessors.yaml``."""
    import os


    return Path(os.environ.get("GOVERNANCE_SUBPROCESSORS", INCLUDE_DIR / "subprocessors.yaml"))


def reference_dir() -> Path:
    """``GOVERNANCE_TRANSFER_REFERENCE`` or ``include/reference``."""
    import os


    return Path(os.environ.get("GOVERNANCE_TRANSFER_REFERENCE", INCLUDE_DIR / "reference"))


# --------------------------------------------------------------------------------------------
# Reading one YAML file into a model, errors placed


def _read(path: Path) -> tuple[bytes, object, dict[str, int]]:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SubprocessorFileError([DataMapIssue(str(path), "", f"cannot read the file: {reason}")]) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SubprocessorFileError(
            [DataMapIssue(str(path), "", f"YAML syntax error: {message}", mark.line + 1 if mark else None,
                          mark.column + 1 if mark else None)]  # fmt: skip
        ) from None
    except yaml.YAMLError as exc:
        raise SubprocessorFileError([DataMapIssue(str(path), "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    duplicates: list[DataMapIssue] = []
    if node is not None:
        _index_nodes(node, "", lines, duplicates, str(path))
    if duplicates:
        raise SubprocessorFileError(duplicates)
    return raw, data, lines


def _model(model: type[M], data: object, source: str, lines: dict[str, int], what: str) -> M:
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SubprocessorFileError([DataMapIssue(source, "<top>", f"{what} must be a mapping; got {kind}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            path, message = _convert_pydantic_error(err, data, model)
            issues.append(DataMapIssue(source, path, message, _line_for(path, lines)))
        raise SubprocessorFileError(issues) from None


# --------------------------------------------------------------------------------------------
# Reference data


def load_reference(directory: Path | None = None) -> TransferReference:
    """The four reference files of ``directory`` (default :func:`reference_dir`), checked: every
    EEA state and adequacy country is an ISO code, none is listed twice, no country is both."""
    directory = directory or reference_dir()
    parts: dict[str, Any] = {}
    issues: list[DataMapIssue] = []
    files: dict[str, tuple[str, type[BaseModel]]] = {"countries": ("countries.yaml", CountryList), "eea": ("eea_states.yaml", EeaStates),
             "adequacy": ("adequacy_decisions.yaml", AdequacyDecisions), "dpf": ("dpf_participants.yaml", DpfParticipants)}  # fmt: skip
    lines_of: dict[str, dict[str, int]] = {}
    for key, (name, model) in files.items():
        path = directory / name
        try:
            _raw, data, lines = _read(path)
            parts[key] = _model(model, data, str(path), lines, name)
            lines_of[key] = lines
        except SubprocessorFileError as exc:
            issues += exc.issues
    if issues:
        raise SubprocessorFileError(issues)
    reference = TransferReference(**parts)
    codes = reference.countries.codes

    def place(key: str, path: str, message: str) -> None:
        issues.append(DataMapIssue(str(directory / files[key][0]), path, message, _line_for(path, lines_of[key])))

    for state in reference.eea.states:
        if state.code not in codes:
            place("eea", f"states[{state.name}].code", f"{state.code!r} is not an ISO 3166-1 country code{suggest(state.code, codes)}")
    for code, count in Counter(s.code for s in reference.eea.states).items():
        if count > 1:
            place("eea", "states", f"{code} is listed {count} times")
    for decision in reference.adequacy.decisions:
        if decision.country not in codes:
            place("adequacy", f"decisions[{decision.name}].country", f"{decision.country!r} is not an ISO 3166-1 country code")
        if reference.in_eea(decision.country):
            place("adequacy", f"decisions[{decision.name}].country", f"{decision.country} is in the EEA: it needs no adequacy decision")
    for code, count in Counter(d.country for d in reference.adequacy.decisions).items():
        if count > 1:
            place("adequacy", "decisions", f"{code} has {count} decisions; keep one per country")
    if issues:
        raise SubprocessorFileError(issues)
    return reference


# --------------------------------------------------------------------------------------------
# The subprocessor file


def _airflow_connection_exists(conn_id: str) -> bool:
    try:
        get_connection(conn_id)
    except ConnectionNotConfigured:
        return False
    return True


def load_subprocessors(
    path: Path | None = None,
    *,
    datamap: DataMap,
    reference: TransferReference,
    connection_exists: Callable[[str], bool] | None = None,
) -> SubprocessorList:
    """Read and check the subprocessor file (default :func:`subprocessors_path`).

    ``connection_exists`` says whether an Airflow connection id is configured (default: look it
    up the way tasks do). Raises :class:`SubprocessorFileError` listing every problem.
    """
    path = path or subprocessors_path()
    raw, data, lines = _read(path)
    declared = _model(SubprocessorList, data, str(path), lines, "the subprocessor file")
    exists = connection_exists or _airflow_connection_exists
    problems = list(_checks(declared, datamap, reference, exists))
    if problems:
        raise SubprocessorFileError([DataMapIssue(str(path), p, m, _line_for(p, lines)) for p, m in problems])
    declared._source = str(path)
    declared._sha256 = hashlib.sha256(raw).hexdigest()
    return declared


def _checks(
    declared: SubprocessorList, datamap: DataMap, reference: TransferReference, exists: Callable[[str], bool]
) -> Iterator[tuple[str, str]]:
    codes = reference.countries.codes
    processors = [p.name for p in datamap.processors]
    systems = [s.name for s in datamap.systems]
    conditions = {d.applies_to for d in reference.adequacy.decisions if d.applies_to and d.applies_to != DPF_CERTIFIED}
    for name, count in Counter(s.name for s in declared.subprocessors).items():
        if count > 1:
            yield f"subprocessors[{name}]", f"subprocessor {name!r} is declared {count} times"
    claimed: dict[str, str] = {}
    for sub in declared.subprocessors:
        at = f"subprocessors[{sub.name}]"
        if problem := taxonomy_problem(sub.purpose, "data use"):
            yield f"{at}.purpose", problem
        for i, category in enumerate(sub.data_categories):
            if problem := taxonomy_problem(category, "data category"):
                yield f"{at}.data_categories[{i}]", problem
        for i, country in enumerate(sub.processing_countries):
            if country not in codes:
                yield f"{at}.processing_countries[{i}]", (
                    f"{country!r} is not an ISO 3166-1 country code{suggest(country, codes)}"
                )
        for i, channel in enumerate(sub.receives_through):
            where = f"{at}.receives_through[{i}]"
            if channel.processor is not None:
                if channel.processor not in processors:
                    yield f"{where}.processor", (
                        f"no processor {channel.processor!r} in the data map{suggest(channel.processor, processors)}"
                    )
                elif channel.processor in claimed and claimed[channel.processor] != sub.name:
                    yield f"{where}.processor", (
                        f"processor {channel.processor!r} is already declared by {claimed[channel.processor]!r}"
                    )
                claimed.setdefault(channel.processor, sub.name)
            if channel.system is not None and channel.system not in systems:
                yield f"{where}.system", f"no system {channel.system!r} in the data map{suggest(channel.system, systems)}"
            if channel.connection is not None and not exists(channel.connection):
                yield f"{where}.connection", (
                    f"Airflow connection {channel.connection!r} is not configured "
                    f"(set AIRFLOW_CONN_{channel.connection.upper()} or add it in the UI)"
                )
        transfer = sub.transfer
        for i, condition in enumerate(transfer.adequacy_conditions):
            if condition not in conditions:
                yield f"{at}.transfer.adequacy_conditions[{i}]", (
                    f"no partial adequacy decision applies to {condition!r}; known: {', '.join(sorted(conditions)) or 'none'}"
                    + suggest(condition, conditions)
                )
        if transfer.mechanism == TransferMechanism.DPF and "US" not in sub.processing_countries:
            yield f"{at}.transfer.mechanism", "dpf covers transfers to the United States only; US is not a processing country"
