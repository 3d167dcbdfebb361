"""The quality gate: the written bundle is checked with Great Expectations before any link.

The gate reads the staged object back from the object store (so it checks what was written,
not what the writer meant to write), decrypts it chunk by chunk (only ciphertext on disk) and checks, with one GX
suite per question:

* **counts**: per table and data format, the rows in the bundle equal the source count taken in
  the export's snapshot and the manifest's count; per object prefix and processor, the same for
  objects and records;
* **ties**: every exported row is tied to the person: it holds one of their identities (compared
  as keyed hashes), or it is owned, through a declared ownership reference, by a row of theirs in
  the bundle; every object belongs to one of their rows; for a business-scoped request every row
  carries that business; no row appears twice. Rows tied by an identity are narrowed to one
  person by the rule resolution uses (:func:`governance.resolution.narrow_to_one_person`): a row
  carrying another value of an identity the request names, or matching fewer of them than
  another row of the same table and business (the household neighbour who shares the phone), or
  tied with one, is another person's; it fails the ``narrowing`` check and nothing it owns is
  tied;
* **files**: every entry's SHA-256 and size match the manifest, no entry is missing from either,
  and the encrypted object is the one the writer uploaded; the manifest names this request.

The checks stream: rows are not kept (see :class:`_Frames`), so a subject with a million rows
costs the gate a few bytes per row (a key digest), not a per-row frame.

No identity reaches GX: identity values are replaced by keyed hashes (``id:email:<hmac>``) and
the person's hashes and ids are bound as suite parameters (``$PARAMETER``), so results, which
repeat unexpected values, show hashes, ids, keys and paths only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import unicodedata
import zipfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from governance import expectations as engine
from governance.datamap.model import (
    DataMap,
    IdentityMatch,
    ObjectStoreSystem,
    PrefixRef,
    ReferenceKind,
    TableRef,
)
from governance.datamap.plans import ObjectStep
from governance.export.age import AgeError, AgeRandomAccessReader, verify
from governance.export.bundle import INDEX_PATH, MANIFEST_PATH, BundleManifest, files_digest
from governance.export.formats import FORMATS, READ_PREFERENCE, BundleFormatError, DataFormat, read_rows
from governance.identity import InvalidIdentity, normalise_email
from governance.resolution import DIFFERS, MATCHES, IdentityMatchRow, narrow_to_one_person

ENCRYPTED_BUNDLE = "(encrypted bundle)"
# Values of the ties suite's ``narrowing`` column: only KEPT passes.
KEPT = "kept"
AMBIGUOUS = "ambiguous"
MAX_EXAMPLES = 5

TokenFor = Callable[[str, str], str]  # (identity kind, value) -> keyed hash


@dataclass(frozen=True)
class GateCheck:
    suite: str
    expectation: str
    columns: str
    success: bool
    unexpected_count: int
    examples: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: list[GateCheck]
    rows_checked: int
    files_checked: int

    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.success]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rows_checked": self.rows_checked, "files_checked": self.files_checked,
                "checks": [asdict(c) for c in self.checks]}  # fmt: skip

    def describe_failures(self) -> str:
        return "; ".join(f"{c.suite}: {c.expectation}({c.columns}) {c.unexpected_count} unexpected" for c in self.failed())


@dataclass
class _Frames:
    """What the suites check. Rows are not kept: each bundle row adds one to its group of the
    ties frame (dataset, tie, scope, narrowing; a heavy subject's million events are one group)
    and an 8-byte digest of its key to its dataset's key list, so the gate's memory follows the
    number of distinct ties, not of rows."""

    counts: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    tie_groups: Counter[tuple[str, str, str | None, str]] = field(default_factory=Counter)
    key_digests: dict[str, array[int]] = field(default_factory=dict)
    rows: int = 0

    def add_tie(self, dataset: str, key: str, tie: str, scope: str | None, narrowing: str) -> None:
        """Record one bundle row of ``dataset`` (its key, what ties it, its business, narrowing)."""
        self.tie_groups[(dataset, tie, scope, narrowing)] += 1
        digests = self.key_digests.get(dataset)
        if digests is None:
            digests = self.key_digests[dataset] = array("Q")
        digests.append(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little"))
        self.rows += 1

    @property
    def ties(self) -> list[dict[str, Any]]:
        """The ties frame: one row per group, with how many bundle rows it holds."""
        return [{"dataset": d, "tie": t, "scope": s, "narrowing": n, "rows": rows}
                for (d, t, s, n), rows in self.tie_groups.items()]  # fmt: skip

    def repeated_keys(self) -> list[dict[str, Any]]:
        """One row per occurrence of a key that occurs more than once in its dataset (keys as
        their digests): empty exactly when every (dataset, key) of the bundle is unique."""
        import numpy as np

        out: list[dict[str, Any]] = []
        for dataset, digests in sorted(self.key_digests.items()):
            values = np.sort(np.frombuffer(digests, dtype=np.uint64))
            if len(values) < 2:
                continue
            repeated = values[1:] == values[:-1]
            if not repeated.any():
                continue
            unique, counts = np.unique(values, return_counts=True)
            for value, count in zip(unique[counts > 1], counts[counts > 1], strict=True):
                out += [{"dataset": dataset, "key": f"key-digest:{int(value):016x}"}] * int(count)
        return out


class _HashingReader:
    def __init__(self, body: Any) -> None:
        self._body = body
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._body.read(size))
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _entry_digest(archive: zipfile.ZipFile, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with archive.open(name) as entry:
        while chunk := entry.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _identity_token(kind: str, match: IdentityMatch, value: Any, token_for: TokenFor) -> str:
    text = str(value)
    if match.folds_case:
        if match is IdentityMatch.lowered_nfc:
            text = unicodedata.normalize("NFC", text)
        try:
            text = normalise_email(text) if kind == "email" else text.lower()
        except InvalidIdentity:
            text = text.strip().lower()
    return f"id:{kind}:{token_for(kind, text)}"


def subject_identity_tokens(identities: Iterable[tuple[str, str]], token_for: TokenFor) -> set[str]:
    """The person's identity tokens (normalised identities are already in matching form)."""
    return {f"id:{kind}:{token_for(kind, value)}" for kind, value in identities}


def _own_token(target: TableRef, column: str, value: Any) -> str:
    return f"own:{target}:{column}:{value}"


def _object_token(system: str, key: str) -> str:
    return f"key:{system}:{key}"


def _object_prefix(datamap: DataMap, system: str, key: str) -> PrefixRef | None:
    store = datamap.system(system)
    if not isinstance(store, ObjectStoreSystem):
        return None
    for prefix in sorted(store.prefixes, key=lambda p: -len(p.static_prefix)):
        if prefix.static_prefix and key.startswith(prefix.static_prefix):
            return PrefixRef(system, prefix.name)
    return None


def _tie_order(datamap: DataMap, tables: Sequence[TableRef]) -> list[TableRef]:
    """Tables with identity columns first, then owned tables after the tables that own them."""
    remaining = list(tables)
    ordered: list[TableRef] = []
    while remaining:
        progressed = False
        for ref in list(remaining):
            parents = [
                datamap.reference_target(ref, r)[0]
                for r in datamap.table(ref).references
                if r.kind is ReferenceKind.ownership or r.exports_orphans
            ]
            if all(p in ordered or p not in tables for p in parents):
                ordered.append(ref)
                remaining.remove(ref)
                progressed = True
        if not progressed:  # a cycle cannot happen in a validated map; keep going regardless
            ordered += remaining
            break
    return ordered


def collect_gate_frames(
    archive: zipfile.ZipFile,
    manifest: BundleManifest,
    datamap: DataMap,
    *,
    source_counts: Mapping[str, int],
    identity_tokens: set[str],
    token_for: TokenFor,
    ciphertext: tuple[str, int],
    expected_ciphertext: tuple[str, int],
    request_id: str,
    expected_files_digest: str,
    expected_formats: Sequence[str] = (),
) -> tuple[_Frames, set[str]]:
    """The rows the GX suites check, and the allowed tie tokens (the suites' parameter)."""
    frames = _Frames()
    names = [n for n in archive.namelist() if not n.endswith("/")]

    # files -----------------------------------------------------------------------------------
    listed = {f["path"]: f for f in manifest.files}
    actual: dict[str, tuple[str, int]] = {}
    for name in names:
        if name != MANIFEST_PATH:
            actual[name] = _entry_digest(archive, name)
    for path in sorted(set(listed) | set(actual)):
        m = listed.get(path)
        a = actual.get(path)
        frames.files.append({"path": path, "manifest_sha256": m["sha256"] if m else None,
                             "bundle_sha256": a[0] if a else None, "manifest_bytes": m["bytes"] if m else None,
                             "bundle_bytes": a[1] if a else None})  # fmt: skip
    frames.files.append({"path": ENCRYPTED_BUNDLE, "manifest_sha256": expected_ciphertext[0],
                         "bundle_sha256": ciphertext[0], "manifest_bytes": expected_ciphertext[1],
                         "bundle_bytes": ciphertext[1]})  # fmt: skip
    frames.facts += [
        {"fact": "request_id", "expected": request_id, "actual": manifest.request_id},
        {"fact": "files_digest", "expected": expected_files_digest, "actual": files_digest(manifest.files)},
        {"fact": "index_present", "expected": "yes", "actual": "yes" if INDEX_PATH in actual else "no"},
    ]

    # data files by dataset and format (from the paths, not from the manifest) -----------------
    data_files: dict[TableRef, dict[str, str]] = {}
    object_entries: dict[PrefixRef, list[tuple[str, str]]] = {}
    processor_records: dict[str, set[str]] = {}
    item_tables = {f"{system.name}.{table.name}": table for system, table in datamap.item_tables()}
    item_files: dict[str, str] = {}
    for name in names:
        parts = name.split("/")
        if parts[0] == "data" and len(parts) == 3 and parts[2].endswith(".json") and f"{parts[1]}.{parts[2][:-5]}" in item_tables:
            item_files[f"{parts[1]}.{parts[2][:-5]}"] = name
        elif parts[0] == "data" and len(parts) == 3 and "." in parts[2]:
            table, _, fmt = parts[2].rpartition(".")
            data_files.setdefault(TableRef(parts[1], table), {})[fmt] = name
        elif parts[0] == "files" and len(parts) >= 3:
            key = "/".join(parts[2:])
            prefix_ref = _object_prefix(datamap, parts[1], key)
            object_entries.setdefault(prefix_ref or PrefixRef(parts[1], "?"), []).append((parts[1], key))
        elif parts[0] == "processors" and len(parts) >= 4:
            processor_records.setdefault(parts[1], set()).add(parts[2])

    # rows: counts and ties -------------------------------------------------------------------
    tables = sorted({TableRef(*name.split(".", 1)) for name in manifest.tables} | set(data_files))
    known = set(datamap.table_refs())
    allowed = set(identity_tokens)
    requested: dict[str, set[str]] = {}  # identity kind -> the person's tokens of that kind
    for token in identity_tokens:
        requested.setdefault(token.split(":", 2)[1], set()).add(token)
    tied_rows: dict[TableRef, list[dict[str, Any]]] = {}
    # Columns other rows point at through ownership (keys, never identities or content): only
    # their values become tokens, so the suite's parameters hold ids, not personal data.
    targeted: dict[TableRef, set[str]] = {}
    for ref in known:
        for reference in datamap.table(ref).references:
            if reference.kind is ReferenceKind.ownership or reference.exports_orphans:
                target, column = datamap.reference_target(ref, reference)
                targeted.setdefault(target, set()).add(column)
    # What object keys are rendered from, per table objects are tied to.
    object_columns: dict[TableRef, set[str]] = {}
    for prefix_ref in datamap.prefix_refs():
        prefix = datamap.prefix(prefix_ref)
        tie_table = datamap.tie_table(prefix)
        if prefix.tied_to is not None and tie_table is not None:
            columns = {prefix.tied_to.column_for(p) for p in prefix.placeholders}
            columns |= {prefix.tied_to.key_column} if prefix.tied_to.key_column else set()
            object_columns.setdefault(tie_table, set()).update(columns)
    for ref in _tie_order(datamap, tables):
        dataset = str(ref)
        formats = data_files.get(ref, {})
        source = int(source_counts.get(dataset, 0))
        manifest_rows = int(manifest.tables.get(dataset, {}).get("rows", 0))
        if not formats:
            frames.counts.append({"dataset": dataset, "format": "-", "bundle_rows": 0, "source_rows": source,
                                  "manifest_rows": manifest_rows})  # fmt: skip
            continue
        if ref not in known:
            frames.add_tie(dataset, "-", f"unmapped:{dataset}", None, KEPT)
            continue
        spec = datamap.table(ref)
        read_fmt: DataFormat = next((f for f in READ_PREFERENCE if f in formats), "json")
        for fmt in sorted(set(expected_formats) - set(formats)):  # a chosen format with no file
            frames.counts.append({"dataset": dataset, "format": fmt, "bundle_rows": 0, "source_rows": source,
                                  "manifest_rows": manifest_rows})  # fmt: skip
        settling = _TableTies(ref, frames, allowed, tied_rows, requested)
        for fmt, path in sorted(formats.items()):
            if fmt not in FORMATS:
                frames.facts.append({"fact": f"known_format:{path}", "expected": "yes", "actual": "no"})
                continue
            rows = 0
            with archive.open(path) as stream:
                try:
                    for record in read_rows(fmt, stream):
                        rows += 1
                        if fmt == read_fmt:
                            settling.add(_row_tie(datamap, ref, spec, record, token_for,
                                                 targeted=targeted.get(ref, set()), keep=object_columns.get(ref, set())))  # fmt: skip
                except (BundleFormatError, UnicodeDecodeError):
                    frames.facts.append({"fact": f"readable:{path}", "expected": "yes", "actual": "no"})
            frames.counts.append({"dataset": dataset, "format": fmt, "bundle_rows": rows, "source_rows": source,
                                  "manifest_rows": manifest_rows})  # fmt: skip
        settling.finish()

    # objects --------------------------------------------------------------------------------
    for prefix_ref in datamap.prefix_refs():
        prefix = datamap.prefix(prefix_ref)
        if prefix.tied_to is None:
            continue
        source_table = datamap.tie_table(prefix)
        assert source_table is not None
        step = ObjectStep(prefix_ref, prefix.key_template, source_table,
                          {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}, prefix.tied_to.key_column)  # fmt: skip
        for key in step.keys_for(tied_rows.get(source_table, [])):
            allowed.add(_object_token(prefix_ref.system, key))
        dataset = str(prefix_ref)
        if dataset in manifest.objects or prefix_ref in object_entries or dataset in source_counts:
            entries = object_entries.get(prefix_ref, [])
            frames.counts.append({"dataset": dataset, "format": "object", "bundle_rows": len(entries),
                                  "source_rows": int(source_counts.get(dataset, 0)),
                                  "manifest_rows": int(manifest.objects.get(dataset, {}).get("objects", 0))})  # fmt: skip
    for prefix_ref, entries in sorted(object_entries.items()):
        for system, key in entries:
            frames.add_tie(str(prefix_ref), key, _object_token(system, key), None, KEPT)

    # DynamoDB items: counted, and each tied to the person by its partition key (an identity) ------
    for dataset in sorted(set(manifest.items) | set(item_files)):
        path = item_files.get(dataset)
        item_table = item_tables.get(dataset)
        count = 0
        if path is not None:
            try:
                with archive.open(path) as stream:
                    records = json.load(stream)
            except (ValueError, UnicodeDecodeError):
                frames.facts.append({"fact": f"readable:{path}", "expected": "yes", "actual": "no"})
                records = []
            for index, record in enumerate(records if isinstance(records, list) else []):
                count += 1
                if item_table is None or not isinstance(record, dict):
                    frames.add_tie(dataset, str(index), f"unmapped:{dataset}", None, KEPT)
                    continue
                kind = item_table.partition_key.kind or "?"
                value = record.get(item_table.partition_key.attribute)
                business = item_table.business_index
                scope = record.get(business.partition_key.attribute) if business else None
                sort = record.get(item_table.sort_key.attribute) if item_table.sort_key else index
                frames.add_tie(dataset, str(sort), _identity_token(kind, IdentityMatch.exact, value, token_for),
                               None if scope is None else str(scope), KEPT)  # fmt: skip
        frames.counts.append({"dataset": dataset, "format": "json", "bundle_rows": count,
                              "source_rows": int(source_counts.get(dataset, 0)),
                              "manifest_rows": int(manifest.items.get(dataset, {}).get("items", 0))})  # fmt: skip

    # processors -------------------------------------------------------------------------------
    for name in sorted(set(manifest.processors) | set(processor_records)):
        dataset = f"processor:{name}"
        frames.counts.append({"dataset": dataset, "format": "json", "bundle_rows": len(processor_records.get(name, ())),
                              "source_rows": int(source_counts.get(dataset, 0)),
                              "manifest_rows": int(manifest.processors.get(name, {}).get("records", 0))})  # fmt: skip
    return frames, allowed


@dataclass
class _RowTie:
    """What the ties suite needs of one bundle row: keyed hashes, ids and keys, never content."""

    key: str
    scope: str | None
    identities: list[tuple[str, str]]  # (kind, token) per identity column holding a value
    owners: list[str]  # ownership tokens per ownership reference holding a value
    targeted: dict[str, Any]  # values other rows' ownership references point at
    kept: dict[str, Any]  # what object keys are rendered from


def _row_tie(
    datamap: DataMap,
    ref: TableRef,
    spec: Any,
    record: Mapping[str, Any],
    token_for: TokenFor,
    *,
    targeted: set[str],
    keep: set[str],
) -> _RowTie:
    identities: list[tuple[str, str]] = []
    for identity in spec.identities:
        value = record.get(identity.field)
        if value is not None and value != "":
            match = identity.match or datamap.identity_kinds[identity.kind].match
            identities.append((identity.kind, _identity_token(identity.kind, match, value, token_for)))
    owners: list[str] = []
    for reference in spec.references:
        if reference.kind is not ReferenceKind.ownership:
            continue
        value = record.get(reference.field)
        if value is not None and value != "":
            target, column = datamap.reference_target(ref, reference)
            owners.append(_own_token(target, column, value))
    if not owners:  # a mention-only row the export includes is tied through its mention
        for reference in spec.references:
            value = record.get(reference.field)
            if reference.exports_orphans and value is not None and value != "":
                target, column = datamap.reference_target(ref, reference)
                owners.append(_own_token(target, column, value))
    scope = record.get(spec.scope_column) if spec.scope_column else None
    return _RowTie(
        key=str(record.get(spec.primary_key)),
        scope=None if scope is None else str(scope),
        identities=identities,
        owners=owners,
        targeted={c: record.get(c) for c in targeted},
        kept={c: record.get(c) for c in keep} if keep else {},
    )


class _TableTies:
    """Ties the rows of one table as they are read, then narrows the rows tied by an identity to
    one person, as resolution does.

    A row owned by a row already tied (a usage event of the person's user) is settled at once
    and let go; only rows tied by an identity (or by nothing) wait for :meth:`finish`, since
    narrowing compares them with each other. What the table's kept rows let other rows tie (the
    columns ownership references target, and what object keys are rendered from) is added to
    ``allowed`` once the table is done: rows of one table never tie each other.
    """

    def __init__(self, ref: TableRef, frames: _Frames, allowed: set[str], tied_rows: dict[TableRef, list[dict[str, Any]]],
                 requested: Mapping[str, set[str]]) -> None:  # fmt: skip
        self.ref = ref
        self.dataset = str(ref)
        self.frames = frames
        self.allowed = allowed
        self.tied_rows = tied_rows
        self.requested = requested
        self.waiting: list[_RowTie] = []
        self.unlocked: set[str] = set()

    def add(self, row: _RowTie) -> None:
        owner = next((t for t in row.owners if t in self.allowed), None)
        if owner is None:
            self.waiting.append(row)
        else:
            self._settle(row, owner, KEPT)

    def _settle(self, row: _RowTie, tie: str, narrowing: str) -> None:
        self.frames.add_tie(self.dataset, row.key, tie, row.scope, narrowing)
        if tie in self.allowed and narrowing == KEPT:
            for column, value in row.targeted.items():
                if value is not None:
                    self.unlocked.add(_own_token(self.ref, column, value))
            if row.kept:
                self.tied_rows.setdefault(self.ref, []).append(row.kept)

    def finish(self) -> None:
        rows, self.waiting = self.waiting, []
        ties: list[str] = []
        matched: dict[int, IdentityMatchRow] = {}
        for n, row in enumerate(rows):
            identity = next((t for _kind, t in row.identities if t in self.allowed), None)
            candidates = [t for _kind, t in row.identities] + row.owners
            ties.append(identity or (candidates[0] if candidates else f"untied:{self.ref}"))
            if identity is not None:  # found by an identity, not through its owner
                states = tuple(MATCHES if t in self.requested[kind] else DIFFERS
                               for kind, t in row.identities if kind in self.requested)  # fmt: skip
                matched[n] = IdentityMatchRow(row.scope, states)
        left_out, ambiguous = narrow_to_one_person(matched)
        ambiguous_scopes = {scope for scope, _rows in ambiguous}
        for n, row in enumerate(rows):
            narrowing = left_out.get(n) or (AMBIGUOUS if n in matched and matched[n].scope in ambiguous_scopes else KEPT)
            self._settle(row, ties[n], narrowing)
        self.allowed |= self.unlocked


def _run_suites(frames: _Frames, *, allowed: set[str], scope_ids: Sequence[int] | None) -> list[GateCheck]:
    import pandas as pd


    gx = engine.load()  # free when the scheduler preloaded it (governance.executors)
    import great_expectations.expectations as gxe

    context = engine.ephemeral_context()
    source = context.data_sources.add_pandas("export_bundle")
    suites: dict[str, tuple[pd.DataFrame, list[Any]]] = {
        "counts": (
            pd.DataFrame(frames.counts, columns=["dataset", "format", "bundle_rows", "source_rows", "manifest_rows"]),
            [
                gxe.ExpectColumnPairValuesToBeEqual(column_A="bundle_rows", column_B="source_rows"),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="bundle_rows", column_B="manifest_rows"),
            ],
        ),
        "ties": (
            pd.DataFrame(frames.ties, columns=["dataset", "tie", "scope", "narrowing", "rows"]),
            [
                gxe.ExpectColumnValuesToBeInSet(column="tie", value_set={"$PARAMETER": "subject_ties"}),
                gxe.ExpectColumnValuesToBeInSet(column="narrowing", value_set=[KEPT]),
                *([gxe.ExpectColumnValuesToBeInSet(column="scope", value_set={"$PARAMETER": "scope_ids"})]
                  if scope_ids else []),  # fmt: skip
            ],
        ),
        # Uniqueness over the keys that repeat (every occurrence of each): unique over the whole
        # bundle exactly when this frame is, with the same unexpected rows.
        "keys": (
            pd.DataFrame(frames.repeated_keys(), columns=["dataset", "key"]),
            [gxe.ExpectCompoundColumnsToBeUnique(column_list=["dataset", "key"])],
        ),
        "files": (
            pd.DataFrame(frames.files, columns=["path", "manifest_sha256", "bundle_sha256", "manifest_bytes", "bundle_bytes"]),
            [
                gxe.ExpectColumnValuesToNotBeNull(column="manifest_sha256"),
                gxe.ExpectColumnValuesToNotBeNull(column="bundle_sha256"),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="manifest_sha256", column_B="bundle_sha256"),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="manifest_bytes", column_B="bundle_bytes"),
            ],
        ),
        "facts": (
            pd.DataFrame(frames.facts, columns=["fact", "expected", "actual"]),
            [gxe.ExpectColumnPairValuesToBeEqual(column_A="expected", column_B="actual")],
        ),
    }
    parameters = {"subject_ties": sorted(allowed), "scope_ids": [str(s) for s in scope_ids or []]}
    checks: list[GateCheck] = []
    for name, (frame, expectations) in suites.items():
        asset = source.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"export_bundle_{name}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"export_bundle_{name}", data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            # The ties frame is grouped: its unexpected values come back whole (one per group, not
            # per row) to count the bundle rows behind them.
            result_format={"result_format": "COMPLETE" if name == "ties" else "SUMMARY",
                           "partial_unexpected_count": MAX_EXAMPLES},
        )  # fmt: skip
        for outcome in result.results:
            config = outcome.expectation_config
            kwargs = config.kwargs if config is not None else {}
            columns = kwargs.get("column") or ",".join(
                str(c) for c in (kwargs.get("column_list") or [kwargs.get("column_A"), kwargs.get("column_B")]) if c
            )
            info = outcome.result or {}
            unexpected = int(info.get("unexpected_count") or 0)
            if name == "ties" and unexpected and kwargs.get("column") in frame:
                flagged = frame[kwargs["column"]].isin(list(info.get("unexpected_list") or []))
                unexpected = int(frame.loc[flagged, "rows"].sum())  # bundle rows, not groups
            checks.append(
                GateCheck(
                    suite="ties" if name == "keys" else name,  # uniqueness is part of the ties check
                    expectation=config.type if config is not None else "?",
                    columns=str(columns),
                    success=bool(outcome.success),
                    unexpected_count=unexpected,
                    examples=[_plain(v) for v in (info.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]],
                )
            )
    return checks


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def check_bundle(
    *,
    datamap: DataMap,
    s3: Any,
    bucket: str,
    key: str,
    passphrase: str,
    request_id: str,
    source_counts: Mapping[str, int],
    expected_ciphertext: tuple[str, int],
    expected_files_digest: str,
    identities: Iterable[tuple[str, str]],
    token_for: TokenFor,
    scope_ids: Sequence[int] | None = None,
    expected_formats: Sequence[str] = (),
    work_dir: Path | None = None,
) -> GateResult:
    """Read the bundle at ``bucket/key`` back and run the suites; never raises for a bad bundle
    (the result says what failed), only for an unreadable store."""

    # Only ciphertext touches the disk: the bundle is copied as it is stored (hashed on the way),
    # authenticated whole, then read entry by entry through a decrypting view (one 64 KiB chunk in
    # memory). A killed worker leaves an encrypted file in the temporary directory, never a ZIP.
    with tempfile.TemporaryDirectory(prefix="export-gate-", dir=work_dir) as tmp:
        sealed = Path(tmp) / "bundle.zip.age"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        reader = _HashingReader(body)
        frames = _Frames()
        allowed: set[str] = set()
        try:
            with sealed.open("wb") as out:
                while data := reader.read(1 << 20):
                    out.write(data)
        finally:
            body.close()
        ciphertext = (reader.sha256, reader.size)
        with sealed.open("rb") as source:
            try:
                verify(source, passphrase)
                plain = AgeRandomAccessReader(source, passphrase)
            except AgeError:
                frames.facts.append({"fact": "decrypts", "expected": "yes", "actual": "no"})
            if not frames.facts:
                try:
                    with zipfile.ZipFile(io.BufferedReader(plain, buffer_size=1 << 16)) as archive:
                        manifest = BundleManifest.from_json(archive.read(MANIFEST_PATH))
                        frames, allowed = collect_gate_frames(
                            archive, manifest, datamap, source_counts=source_counts,
                            identity_tokens=subject_identity_tokens(identities, token_for), token_for=token_for,
                            ciphertext=ciphertext, expected_ciphertext=expected_ciphertext, request_id=request_id,
                            expected_files_digest=expected_files_digest, expected_formats=expected_formats,
                        )  # fmt: skip
                except (zipfile.BadZipFile, KeyError, ValueError):
                    frames.facts.append({"fact": "readable_zip_with_manifest", "expected": "yes", "actual": "no"})
        if not any(f["path"] == ENCRYPTED_BUNDLE for f in frames.files):
            frames.files.append({"path": ENCRYPTED_BUNDLE, "manifest_sha256": expected_ciphertext[0],
                                 "bundle_sha256": ciphertext[0], "manifest_bytes": expected_ciphertext[1],
                                 "bundle_bytes": ciphertext[1]})  # fmt: skip
    checks = _run_suites(frames, allowed=allowed, scope_ids=scope_ids)
    return GateResult(
        passed=all(c.success for c in checks),
        checks=checks,
        rows_checked=frames.rows,
        files_checked=len(frames.files),
    )

