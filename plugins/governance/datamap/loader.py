"""Load and validate the data map; every problem is reported with the file, the path inside the
map and what is wrong.

Validation runs in two passes. The first is the pydantic shape (unknown keys, wrong types,
malformed periods); its errors are rewritten into the same ``FILE: PATH: MESSAGE`` form as
ours. Only a map of the right shape gets the second pass, which checks the map as a whole:
taxonomy keys, names that resolve, duplicate names, cycles, erasure actions that make sense,
retention rules that can run. Either pass reports *all* of its problems at once.
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from governance.config import datamap_path
from governance.connectors.base import ConnectorClassError, load_connector_class
from governance.datamap import graph
from governance.datamap.model import (
    IDENTIFIER_PATTERN,
    REQUEST_ID_PLACEHOLDER,
    REWRITING_ACTIONS,
    DataMap,
    DataMapError,
    DataMapIssue,
    DataMapUnreadable,
    DynamoDBSystem,
    ErasureAction,
    IdentityMatch,
    ItemTable,
    LegalException,
    ObjectPrefix,
    ObjectStoreSystem,
    PostgresSystem,
    Processor,
    Reference,
    ReferenceKind,
    RequestTemplate,
    RetentionRule,
    TableRef,
    TableSpec,
)
from governance.datamap.taxonomy import TaxonomyKind, suggest, taxonomy_problem

__all__ = ["DataMapError", "DataMapIssue", "datamap_version_hash", "load_datamap", "validate_datamap"]

# List items are named by the first of these keys they have: systems[aircalls_app],
# fields[email], references[caller_id]. Unnamed items fall back to their index.
_ITEM_NAME_KEYS = ("name", "field")


# --------------------------------------------------------------------------------------------
# Public API


_CACHE: dict[tuple[str, int, int], DataMap] = {}


def load_datamap(path: Path | None = None) -> DataMap:
    """Read, validate and return the data map at ``path`` (default: ``config.datamap_path()``).

    Cached per (path, mtime, size): a changed file is re-read. Raises DataMapUnreadable when the
    file cannot be read, DataMapError listing every problem when it is not a valid map.
    """
    if path is None:
        path = datamap_path()
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataMapUnreadable([DataMapIssue(str(path), "", f"cannot read the data map: {reason}")]) from None
    datamap = _parse_text(text, source=str(path))
    datamap._sha256 = hashlib.sha256(raw).hexdigest()
    _CACHE.clear()  # one live map per process is plenty; keeps stale versions from piling up
    _CACHE[key] = datamap
    return datamap


def datamap_version_hash(path: Path | None = None) -> str:
    """sha256 (hex) of the data map file's bytes: identifies the exact map a run used."""
    if path is None:
        path = datamap_path()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate_datamap(data: object, *, source: str = "<memory>") -> DataMap:
    """Validate an already-parsed map (e.g. a modified copy in a test) and return it.

    Raises DataMapError with every issue, paths as in the file, ``source`` as the file name.
    """
    return _validate(data, source=source, lines={})


# --------------------------------------------------------------------------------------------
# YAML: parse, remember where each path is, catch duplicate keys


def _parse_text(text: str, *, source: str) -> DataMap:
    # One parse gives both the node tree (lines, duplicate keys) and the data; libyaml when built in.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise DataMapError([DataMapIssue(source, "", f"YAML syntax error: {message}", line, column)]) from None
    except yaml.YAMLError as exc:
        raise DataMapError([DataMapIssue(source, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    duplicates: list[DataMapIssue] = []
    if node is not None:
        _index_nodes(node, "", lines, duplicates, source)
    if duplicates:
        raise DataMapError(duplicates)
    return _validate(data, source=source, lines=lines)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _node_label(node: yaml.Node, index: int) -> str:
    if isinstance(node, yaml.MappingNode):
        for wanted in _ITEM_NAME_KEYS:
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == wanted and isinstance(value, yaml.ScalarNode):
                    return str(value.value)
    return str(index)


def _index_nodes(node: yaml.Node, path: str, lines: dict[str, int], dups: list[DataMapIssue], source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            child = _join(path, name)
            if name in seen:
                dups.append(
                    DataMapIssue(source, child, f"duplicate key {name!r} (YAML keeps only the last one)",
                                 key.start_mark.line + 1)
                )
            seen.add(name)
            _index_nodes(value, child, lines, dups, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_nodes(item, f"{path}[{_node_label(item, index)}]", lines, dups, source)


# --------------------------------------------------------------------------------------------
# Validation driver


def _validate(data: object, *, source: str, lines: Mapping[str, int]) -> DataMap:
    def issue(path: str, message: str) -> DataMapIssue:
        return DataMapIssue(source, path, message, _line_for(path, lines))

    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise DataMapError([issue("<top>", f"the data map must be a mapping with version, systems, ...; got {kind}")])
    try:
        datamap = DataMap.model_validate(data)
    except ValidationError as exc:
        raise DataMapError([issue(*_convert_pydantic_error(err, data)) for err in exc.errors()]) from None
    problems = list(_Checks(datamap).run())
    if problems:
        raise DataMapError([issue(path, message) for path, message in problems])
    datamap._source = source
    datamap._lines = dict(lines)
    return datamap


def _line_for(path: str, lines: Mapping[str, int]) -> int | None:
    """Line of ``path`` or of its nearest ancestor present in the file."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


# --------------------------------------------------------------------------------------------
# Pydantic errors -> our paths and messages


def _label(item: object, index: int) -> str:
    if isinstance(item, dict):
        for wanted in _ITEM_NAME_KEYS:
            value = item.get(wanted)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return str(index)


def _unwrap(tp: Any, node: object) -> Any:
    """Strip Annotated/Optional; pick the union member a ``kind`` discriminator selects."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            kind = node.get("kind") if isinstance(node, dict) else None
            chosen = next((m for m in models if _literal_kind(m) == kind), None)
            tp = chosen or (models[0] if len(models) == 1 else (members[0] if len(members) == 1 else None))
            if tp is None:
                return None
            continue
        return tp


def _literal_kind(model: type[BaseModel]) -> object:
    field = model.model_fields.get("kind")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if len(args) == 1 else None


def _model_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _walk(loc: tuple[int | str, ...], data: object, root: type[BaseModel] = DataMap) -> tuple[str, Any, object]:
    """Follow a pydantic ``loc`` through the raw data and the model types (from ``root``): the
    named path, the type at the end (a model class when there is one) and the raw node there."""
    parts = ""
    node: object = data
    tp: Any = root
    for element in loc:
        tp = _unwrap(tp, node) if tp is not None else None
        if isinstance(element, int):
            label = _label(node[element], element) if isinstance(node, list) and element < len(node) else str(element)
            parts += f"[{label}]"
            node = node[element] if isinstance(node, list) and element < len(node) else None
            args = typing.get_args(tp) if tp is not None else ()
            tp = args[0] if args else None
            continue
        if isinstance(node, dict) and element not in node and node.get("kind") == element:
            continue  # discriminated-union tag in the loc, not a key of the map
        if element == "[key]":
            continue
        parts = _join(parts, str(element))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next(
                (f for name, f in tp.model_fields.items() if element in (name, f.alias)), None
            )
            tp = field.annotation if field is not None else None
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            tp = None
        node = node.get(element) if isinstance(node, dict) else None
    return parts, _unwrap(tp, node) if tp is not None else None, node


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert_pydantic_error(
    err: Mapping[str, Any], data: object, root: type[BaseModel] = DataMap
) -> tuple[str, str]:
    """(path, message) of one pydantic error of validating ``data`` as ``root``, in the map's words."""
    loc: tuple[int | str, ...] = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        path, _tp, _node = _walk(loc, data, root)
        _parent_path, parent_tp, _ = _walk(loc[:-1], data, root)
        key = str(loc[-1])
        if isinstance(parent_tp, type) and issubclass(parent_tp, BaseModel):
            allowed = _model_keys(parent_tp)
            hint = suggest(key, allowed) or f"; allowed keys: {', '.join(allowed)}"
        else:
            hint = ""
        return path, f"unknown key {key!r}{hint}"
    path, _tp, _node = _walk(loc, data, root)
    if kind == "missing":
        return path, "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = str(ctx.get("expected_tags", ""))
        if kind == "union_tag_not_found":
            return path, f"missing key {ctx.get('discriminator', repr('kind'))}: say which kind of system this is"
        tag = str(ctx.get("tag", value))
        return _join(path, "kind"), f"unknown kind {tag!r}; expected one of {expected}" + suggest(
            tag, re.findall(r"'([^']*)'", expected)
        )
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        return path, f"{_short(value)} is not allowed; expected {expected}{suggest(str(value), options)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern == IDENTIFIER_PATTERN:
            return path, f"{_short(value)} is not a valid name (letters, digits and _, not starting with a digit)"
        if pattern.startswith("^[a-z0-9_]+"):
            return path, f"{_short(value)} is not a fideslang key (dot-separated lower-case words, e.g. user.contact.email)"
        if pattern == "^[A-Z]{2}$":
            return path, f"{_short(value)} is not an ISO-3166 alpha-2 country code (e.g. US, DE)"
        return path, f"{_short(value)} does not match {pattern}"
    message = str(err.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        return path, message[len("Value error, ") :]
    if value is not None and not isinstance(value, dict | list):
        message = f"{message} (got {_short(value)})"
    return path, message


# --------------------------------------------------------------------------------------------
# Whole-map checks


def _system_path(name: str) -> str:
    return f"systems[{name}]"


def _table_path(system: str, table: str) -> str:
    return f"systems[{system}].tables[{table}]"


def _field_path(system: str, table: str, field: str) -> str:
    return f"{_table_path(system, table)}.fields[{field}]"


def _unique_names(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _duplicates(names: Iterable[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


# Python NFC-normalises and lower-cases an e-mail address (governance.identity.normalise_email);
# SQL must do the same to the column, or an address stored decomposed (NFD) is never found.
_EMAIL_MATCH = (
    "e-mail addresses are stored as typed, sometimes decomposed (NFD): match them with lower_nfc, "
    "lower(normalize(column, NFC)), and index that expression"
)


class _Checks:
    """Every check that needs the whole map; ``run`` yields (path, message) pairs."""

    def __init__(self, datamap: DataMap) -> None:
        self.dm = datamap
        self.references_resolve = True

    def run(self) -> Iterator[tuple[str, str]]:
        yield from self._names()
        yield from self._identity_kinds()
        for system in self.dm.postgres_systems:
            for table in system.tables:
                yield from self._table(system, table)
        for store in self.dm.object_systems:
            for prefix in store.prefixes:
                yield from self._prefix(store, prefix)
        for dynamo in self.dm.dynamodb_systems:
            for name in _duplicates(t.name for t in dynamo.tables):
                yield f"{_system_path(dynamo.name)}.tables[{name}]", f"duplicate table name {name!r} in system {dynamo.name!r}"
            for item_table in dynamo.tables:
                yield from self._item_table(dynamo, item_table)
        for processor in self.dm.processors:
            yield from self._processor(processor)
        for index, exception in enumerate(self.dm.legal_exceptions):
            yield from self._legal_exception(index, exception)
        for index, rule in enumerate(self.dm.retention):
            yield from self._retention(index, rule)
        if self.references_resolve:
            yield from self._cycles()
            yield from self._reachability()

    # -- names -----------------------------------------------------------------------------

    def _names(self) -> Iterator[tuple[str, str]]:
        for name in _duplicates([s.name for s in self.dm.systems] + [p.name for p in self.dm.processors]):
            where = "processors" if name in {p.name for p in self.dm.processors} else "systems"
            yield f"{where}[{name}]", f"duplicate system/processor name {name!r}: names must be unique across both"
        for system in self.dm.postgres_systems:
            for name in _duplicates(t.name for t in system.tables):
                yield _table_path(system.name, name), f"duplicate table name {name!r} in system {system.name!r}"
            for table in system.tables:
                for name in _duplicates(table.field_names):
                    yield _field_path(system.name, table.name, name), (
                        f"duplicate field name {name!r} in table {table.name!r}"
                    )
                for name in _duplicates(i.field for i in table.identities):
                    yield f"{_table_path(system.name, table.name)}.identities[{name}]", (
                        f"field {name!r} is declared as an identity twice"
                    )
                for name in _duplicates(r.field for r in table.references):
                    yield f"{_table_path(system.name, table.name)}.references[{name}]", (
                        f"field {name!r} has two references; a column points at one row"
                    )
        for store in self.dm.object_systems:
            for name in _duplicates(p.name for p in store.prefixes):
                yield f"{_system_path(store.name)}.prefixes[{name}]", f"duplicate prefix name {name!r}"
        for name in _duplicates(r.name for r in self.dm.retention):
            yield f"retention[{name}]", f"duplicate retention rule name {name!r}"
        for name in _duplicates(e.name for e in self.dm.legal_exceptions):
            yield f"legal_exceptions[{name}]", f"duplicate legal exception name {name!r}"

    def _identity_kinds(self) -> Iterator[tuple[str, str]]:
        for name, spec in self.dm.identity_kinds.items():
            if spec.normalise == "email" and spec.match is not IdentityMatch.lowered_nfc:
                yield f"identity_kinds.{name}.match", _EMAIL_MATCH

    def _taxonomy(self, path: str, key: str, kind: TaxonomyKind) -> Iterator[tuple[str, str]]:
        problem = taxonomy_problem(key, kind)
        if problem:
            yield path, problem

    # -- tables ----------------------------------------------------------------------------

    def _table(self, system: PostgresSystem, table: TableSpec) -> Iterator[tuple[str, str]]:
        tpath = _table_path(system.name, table.name)
        names = table.field_names
        if table.primary_key not in names:
            yield f"{tpath}.primary_key", f"primary key {table.primary_key!r} is not a field of {table.name!r}" + suggest(
                table.primary_key, names
            )
        exception = self.dm.legal_exception_for(TableRef(system.name, table.name))
        for field in table.fields:
            fpath = _field_path(system.name, table.name, field.name)
            yield from self._taxonomy(f"{fpath}.data_category", field.data_category, "data category")
            yield from self._taxonomy(f"{fpath}.data_use", field.data_use, "data use")
            personal_category = field.data_category == "user" or field.data_category.startswith("user.")
            if field.personal is False and personal_category:
                yield f"{fpath}.personal", (
                    f"marked personal: false, but {field.data_category!r} is personal data; "
                    "remove personal: false or use a system.* category"
                )
            if "erasure" in field.model_fields_set and field.erasure is None:
                yield f"{fpath}.erasure", "erasure is empty: a bare null in YAML means 'no value'; write nullify"
                continue
            action = field.erasure_action
            if field.is_personal and field.erasure is None:
                yield f"{fpath}.erasure", (
                    "personal field without an erasure action: declare one of delete_row, nullify, mask, "
                    "keyed_hash, keep (with legal_basis)"
                )
            if action is ErasureAction.mask and field.mask_value is None:
                yield f"{fpath}.mask_value", "erasure: mask needs a mask_value (the fixed value written instead)"
            if field.mask_value is not None and action is not ErasureAction.mask:
                yield f"{fpath}.mask_value", f"mask_value is only used with erasure: mask (erasure is {action.value})"
            if action is ErasureAction.keep:
                yield from self._keep(system, table, fpath, field.legal_basis)
            elif field.legal_basis is not None:
                yield f"{fpath}.legal_basis", f"legal_basis is only used with erasure: keep (erasure is {action.value})"
            if exception is not None and action is ErasureAction.delete_row:
                yield f"{fpath}.erasure", (
                    f"table {table.name!r} is kept under legal exception {exception.name!r}: its rows are "
                    "minimised, not deleted, during the legal period; use keep, nullify, mask or keyed_hash"
                )
        for identity in table.identities:
            ipath = f"{tpath}.identities[{identity.field}]"
            if identity.field not in names:
                yield f"{ipath}.field", f"identity on a missing column {identity.field!r} of {table.name!r}" + suggest(
                    identity.field, names
                )
            if identity.kind not in self.dm.identity_kinds:
                yield f"{ipath}.kind", f"unknown identity kind {identity.kind!r}" + (
                    suggest(identity.kind, self.dm.identity_kinds)
                    or f"; declared kinds: {', '.join(self.dm.identity_kinds)}"
                )
            elif (
                identity.match is not None and identity.match is not IdentityMatch.lowered_nfc
                and self.dm.identity_kinds[identity.kind].normalise == "email"
            ):  # fmt: skip
                yield f"{ipath}.match", _EMAIL_MATCH
        if not table.deletes_rows_on_erasure:
            # Rows stay on erasure: whatever finds the person in them must be rewritten, or the
            # "erased" row still points at them (and a batched rewrite would never finish).
            linking = [i.field for i in table.identities] + [
                r.field for r in table.references if r.kind is ReferenceKind.ownership
            ]
            for name in _unique_names(linking):
                spec = table.field(name)
                if spec is not None and spec.erasure_action not in REWRITING_ACTIONS:
                    yield f"{tpath}.fields[{name}].erasure", (
                        f"rows of {table.name!r} are kept on erasure (no delete_row field), so {name!r}, which "
                        f"links a row to the person, must be nullify, mask or keyed_hash (not {spec.erasure_action.value})"
                    )
        scopes = [r for r in table.references if r.kind is ReferenceKind.scope]
        if len(scopes) > 1:
            yield f"{tpath}.references[{scopes[1].field}]", "a table has at most one scope reference"
        for reference in table.references:
            yield from self._reference(system, table, reference)

    def _keep(self, system: PostgresSystem, table: TableSpec, fpath: str, basis: str | None) -> Iterator[tuple[str, str]]:
        names = [e.name for e in self.dm.legal_exceptions]
        if basis is None:
            yield f"{fpath}.legal_basis", (
                "erasure: keep needs a legal_basis naming a legal_exceptions entry (why, and until when)"
            )
            return
        exception = self.dm.legal_exception(basis)
        if exception is None:
            yield f"{fpath}.legal_basis", f"legal basis {basis!r} is not declared in legal_exceptions" + suggest(basis, names)
        elif (exception.system, exception.table) != (system.name, table.name):
            yield f"{fpath}.legal_basis", (
                f"legal exception {basis!r} covers {exception.system}.{exception.table}, not {system.name}.{table.name}"
            )

    def _reference(self, system: PostgresSystem, table: TableSpec, reference: Reference) -> Iterator[tuple[str, str]]:
        rpath = f"{_table_path(system.name, table.name)}.references[{reference.field}]"
        if reference.field not in table.field_names:
            self.references_resolve = False
            yield f"{rpath}.field", f"reference from a missing field {reference.field!r} of {table.name!r}" + suggest(
                reference.field, table.field_names
            )
            return
        target_name = reference.to.system or system.name
        target_system = self.dm.system(target_name)
        if target_system is None:
            self.references_resolve = False
            yield f"{rpath}.to.system", f"reference to a missing system {target_name!r}" + suggest(
                target_name, [s.name for s in self.dm.systems]
            )
            return
        if not isinstance(target_system, PostgresSystem):
            self.references_resolve = False
            yield f"{rpath}.to.system", f"references point at tables; {target_name!r} is a {target_system.kind} system"
            return
        target = target_system.table(reference.to.table)
        if target is None:
            self.references_resolve = False
            yield f"{rpath}.to.table", f"reference to a missing table {target_name}.{reference.to.table}" + suggest(
                reference.to.table, [t.name for t in target_system.tables]
            )
            return
        target_field = reference.to.field or target.primary_key
        if target_field not in target.field_names:
            self.references_resolve = False
            yield f"{rpath}.to.field", f"reference to a missing field {target.name}.{target_field}" + suggest(
                target_field, target.field_names
            )
        field = table.field(reference.field)
        action = field.erasure_action if field else ErasureAction.none
        if reference.kind is ReferenceKind.mention and action not in REWRITING_ACTIONS:
            yield f"{_field_path(system.name, table.name, reference.field)}.erasure", (
                f"{reference.field!r} mentions {target.name!r}: erasing that row clears this reference while "
                f"the row stays, so its erasure must be nullify, mask or keyed_hash (not {action.value})"
            )
        yield from self._orphan_rule(system, table, reference, rpath)

    def _orphan_rule(
        self, system: PostgresSystem, table: TableSpec, reference: Reference, rpath: str
    ) -> Iterator[tuple[str, str]]:
        """``orphan`` and ``export`` say what becomes of mention-only rows: only a mention has them."""
        if reference.kind is not ReferenceKind.mention:
            for name in ("orphan", "export"):
                if name in reference.model_fields_set:
                    yield f"{rpath}.{name}", (
                        f"{name} applies to mention references only (rows that mention the person and have no "
                        f"owner); {reference.field!r} is kind: {reference.kind.value}"
                    )
            return
        keys = {table.primary_key, *(r.field for r in table.references)}
        for n, name in enumerate(reference.orphan_clears):
            if name not in table.field_names:
                yield f"{rpath}.orphan.clear[{n}]", f"cannot clear a missing field {name!r} of {table.name!r}" + suggest(
                    name, table.field_names
                )
            elif name in keys:
                yield f"{rpath}.orphan.clear[{n}]", (
                    f"{name!r} is {'the primary key' if name == table.primary_key else 'a reference'} of "
                    f"{table.name!r}: clear content fields (the mention itself is cleared by its erasure action)"
                )
        if reference.orphan_deletes_row:
            ref = TableRef(system.name, table.name)
            owned = sorted(
                f"{s.name}.{t.name}" for s in self.dm.postgres_systems for t in s.tables for r in t.references
                if r.kind is ReferenceKind.ownership and r.to.table == table.name and (r.to.system or s.name) == system.name
            )  # fmt: skip
            tied = [str(p) for p in self.dm.prefixes_tied_to(ref)]
            if owned or tied:
                yield f"{rpath}.orphan", (
                    f"orphan: delete_row would leave what rows of {table.name!r} own ({', '.join(owned + tied)}): "
                    "clear fields instead (orphan: {clear: [...]})"
                )

    # -- objects ---------------------------------------------------------------------------

    def _prefix(self, system: ObjectStoreSystem, prefix: ObjectPrefix) -> Iterator[tuple[str, str]]:
        ppath = f"{_system_path(system.name)}.prefixes[{prefix.name}]"
        yield from self._taxonomy(f"{ppath}.data_category", prefix.data_category, "data category")
        yield from self._taxonomy(f"{ppath}.data_use", prefix.data_use, "data use")
        try:
            placeholders = prefix.placeholders
        except ValueError as exc:
            yield f"{ppath}.key_template", f"malformed key template {prefix.key_template!r}: {exc}"
            return
        if prefix.owned_by == "privacy_request":
            if prefix.tied_to is not None:
                yield f"{ppath}.tied_to", "objects owned by a privacy request are not tied to a table row"
            if placeholders != [REQUEST_ID_PLACEHOLDER]:
                yield f"{ppath}.key_template", (
                    f"objects owned by a privacy request are keyed by exactly one {{{REQUEST_ID_PLACEHOLDER}}} "
                    f"placeholder; {prefix.key_template!r} has {placeholders}"
                )
            return
        if prefix.tied_to is None:
            yield f"{ppath}.tied_to", "owned_by: row needs tied_to: {table: ..., placeholders: {...}}"
            return
        if not placeholders:
            yield f"{ppath}.key_template", "a row-owned key template needs placeholders naming the row's columns"
        tie = self.dm.tie_table(prefix)
        table = None
        if tie is not None:
            tied_system = self.dm.system(tie.system)
            table = tied_system.table(tie.table) if isinstance(tied_system, PostgresSystem) else None
            if not isinstance(tied_system, PostgresSystem):
                names = [s.name for s in self.dm.postgres_systems]
                yield f"{ppath}.tied_to.system", (
                    f"tied to a missing postgres system {tie.system!r}" + suggest(tie.system, names)
                    if tie.system
                    else "tied_to.system is required when the map has more than one postgres system"
                )
                return
            if table is None:
                yield f"{ppath}.tied_to.table", f"tied to a missing table {tie}" + suggest(
                    tie.table, [t.name for t in tied_system.tables]
                )
                return
        assert table is not None
        for placeholder in placeholders:
            column = prefix.tied_to.column_for(placeholder)
            if column not in table.field_names:
                mapped = f" (mapped to column {column!r})" if column != placeholder else ""
                yield f"{ppath}.key_template", (
                    f"placeholder {{{placeholder}}}{mapped} is not a column of the tied table {table.name!r}"
                    + suggest(column, table.field_names)
                    + (f"; map it with tied_to.placeholders: {{{placeholder}: <column>}}" if not mapped else "")
                )
        for placeholder in prefix.tied_to.placeholders:
            if placeholder not in placeholders:
                yield f"{ppath}.tied_to.placeholders.{placeholder}", (
                    f"{{{placeholder}}} does not occur in the key template {prefix.key_template!r}"
                )
        key_column = prefix.tied_to.key_column
        if key_column is not None and key_column not in table.field_names:
            yield f"{ppath}.tied_to.key_column", f"key column {key_column!r} is not a column of {table.name!r}" + suggest(
                key_column, table.field_names
            )

    # -- processors ------------------------------------------------------------------------

    def _processor(self, processor: Processor) -> Iterator[tuple[str, str]]:
        ppath = f"processors[{processor.name}]"
        for index, category in enumerate(processor.data_categories):
            yield from self._taxonomy(f"{ppath}.data_categories[{index}]", category, "data category")
        if processor.recipient is not None:
            yield from self._taxonomy(f"{ppath}.recipient.purpose", processor.recipient.purpose, "data use")
        if processor.connector == "python":
            yield from self._python_processor(ppath, processor)
            return
        for key, given in (("class", processor.class_path is not None), ("lookup_by", bool(processor.lookup_by))):
            if given:
                yield f"{ppath}.{key}", f"{key} is for connector: python; a connector: http processor declares request templates"
        if processor.auth is None:
            yield f"{ppath}.auth", "a processor with request templates needs auth: {type: bearer|header|basic}"
        elif processor.auth.type == "header" and not processor.auth.header:
            yield f"{ppath}.auth.header", "auth type header needs the header name (e.g. X-API-Key)"
        if processor.lookup is None:
            yield f"{ppath}.lookup", (
                "a processor with request templates needs a lookup call (or connector: python with a class)"
            )
            return
        yield from self._request(f"{ppath}.lookup", processor.lookup, set(self.dm.identity_kinds), "identity kinds")
        lookup_kinds = [p for p in processor.lookup.placeholders if p in self.dm.identity_kinds]
        if not lookup_kinds:
            yield f"{ppath}.lookup", "the lookup call uses no identity placeholder ({email} or {phone})"
        if processor.lookup.records_path is None or processor.lookup.id_field is None:
            yield f"{ppath}.lookup", "the lookup call needs records_path and id_field to find record ids"
        for export in processor.export:
            yield from self._request(f"{ppath}.export[{export.name}]", export, {"id"}, "the record id")
        if processor.erase is None:
            yield f"{ppath}.erase", (
                "processor without an erase call: declare erase: {method: DELETE, path: ...} so erasure "
                "reaches the data it holds"
            )
        else:
            yield from self._request(f"{ppath}.erase", processor.erase, {"id"}, "the record id")
            if processor.erase.paging is not None:
                yield f"{ppath}.erase.paging", "an erase call does not page: remove paging"

    def _python_processor(self, ppath: str, processor: Processor) -> Iterator[tuple[str, str]]:
        """The escape hatch: the class exists and satisfies the connector contract; no templates."""

        for key in ("auth", "lookup", "erase"):
            if getattr(processor, key) is not None:
                yield f"{ppath}.{key}", f"connector: python takes no {key}: its class makes the calls"
        if processor.export:
            yield f"{ppath}.export", "connector: python takes no export templates: its class makes the calls"
        if not processor.lookup_by:
            yield f"{ppath}.lookup_by", "connector: python needs lookup_by: the identity kinds it looks people up by"
        for index, kind in enumerate(processor.lookup_by):
            if kind not in self.dm.identity_kinds:
                yield f"{ppath}.lookup_by[{index}]", (
                    f"{kind!r} is not an identity kind of this map" + suggest(kind, list(self.dm.identity_kinds))
                )
        if processor.class_path is None:
            yield f"{ppath}.class", "connector: python needs class: module:Class (a ProcessorConnector)"
            return
        try:
            load_connector_class(processor.class_path)
        except ConnectorClassError as exc:
            yield f"{ppath}.class", str(exc)

    def _request(self, path: str, request: RequestTemplate, allowed: set[str], what: str) -> Iterator[tuple[str, str]]:
        try:
            placeholders = request.placeholders
        except ValueError as exc:
            yield path, f"malformed request template: {exc}"
            return
        for name in placeholders:
            if name not in allowed:
                yield path, f"placeholder {{{name}}} is not one of {what} ({', '.join(sorted(allowed))})" + suggest(
                    name, allowed
                )
        overlap = set(request.success_status) & set(request.absent_status)
        if overlap:
            yield f"{path}.absent_status", f"status {sorted(overlap)} cannot mean both success and absent"
        if request.paging is not None and request.paging.cursor_param in request.query:
            yield f"{path}.paging.cursor_param", (
                f"{request.paging.cursor_param!r} is already a query parameter of the call: the cursor needs its own"
            )

    # -- DynamoDB tables -------------------------------------------------------------------

    def _item_table(self, system: DynamoDBSystem, table: ItemTable) -> Iterator[tuple[str, str]]:
        """Keys and index attributes are declared, identities are kinds, and finding one person
        (or one business) is a Query: an identity attribute that is no table or index partition key
        would need a Scan of the whole table per request, which the map refuses."""
        tpath = _table_path(system.name, table.name)
        names = table.attribute_names
        for name in _duplicates(names):
            yield f"{tpath}.attributes[{name}]", f"duplicate attribute name {name!r} in table {table.name!r}"
        for attribute in table.attributes:
            apath = f"{tpath}.attributes[{attribute.name}]"
            yield from self._taxonomy(f"{apath}.data_category", attribute.data_category, "data category")
            yield from self._taxonomy(f"{apath}.data_use", attribute.data_use, "data use")
            if attribute.erasure_action not in (ErasureAction.delete_row, ErasureAction.none):
                yield f"{apath}.erasure", (
                    f"erasure {attribute.erasure_action.value} is not supported on a DynamoDB item: its items are "
                    "deleted whole (delete_row)"
                )
            if attribute.is_personal and attribute.erasure is None:
                yield f"{apath}.erasure", "personal attribute without an erasure action: declare delete_row"
        keys: list[tuple[str, Any]] = [("partition_key", table.partition_key)]
        if table.sort_key is not None:
            keys.append(("sort_key", table.sort_key))
        for index in table.indexes:
            keys.append((f"indexes[{index.name}].partition_key", index.partition_key))
            if index.sort_key is not None:
                keys.append((f"indexes[{index.name}].sort_key", index.sort_key))
        for where, key in keys:
            if key.attribute not in names:
                yield f"{tpath}.{where}.attribute", f"key attribute {key.attribute!r} is not an attribute of {table.name!r}" + (
                    suggest(key.attribute, names)
                )
            if key.kind is not None and where != "partition_key":
                yield f"{tpath}.{where}.kind", (
                    "only the table's partition key names an identity kind (a person's items are found by it)"
                )
        kind = table.partition_key.kind
        if kind is None:
            yield f"{tpath}.partition_key.kind", (
                "the partition key must name the identity kind it holds (phone, email): a person's items are found "
                "by a Query on it; a table keyed by something else would need a Scan for one person"
            )
        elif kind not in self.dm.identity_kinds:
            yield f"{tpath}.partition_key.kind", f"unknown identity kind {kind!r}" + suggest(kind, list(self.dm.identity_kinds))
        partition_keys = {table.partition_key.attribute, *(i.partition_key.attribute for i in table.indexes)}
        for identity in table.identities:
            ipath = f"{tpath}.identities[{identity.field}]"
            if identity.kind not in self.dm.identity_kinds:
                yield f"{ipath}.kind", f"unknown identity kind {identity.kind!r}" + suggest(identity.kind, list(self.dm.identity_kinds))
            if identity.field not in partition_keys:
                yield ipath, (
                    f"finding a person by {identity.field!r} would need a Scan of {table.name!r} (it is neither the "
                    "table's nor an index's partition key): add a global secondary index on it, or remove the identity"
                )
        if table.ttl_attribute is not None and table.ttl_attribute not in names:
            yield f"{tpath}.ttl_attribute", f"TTL attribute {table.ttl_attribute!r} is not an attribute of {table.name!r}" + (
                suggest(table.ttl_attribute, names)
            )
        if table.ttl_attribute is not None and table.ttl_attribute in table.key_attributes:
            yield f"{tpath}.ttl_attribute", "the TTL attribute cannot be a key attribute"
        if len({i.name for i in table.indexes}) != len(table.indexes):
            yield f"{tpath}.indexes", "duplicate index names"
        if sum(i.purpose == "business" for i in table.indexes) > 1:
            yield f"{tpath}.indexes", "at most one index serves business look-ups (purpose: business)"

    # -- legal exceptions and retention ----------------------------------------------------

    def _resolve_table(self, path: str, system_name: str, table_name: str) -> tuple[TableSpec | None, list[tuple[str, str]]]:
        system = self.dm.system(system_name)
        if not isinstance(system, PostgresSystem):
            names = [s.name for s in self.dm.postgres_systems]
            return None, [(f"{path}.system", f"no postgres system {system_name!r}" + suggest(system_name, names))]
        table = system.table(table_name)
        if table is None:
            return None, [
                (f"{path}.table", f"no table {system_name}.{table_name}" + suggest(table_name, [t.name for t in system.tables]))
            ]
        return table, []

    def _legal_exception(self, index: int, exception: LegalException) -> Iterator[tuple[str, str]]:
        path = f"legal_exceptions[{exception.name}]"
        yield from self._taxonomy(f"{path}.data_use", exception.data_use, "data use")
        table, problems = self._resolve_table(path, exception.system, exception.table)
        yield from problems
        if table is None:
            return
        if exception.age_column not in table.field_names:
            yield f"{path}.age_column", f"age column {exception.age_column!r} is not a field of {table.name!r}" + suggest(
                exception.age_column, table.field_names
            )
        others = [e for e in self.dm.legal_exceptions[:index] if (e.system, e.table) == (exception.system, exception.table)]
        if others:
            yield path, f"table {exception.table!r} already has legal exception {others[0].name!r}; merge them"

    def _retention(self, index: int, rule: RetentionRule) -> Iterator[tuple[str, str]]:
        path = f"retention[{rule.name}]"
        if rule.prefix is not None:
            yield from self._prefix_retention(path, rule)
            return
        assert rule.table is not None
        if isinstance(self.dm.system(rule.system), DynamoDBSystem):
            yield from self._item_retention(path, rule)
            return
        table, problems = self._resolve_table(path, rule.system, rule.table)
        yield from problems
        if table is None:
            return
        names = table.field_names
        if rule.action == "ttl":
            yield f"{path}.action", "ttl applies to DynamoDB tables (their TTL attribute); for SQL tables use delete_rows"
        if rule.action == "delete_objects":
            yield f"{path}.action", "delete_objects applies to object prefixes; for tables use delete_rows"
        if rule.age_column is None:
            yield f"{path}.age_column", "a table retention rule needs the age_column its period counts from"
        elif rule.age_column not in names:
            yield f"{path}.age_column", f"retention rule on a missing age column {rule.age_column!r} of {table.name!r}" + (
                suggest(rule.age_column, names)
            )
        if rule.action == "null_fields":
            if not rule.fields:
                yield f"{path}.fields", "null_fields needs the list of fields to null"
            for name in rule.fields:
                if name not in names:
                    yield f"{path}.fields", f"{name!r} is not a field of {table.name!r}" + suggest(name, names)
        elif rule.fields:
            yield f"{path}.fields", f"fields is only used with action null_fields (action is {rule.action})"
        if rule.action == "generalise":
            if rule.generalise is None:
                yield f"{path}.generalise", "action generalise needs generalise: {field: ..., method: ...}"
            elif rule.generalise.field not in names:
                yield f"{path}.generalise.field", f"{rule.generalise.field!r} is not a field of {table.name!r}" + suggest(
                    rule.generalise.field, names
                )
        elif rule.generalise is not None:
            yield f"{path}.generalise", f"generalise is only used with action generalise (action is {rule.action})"
        ref = TableRef(rule.system, rule.table)
        referencing = [e for e in graph.reference_edges(self.dm, tuple(ReferenceKind)) if e.parent == ref and e.child != ref]
        for cindex, condition in enumerate(rule.conditions):
            cpath = f"{path}.conditions[{cindex}]"
            if condition.column is not None and condition.column not in names:
                yield f"{cpath}.column", f"{condition.column!r} is not a field of {table.name!r}" + suggest(condition.column, names)
            if condition.unreferenced and not referencing:
                yield f"{cpath}.unreferenced", f"no table references {table.name!r}; drop this condition"
        if rule.action == "delete_rows":
            # Owned rows go with their owner and mentions are cleared (as in erasure); only a scope
            # reference (rows collected for a business) would be broken by the delete.
            scoped = [e for e in referencing if e.kind is ReferenceKind.scope]
            if scoped and not any(c.unreferenced for c in rule.conditions):
                yield f"{path}.conditions", (
                    f"deleting rows of {table.name!r} would break rows collected for them "
                    f"({', '.join(sorted({str(e.child) for e in scoped}))}); add the condition {{unreferenced: true}}"
                )
            exception = self.dm.legal_exception_for(ref)
            if exception is not None and rule.period.approx_days < exception.period.approx_days:
                yield f"{path}.period", (
                    f"deletes {table.name!r} rows after {rule.period.iso}, but legal exception {exception.name!r} "
                    f"requires keeping them {exception.period.iso}"
                )

    def _item_retention(self, path: str, rule: RetentionRule) -> Iterator[tuple[str, str]]:
        """A DynamoDB table's rule keeps each item's TTL within age + period (action ``ttl``):
        the table declares its TTL attribute, the age attribute is one of its attributes."""
        system = self.dm.system(rule.system)
        assert isinstance(system, DynamoDBSystem) and rule.table is not None
        table = system.table(rule.table)
        if table is None:
            yield f"{path}.table", f"no table {system.name}.{rule.table}" + suggest(rule.table, [t.name for t in system.tables])
            return
        names = table.attribute_names
        if rule.action != "ttl":
            yield f"{path}.action", (
                f"DynamoDB tables take action ttl (the sweep sets each item's TTL; DynamoDB deletes the item), "
                f"not {rule.action}"
            )
        if table.ttl_attribute is None:
            yield f"{path}.table", f"table {table.name!r} declares no ttl_attribute: declare the attribute DynamoDB expires items by"
        if rule.age_column is None:
            yield f"{path}.age_column", "a ttl rule needs the age_column (the attribute holding the item's time) its period counts from"
        elif rule.age_column not in names:
            yield f"{path}.age_column", f"retention rule on a missing age attribute {rule.age_column!r} of {table.name!r}" + (
                suggest(rule.age_column, names)
            )
        elif rule.age_column == table.ttl_attribute:
            yield f"{path}.age_column", "the age attribute cannot be the TTL attribute itself"
        if rule.fields or rule.generalise is not None:
            yield path, "fields and generalise apply to SQL tables, not DynamoDB tables"
        if rule.conditions:
            yield f"{path}.conditions", "conditions apply to SQL tables, not DynamoDB tables"
        others = [r.name for r in self.dm.retention if r is not rule and (r.system, r.table) == (rule.system, rule.table)]
        if others:
            yield path, f"table {table.name!r} already has ttl rule {others[0]!r}: one TTL per item, merge them"

    def _prefix_retention(self, path: str, rule: RetentionRule) -> Iterator[tuple[str, str]]:
        assert rule.prefix is not None
        system = self.dm.system(rule.system)
        if not isinstance(system, ObjectStoreSystem):
            names = [s.name for s in self.dm.object_systems]
            yield f"{path}.system", f"no object-store system {rule.system!r}" + suggest(rule.system, names)
            return
        prefix = system.prefix(rule.prefix)
        if prefix is None:
            yield f"{path}.prefix", f"no prefix {rule.prefix!r} in {system.name!r}" + suggest(
                rule.prefix, [p.name for p in system.prefixes]
            )
            return
        if rule.action != "delete_objects":
            yield f"{path}.action", f"object prefixes take action delete_objects, not {rule.action}"
        if rule.fields or rule.generalise is not None:
            yield path, "fields and generalise apply to tables, not object prefixes"
        if rule.conditions:
            yield f"{path}.conditions", "conditions apply to tables, not object prefixes"
        if rule.age_column is not None:
            tie = self.dm.tie_table(prefix)
            if tie is None:
                yield f"{path}.age_column", (
                    f"prefix {prefix.name!r} is not tied to a table: omit age_column to age objects by last-modified time"
                )
                return
            try:
                table = self.dm.table(tie)
            except KeyError:
                return  # reported on the prefix
            if rule.age_column not in table.field_names:
                yield f"{path}.age_column", (
                    f"retention rule on a missing age column {rule.age_column!r} of the tied table {table.name!r}"
                    + suggest(rule.age_column, table.field_names)
                )

    # -- graph -----------------------------------------------------------------------------

    def _cycles(self) -> Iterator[tuple[str, str]]:
        ownership_cycles = graph.find_cycles(self.dm, (ReferenceKind.ownership,))
        for cycle in ownership_cycles:
            first = cycle[0]
            yield f"{_table_path(first.system, first.table)}.references", (
                "ownership cycle: " + " -> ".join(str(t) for t in [*cycle, cycle[0]])
                + " (a row cannot be erased with its own descendants; make one reference a mention)"
            )
        if ownership_cycles:
            return
        for cycle in graph.find_cycles(self.dm):
            first = cycle[0]
            yield f"{_table_path(first.system, first.table)}.references", (
                "reference cycle: " + " -> ".join(str(t) for t in [*cycle, cycle[0]])
                + " (no erasure order deletes children before parents)"
            )

    def _reachability(self) -> Iterator[tuple[str, str]]:
        reachable = set(graph.erasure_tables(self.dm))
        for system in self.dm.postgres_systems:
            for table in system.tables:
                if TableRef(system.name, table.name) in reachable:
                    continue
                personal = [f.name for f in table.fields if f.is_personal]
                if personal:
                    yield _table_path(system.name, table.name), (
                        f"holds personal fields ({', '.join(personal)}) but no identity or ownership reference "
                        "reaches it, so export and erasure would miss it: add an identity or an ownership reference"
                    )
