"""Drift between the data map and a live database: what the map does not know, or gets wrong.

``find_drift`` compares each postgres system of the map with ``information_schema`` and
``pg_indexes`` of the database it names:

* unmapped tables and columns (the app grew; export and erasure would silently miss them), each
  flagged ``looks_personal`` when its name or a small sample of its values looks like personal
  data (e-mail addresses, phone numbers, IP addresses, names, free text);
* mapped tables and columns the database does not have (the map is stale; plans would fail);
* identity columns and reference columns without a usable index (erasure and export would scan
  whole tables, the largest first);
* identity values not in the form the identity normaliser produces (an e-mail stored decomposed,
  NFD, or with white space around it; a phone not in E.164), counted per column, with whether the
  map's comparison still finds them;
* columns the map has set to NULL (an erasure action ``nullify``, a mention reference cleared, an
  ``orphan: {clear: [...]}``, a retention rule's ``null_fields``, an object tie's ``key_column``
  cleared after its objects go) that the database declares ``NOT NULL``: the map validates, but
  that erasure or sweep would fail at run time, after its request was approved.

Sampled values never leave this module: the report says *what kind* of values were seen and how
many, never the values, so it is safe for XCom, task logs and alerts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import phonenumbers
import psycopg
from psycopg import sql

from governance.config import SLA_REPORT_PREFIX, insights_prefix
from governance.datamap import phone_region
from governance.datamap.graph import identity_columns, reference_edges
from governance.datamap.model import (
    DataMap,
    ErasureAction,
    IdentityMatch,
    PostgresSystem,
    ReferenceKind,
    TableRef,
)

SAMPLE_ROWS = 200

# Column names that usually hold personal data (matched on whole words of snake_case names).
_PERSONAL_NAME = re.compile(
    r"(^|_)(e?mail|phone|mobile|msisdn|name|first|last|surname|address|street|city|zip|postcode|postal|"
    r"ip|ipv4|ipv6|user_agent|agent|device|cookie|birth|dob|ssn|passport|license|licence|iban|card|pan|"
    r"lat|lng|lon|latitude|longitude|location|geo|transcript|note|notes|body|message|comment|text|content|"
    r"recording|voice|photo|avatar|gender|age|salary|health)($|_)"
)
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
# Shapes a phone number is typed in; only candidates: phonenumbers decides (a valid number for its
# region, or for the data map's default region when it has no country code).
_PHONE_SHAPE = re.compile(r"^\+?[\d\s().-]{7,24}$")
_PERSONAL_TYPES = {"inet", "cidr", "macaddr", "macaddr8"}
# Column types whose values can be text typed by a person (a phone as typed, an e-mail, free text).
# A number column holds a number: a bigint id 2000000001 is never a phone, whatever its digits.
_TEXT_TYPES = {"text", "varchar", "bpchar", "citext", "name", "json", "jsonb", "xml"}


@dataclass(frozen=True)
class UnmappedColumn:
    """A database column the map does not declare. ``reason`` never contains a value."""

    system: str
    table: str
    column: str
    data_type: str
    looks_personal: bool
    reason: str


@dataclass(frozen=True)
class MissingIndex:
    """A column erasure and export look rows up by, without an index that serves the lookup."""

    system: str
    table: str
    column: str
    expression: str  # the indexed expression that would serve it: ``lower(email)`` or ``caller_id``
    purpose: str  # "identity email", "ownership reference to callers", ...


@dataclass(frozen=True)
class UnnormalisedIdentity:
    """Values of an identity column that are not in the form the identity normaliser produces.
    ``found`` says whether the map's comparison still finds them (an NFD e-mail compared as
    ``lower(normalize(column, NFC))``) or misses them (a phone not in E.164 compared exactly:
    export and erasure would not find that person there). Counts only, never a value."""

    system: str
    table: str
    column: str
    kind: str
    problem: str  # "not in Unicode NFC", "surrounding white space", "not in E.164"
    rows: int
    found: bool


@dataclass(frozen=True)
class NotNullCleared:
    """A column the map sets to NULL that the database declares NOT NULL. ``reasons`` says which
    parts of the map clear it (``erasure: nullify``, ``retention rule X: null_fields``, ...)."""

    system: str
    table: str
    column: str
    reasons: tuple[str, ...]


def cleared_columns(datamap: DataMap) -> dict[tuple[str, str, str], list[str]]:
    """``{(system, table, column): [why]}``: every column some part of the map sets to NULL."""

    cleared: dict[tuple[str, str, str], list[str]] = {}
    for system in datamap.postgres_systems:
        for table in system.tables:
            for spec in table.fields:
                if spec.erasure_action is ErasureAction.nullify:
                    cleared.setdefault((system.name, table.name, spec.name), []).append("erasure: nullify")
            for ref in table.references:
                if ref.kind is ReferenceKind.mention:
                    cleared.setdefault((system.name, table.name, ref.field), []).append(
                        "erasure: the mention is cleared"
                    )
                for name in ref.orphan_clears:
                    cleared.setdefault((system.name, table.name, name), []).append(
                        f"erasure: orphan clear of mention {ref.field}"
                    )
    for rule in datamap.retention:
        if rule.table is not None and rule.action == "null_fields":
            for name in rule.fields:
                cleared.setdefault((rule.system, rule.table, name), []).append(f"retention rule {rule.name}: null_fields")
    only_postgres = datamap.postgres_systems[0].name if len(datamap.postgres_systems) == 1 else None
    for objects in datamap.object_systems:
        for prefix in objects.prefixes:
            tie = prefix.tied_to
            if tie is not None and tie.key_column is not None:
                tied_system = tie.system or only_postgres
                if tied_system is not None:
                    cleared.setdefault((tied_system, tie.table, tie.key_column), []).append(
                        f"prefix {objects.name}:{prefix.name}: key column cleared when its objects go"
                    )
    return cleared


@dataclass(frozen=True)
class DriftReport:
    """Differences between the map and the database; ``is_clean`` when there are none."""

    unmapped_tables: tuple[str, ...] = ()
    unmapped_columns: tuple[UnmappedColumn, ...] = ()
    missing_tables: tuple[str, ...] = ()
    missing_columns: tuple[str, ...] = ()
    missing_indexes: tuple[MissingIndex, ...] = ()
    checked_systems: tuple[str, ...] = field(default=())
    unnormalised_identities: tuple[UnnormalisedIdentity, ...] = ()
    not_null_cleared: tuple[NotNullCleared, ...] = ()

    @property
    def is_clean(self) -> bool:
        return not (
            self.unmapped_tables or self.unmapped_columns or self.missing_tables or self.missing_columns
            or self.missing_indexes or self.unnormalised_identities or self.not_null_cleared
        )

    @property
    def missed_identities(self) -> tuple[UnnormalisedIdentity, ...]:
        """Identity values the map's comparison does not find: people export and erasure miss."""
        return tuple(u for u in self.unnormalised_identities if not u.found)

    @property
    def personal_unmapped(self) -> tuple[UnmappedColumn, ...]:
        """Unmapped columns that look personal: the ones that put promises at risk."""
        return tuple(c for c in self.unmapped_columns if c.looks_personal)

    def messages(self) -> list[str]:
        """One line per finding, most serious first, without any data value."""
        lines = [
            f"unmapped column {c.system}.{c.table}.{c.column} ({c.data_type}) looks personal: {c.reason}"
            for c in self.personal_unmapped
        ]
        lines += [unnormalised_message(u) for u in self.missed_identities]
        lines += [f"mapped table {t} does not exist in the database" for t in self.missing_tables]
        lines += [f"mapped column {c} does not exist in the database" for c in self.missing_columns]
        lines += [not_null_message(n) for n in self.not_null_cleared]
        lines += [unnormalised_message(u) for u in self.unnormalised_identities if u.found]
        lines += [
            f"{i.system}.{i.table}.{i.column} ({i.purpose}) has no index on {i.expression}"
            for i in self.missing_indexes
        ]
        lines += [f"unmapped table {t}" for t in self.unmapped_tables]
        lines += [
            f"unmapped column {c.system}.{c.table}.{c.column} ({c.data_type})"
            for c in self.unmapped_columns
            if not c.looks_personal
        ]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for XCom and run summaries."""
        return {**asdict(self), "is_clean": self.is_clean, "messages": self.messages()}


def find_drift(
    datamap: DataMap, conninfo: str | Mapping[str, str], *, sample_rows: int = SAMPLE_ROWS, region: str | None = None
) -> DriftReport:
    """Compare every postgres system of the map with the database it lives in.

    ``conninfo`` is one libpq URL for all postgres systems, or a mapping from system name to URL
    (systems without an entry are skipped). Reads only catalogue views and ``sample_rows`` values
    of each unmapped text column (values are read as phone numbers in ``region``, default the
    map's phone region); changes nothing.
    """
    if region is None:
        region = phone_region(datamap)
    unmapped_tables: list[str] = []
    unmapped_columns: list[UnmappedColumn] = []
    missing_tables: list[str] = []
    missing_columns: list[str] = []
    missing_indexes: list[MissingIndex] = []
    unnormalised: list[UnnormalisedIdentity] = []
    not_null_cleared: list[NotNullCleared] = []
    cleared = cleared_columns(datamap)
    checked: list[str] = []
    for system in datamap.postgres_systems:
        url = conninfo if isinstance(conninfo, str) else conninfo.get(system.name)
        if url is None:
            continue
        checked.append(system.name)
        with psycopg.connect(url, autocommit=True, application_name="governance-datamap-drift") as conn:
            conn.execute("SET default_transaction_read_only = on")
            columns = _live_columns(conn, system.db_schema)
            indexes = _live_indexes(conn, system.db_schema)
            for table_name in sorted(set(columns) - {t.name for t in system.tables}):
                unmapped_tables.append(f"{system.name}.{table_name}")
                for column, data_type in columns[table_name]:
                    unmapped_columns.append(
                        _classify(conn, system, table_name, column, data_type, sample_rows, region)
                    )
            for table in system.tables:
                live = dict(columns.get(table.name, []))
                if not live:
                    missing_tables.append(f"{system.name}.{table.name}")
                    continue
                mapped = set(table.field_names)
                missing_columns += [f"{system.name}.{table.name}.{c}" for c in table.field_names if c not in live]
                for column, data_type in columns[table.name]:
                    if column not in mapped:
                        unmapped_columns.append(_classify(conn, system, table.name, column, data_type, sample_rows, region))
            missing_indexes += _missing_indexes(datamap, system, columns, indexes)
            unnormalised += _unnormalised_identities(conn, datamap, system, columns)
            not_null = _not_null_columns(conn, system.db_schema)
            not_null_cleared += [
                NotNullCleared(name, table, column, tuple(reasons))
                for (name, table, column), reasons in sorted(cleared.items())
                if name == system.name and (table, column) in not_null
            ]
    return DriftReport(
        unmapped_tables=tuple(unmapped_tables),
        unmapped_columns=tuple(unmapped_columns),
        missing_tables=tuple(missing_tables),
        missing_columns=tuple(missing_columns),
        missing_indexes=tuple(missing_indexes),
        checked_systems=tuple(checked),
        unnormalised_identities=tuple(unnormalised),
        not_null_cleared=tuple(not_null_cleared),
    )


def _not_null_columns(conn: psycopg.Connection[Any], schema: str) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT c.relname, a.attname
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attnotnull AND NOT c.relispartition
        """,
        {"schema": schema},
    ).fetchall()
    return {(str(table), str(column)) for table, column in rows}


def not_null_message(n: NotNullCleared) -> str:
    return (
        f"{n.system}.{n.table}.{n.column} is NOT NULL in the database, but the map sets it to NULL "
        f"({'; '.join(n.reasons)}): that erasure or sweep would fail at run time; make the column "
        "nullable, or change the map (delete_row, mask, keyed_hash)"
    )


def _live_columns(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[str, str]]]:
    # The catalogue, not information_schema: information_schema shows only the tables and columns
    # the current role holds a privilege on, and the task role may read mapped columns only, so a
    # table the map does not know would be invisible exactly where drift must report it.
    rows = conn.execute(
        """
        SELECT c.relname, a.attname, t.typname
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          AND NOT c.relispartition
        ORDER BY c.relname, a.attnum
        """,
        {"schema": schema},
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        out.setdefault(str(table), []).append((str(column), str(data_type)))
    return out


def _live_indexes(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[str]]:
    """table -> leading expression of each index (``email``, ``lower(email)``), normalised."""
    rows = conn.execute(
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %(schema)s", {"schema": schema}
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, definition in rows:
        out.setdefault(str(table), []).append(_leading_expression(str(definition)))
    return out


def _leading_expression(indexdef: str) -> str:
    """First key expression of ``CREATE INDEX ... USING btree (<expr>, ...)`` without quotes or
    white space, e.g. ``lower(email)``."""
    body = indexdef[indexdef.find("(", indexdef.find(" USING ")) + 1 :] if " USING " in indexdef else ""
    depth, end = 0, len(body)
    for position, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                end = position
                break
            depth -= 1
        elif char == "," and depth == 0:
            end = position
            break
    expression = re.sub(r"\s+(ASC|DESC|NULLS\s+\w+|COLLATE\s+\S+)\b.*$", "", body[:end].strip(), flags=re.I)
    expression = re.sub(r"::[\w ]+?(?=[)]|$)", "", expression)  # lower((email)::text) -> lower((email))
    expression = re.sub(r"\s+\w+_ops$", "", expression)  # operator class (text_pattern_ops)
    expression = expression.replace('"', "").replace(" ", "")
    while re.search(r"\(\((\w+)\)\)", expression):  # lower((email)) -> lower(email)
        expression = re.sub(r"\(\((\w+)\)\)", r"(\1)", expression)
    return expression


def _comparable(expression: str) -> str:
    """An index expression as compared: PostgreSQL prints ``NORMALIZE(email, NFC)``."""
    return expression.replace(" ", "").lower()


def _missing_indexes(
    datamap: DataMap,
    system: PostgresSystem,
    columns: Mapping[str, list[tuple[str, str]]],
    indexes: Mapping[str, list[str]],
) -> list[MissingIndex]:
    wanted: list[tuple[TableRef, str, str, str]] = []
    for identity in identity_columns(datamap):
        if identity.table.system != system.name:
            continue
        expression = identity.match.expression(identity.field)
        wanted.append((identity.table, identity.field, expression, f"identity {identity.kind}"))
    for edge in reference_edges(datamap, (ReferenceKind.ownership, ReferenceKind.mention)):
        if edge.child.system == system.name:
            wanted.append((edge.child, edge.field, edge.field, f"{edge.kind.value} reference to {edge.parent.table}"))
    missing: list[MissingIndex] = []
    seen: set[tuple[str, str, str]] = set()
    for ref, column, expression, purpose in wanted:
        if ref.table not in columns or (ref.table, column, expression) in seen:
            continue
        seen.add((ref.table, column, expression))
        if _comparable(expression) not in {_comparable(e) for e in indexes.get(ref.table, [])}:
            missing.append(MissingIndex(system.name, ref.table, column, expression, purpose))
    return missing


def unnormalised_message(u: UnnormalisedIdentity) -> str:
    """One line, counts only."""
    effect = "still found by the map's comparison" if u.found else "export and erasure do not find them"
    return f"{u.system}.{u.table}.{u.column} (identity {u.kind}): {u.rows} value(s) {u.problem}; {effect}"


# What the identity normaliser produces, per normaliser: (problem, SQL condition of a value not in
# that form, whether a comparison of this match still finds such a value).
_E164 = r"^\+[1-9][0-9]{6,14}$"


def _unnormalised_identities(
    conn: psycopg.Connection[Any], datamap: DataMap, system: PostgresSystem, columns: Mapping[str, list[tuple[str, str]]]
) -> list[UnnormalisedIdentity]:
    """Count, per identity column, values the identity normaliser would have written differently."""
    out: list[UnnormalisedIdentity] = []
    for identity in identity_columns(datamap):
        if identity.table.system != system.name or identity.field not in dict(columns.get(identity.table.table, [])):
            continue
        normaliser = datamap.identity_kinds[identity.kind].normalise
        value = sql.SQL("{}::text").format(sql.Identifier(identity.field))
        checks: list[tuple[str, sql.Composable, bool]]
        if normaliser == "email":
            checks = [
                ("not in Unicode NFC", sql.SQL("NOT ({} IS NFC NORMALIZED)").format(value),
                 identity.match is IdentityMatch.lowered_nfc),
                ("with surrounding white space", sql.SQL("{v} <> btrim({v})").format(v=value), False),
            ]  # fmt: skip
        else:
            checks = [("not in E.164", sql.SQL("{} !~ {}").format(value, sql.Literal(_E164)), False)]
        query = sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
            sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE {})").format(c) for _, c, _ in checks),
            sql.Identifier(system.db_schema, identity.table.table), sql.Identifier(identity.field),
        )
        counts = conn.execute(query).fetchone() or ()
        for (problem, _, found), rows in zip(checks, counts, strict=True):
            if rows:
                out.append(UnnormalisedIdentity(system.name, identity.table.table, identity.field, identity.kind,
                                                problem, int(rows), found))  # fmt: skip
    return out


def _classify(
    conn: psycopg.Connection[Any], system: PostgresSystem, table: str, column: str, data_type: str, sample_rows: int,
    region: str,
) -> UnmappedColumn:
    reasons: list[str] = []
    if _PERSONAL_NAME.search(column.lower()):
        reasons.append("its name suggests personal data")
    if data_type in _PERSONAL_TYPES:
        reasons.append(f"its type {data_type} holds network addresses")
    readable = conn.execute(
        "SELECT has_column_privilege(%s, %s, 'SELECT')", (sql.Identifier(system.db_schema, table).as_string(None), column)
    ).fetchone()
    if sample_rows > 0 and not (readable and readable[0]):
        # Least privilege: the task role reads mapped columns only, so an unmapped column is judged
        # by its name and type.
        if reasons:
            reasons.append("values not sampled (this role may not read unmapped columns)")
    elif sample_rows > 0 and data_type in _TEXT_TYPES:
        query = sql.SQL("SELECT {col}::text FROM {table} WHERE {col} IS NOT NULL LIMIT {n}").format(
            col=sql.Identifier(column), table=sql.Identifier(system.db_schema, table), n=sql.Placeholder("n")
        )
        values = [row[0] for row in conn.execute(query, {"n": sample_rows}).fetchall()]
        kind = _value_kind(values, region=region)
        if kind:
            reasons.append(kind)
    return UnmappedColumn(system.name, table, column, data_type, bool(reasons), "; ".join(reasons))


def _value_kind(values: Iterable[str | None], *, region: str = "US") -> str:
    """What most sampled values look like, as words and counts (never the values)."""
    sample = [v for v in values if v]
    if not sample:
        return ""
    counts = {
        "e-mail addresses": sum(1 for v in sample if _EMAIL.match(v.strip())),
        "phone numbers": sum(1 for v in sample if looks_like_phone(v.strip(), region)),
        "IP addresses": sum(1 for v in sample if _is_ip(v.strip())),
        "free text": sum(1 for v in sample if len(v.split()) >= 4),
    }
    kind, hits = max(counts.items(), key=lambda item: item[1])
    if hits * 5 < len(sample):  # under a fifth: not a pattern of the column
        return ""
    return f"{hits} of {len(sample)} sampled values look like {kind}"


def looks_like_phone(text: str, region: str) -> bool:
    """Whether ``text`` is a phone number: typed in a phone's shape and valid by phonenumbers
    (numbering plans of its country code, or of ``region`` without one). Digit counts alone say
    nothing: 2000000001 has ten digits and is no valid number anywhere."""
    if not _PHONE_SHAPE.match(text) or sum(c.isdigit() for c in text) < 7:
        return False
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Object stores
# --------------------------------------------------------------------------------------------

def platform_prefixes() -> tuple[str, ...]:
    """Prefixes the governance platform writes for itself in a mapped bucket, not app data: its
    records and ledger anchors, the privacy-request SLA report, the published anonymised
    insights (``GOVERNANCE_INSIGHTS_PREFIX``)."""
    return ("governance/", f"{SLA_REPORT_PREFIX}/", insights_prefix())


OBJECT_SAMPLE_KEYS = 1000


@dataclass(frozen=True)
class UnmappedPrefix:
    """A top-level key prefix in a mapped bucket that no prefix of the map covers."""

    system: str
    prefix: str
    sampled_objects: int
    looks_personal: bool
    reason: str


@dataclass(frozen=True)
class ObjectDriftReport:
    """Differences between the map's object prefixes and the buckets they name."""

    unmapped_prefixes: tuple[UnmappedPrefix, ...] = ()
    empty_prefixes: tuple[str, ...] = ()  # mapped, with no object yet: information, not drift
    missing_buckets: tuple[str, ...] = ()
    checked_systems: tuple[str, ...] = ()

    @property
    def is_clean(self) -> bool:
        return not (self.unmapped_prefixes or self.missing_buckets)

    def messages(self) -> list[str]:
        lines = [f"bucket of {b} does not exist" for b in self.missing_buckets]
        lines += [
            f"unmapped prefix {p.system}:{p.prefix} ({p.sampled_objects} objects sampled)"
            + (f" looks personal: {p.reason}" if p.looks_personal else "")
            for p in sorted(self.unmapped_prefixes, key=lambda p: not p.looks_personal)
        ]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "is_clean": self.is_clean, "messages": self.messages()}


_KEY_EMAIL = re.compile(r"[^/\s@]+@[^/\s@]+\.[a-z]{2,}", re.IGNORECASE)
_KEY_DIGITS = re.compile(r"\+?\d{7,15}")


def _key_holds_phone(key: str, region: str) -> bool:
    """A run of digits in a key that phonenumbers accepts as a valid number (an id such as
    2000000001 is not one)."""
    return any(looks_like_phone(run, region) for run in _KEY_DIGITS.findall(key))


def find_object_drift(datamap: DataMap, clients: Mapping[str, Any], *, region: str | None = None) -> ObjectDriftReport:
    """Compare every object-store system of the map with its bucket.

    ``clients`` maps a system name to a boto3 S3 client (systems without one are skipped). Lists
    top-level prefixes (``Delimiter='/'``) and samples up to OBJECT_SAMPLE_KEYS keys of each
    unmapped one; key names are checked for e-mail addresses and phone numbers (valid numbers by
    phonenumbers, read in ``region``), reported as counts.
    """
    if region is None:
        region = phone_region(datamap)
    unmapped: list[UnmappedPrefix] = []
    empty: list[str] = []
    missing: list[str] = []
    checked: list[str] = []
    for system in datamap.object_systems:
        client = clients.get(system.name)
        if client is None:
            continue
        checked.append(system.name)
        bucket = system.bucket.resolve()
        try:
            client.head_bucket(Bucket=bucket)
        except Exception:  # botocore ClientError (404/403): reported, not raised
            missing.append(f"{system.name} ({bucket})")
            continue
        mapped = [p.static_prefix for p in system.prefixes]
        for prefix in system.prefixes:
            probe = client.list_objects_v2(Bucket=bucket, Prefix=prefix.static_prefix, MaxKeys=1)
            if not probe.get("KeyCount"):
                empty.append(f"{system.name}:{prefix.name}")
        top: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/"):
            top += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            top += [o["Key"] for o in page.get("Contents", [])]  # objects at the bucket's root
        platform = platform_prefixes()
        for name in sorted(top):
            if name.startswith(platform) or any(m.startswith(name) or name.startswith(m) for m in mapped):
                continue
            keys = [
                o["Key"]
                for o in client.list_objects_v2(Bucket=bucket, Prefix=name, MaxKeys=OBJECT_SAMPLE_KEYS).get(
                    "Contents", []
                )
                if not o["Key"].startswith(platform)  # "reports/" holds the SLA report and maybe app data
            ]
            if not keys and any(p.startswith(name) for p in platform):
                continue  # only the platform's own objects under this top-level prefix
            emails = sum(1 for k in keys if _KEY_EMAIL.search(k))
            phones = sum(1 for k in keys if _key_holds_phone(k, region))
            reasons = []
            if emails:
                reasons.append(f"{emails} of {len(keys)} keys hold e-mail addresses")
            if phones:
                reasons.append(f"{phones} of {len(keys)} keys hold phone numbers")
            unmapped.append(UnmappedPrefix(system.name, name, len(keys), bool(reasons), "; ".join(reasons)))
    return ObjectDriftReport(tuple(unmapped), tuple(empty), tuple(missing), tuple(checked))


# --------------------------------------------------------------------------------------------
# DynamoDB tables
# --------------------------------------------------------------------------------------------

ITEM_SAMPLE = 200  # items read per table by drift's bounded Scan (drift only: never a per-person plan)
_ITEM_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


@dataclass(frozen=True)
class UnmappedAttribute:
    """A top-level attribute of sampled items that the map does not declare (never its values)."""

    system: str
    table: str
    attribute: str
    items: int  # sampled items holding it
    looks_personal: bool
    reason: str


@dataclass(frozen=True)
class ItemDriftReport:
    """Differences between the map's DynamoDB tables and the live tables."""

    unmapped_attributes: tuple[UnmappedAttribute, ...] = ()
    missing_tables: tuple[str, ...] = ()
    key_mismatches: tuple[str, ...] = ()  # "system.table: what differs" (names only)
    missing_indexes: tuple[str, ...] = ()
    ttl_disabled: tuple[str, ...] = ()
    sampled_items: int = 0
    checked_systems: tuple[str, ...] = ()

    @property
    def is_clean(self) -> bool:
        return not (self.unmapped_attributes or self.missing_tables or self.key_mismatches or self.missing_indexes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "is_clean": self.is_clean}


def _wire_strings(value: Mapping[str, Any]) -> list[str]:
    if "S" in value:
        return [str(value["S"])]
    if "SS" in value:
        return [str(v) for v in value["SS"]]
    return []


def find_item_drift(datamap: DataMap, clients: Mapping[str, Any], *, region: str | None = None,
                    sample: int = ITEM_SAMPLE) -> ItemDriftReport:  # fmt: skip
    """Compare every DynamoDB table of the map with the live table: it exists, its keys and the
    map's indexes are as declared, TTL is on, and the attributes of a bounded sample of items
    (one ``Scan`` page with ``Limit=sample``: drift looks at the table, not at a person) are all
    declared. An unmapped attribute looks personal by its name or its values (e-mail addresses,
    valid phone numbers); values are only counted."""
    if region is None:
        region = phone_region(datamap)
    unmapped: list[UnmappedAttribute] = []
    missing: list[str] = []
    mismatches: list[str] = []
    indexes: list[str] = []
    ttl_off: list[str] = []
    checked: list[str] = []
    sampled = 0
    for system, table in datamap.item_tables():
        client = clients.get(system.name)
        if client is None:
            continue
        if system.name not in checked:
            checked.append(system.name)
        where, name = f"{system.name}.{table.name}", table.table_name.resolve()
        try:
            described = client.describe_table(TableName=name)["Table"]
        except Exception:  # ResourceNotFoundException: reported, not raised
            missing.append(f"{where} ({name})")
            continue
        keys = {k["KeyType"]: k["AttributeName"] for k in described.get("KeySchema", [])}
        if keys.get("HASH") != table.partition_key.attribute:
            mismatches.append(f"{where}: partition key is {keys.get('HASH')!r}, the map says {table.partition_key.attribute!r}")
        expected_sort = table.sort_key.attribute if table.sort_key else None
        if keys.get("RANGE") != expected_sort:
            mismatches.append(f"{where}: sort key is {keys.get('RANGE')!r}, the map says {expected_sort!r}")
        live_indexes = {i["IndexName"]: {k["KeyType"]: k["AttributeName"] for k in i["KeySchema"]}
                        for i in described.get("GlobalSecondaryIndexes", [])}  # fmt: skip
        for index in table.indexes:
            if live_indexes.get(index.name, {}).get("HASH") != index.partition_key.attribute:
                indexes.append(f"{where}: index {index.name} on {index.partition_key.attribute}")
        if table.ttl_attribute:
            try:
                ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            except Exception:
                ttl = {}
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or ttl.get("AttributeName") != table.ttl_attribute:
                ttl_off.append(f"{where}: TTL on {table.ttl_attribute}")
        page = client.scan(TableName=name, Limit=sample)
        items = page.get("Items", [])
        sampled += len(items)
        declared = set(table.attribute_names)
        seen: dict[str, list[Mapping[str, Any]]] = {}
        for item in items:
            for attribute, value in item.items():
                if attribute not in declared:
                    seen.setdefault(attribute, []).append(value)
        for attribute, values in sorted(seen.items()):
            texts = [t for v in values for t in _wire_strings(v)]
            emails = sum(1 for t in texts if _ITEM_EMAIL.match(t.strip()))
            phones = sum(1 for t in texts if _PHONE_SHAPE.match(t.strip()) and looks_like_phone(t.strip(), region))
            reasons = []
            if _PERSONAL_NAME.search(attribute.lower()):
                reasons.append("its name looks personal")
            if emails:
                reasons.append(f"{emails} of {len(values)} sampled values are e-mail addresses")
            if phones:
                reasons.append(f"{phones} of {len(values)} sampled values are phone numbers")
            unmapped.append(UnmappedAttribute(system.name, table.name, attribute, len(values), bool(reasons), "; ".join(reasons)))
    return ItemDriftReport(tuple(unmapped), tuple(missing), tuple(mismatches), tuple(indexes), tuple(ttl_off), sampled,
                           tuple(checked))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Findings placed in the map: shared by ``validate-datamap --live`` and the datamap_drift DAG
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftFinding:
    """One difference between the map and a live system, placed where the map should change.

    ``kind`` is a stable name for counting (``missing_column``, ``unmapped_personal_column``, ...);
    ``path`` is the place inside the map (``systems[aircalls_app].tables[calls].fields[x]``);
    ``message`` names tables, columns, prefixes, kinds and counts, never a data value.
    """

    kind: str
    blocking: bool
    path: str
    message: str

    def placed(self, datamap: DataMap) -> str:
        """``FILE: PATH: MESSAGE (line N)``, the file being the map actually read."""
        severity = "blocking" if self.blocking else "warning"
        return str(datamap.place(self.path, f"{severity}: {self.message}"))


def _table_place(system: str, table: str) -> str:
    return f"systems[{system}].tables[{table}]"


def drift_findings(database: Mapping[str, Any], objects: Mapping[str, Any]) -> list[DriftFinding]:
    """Every finding of a database report and an object report (their ``to_dict()`` forms, as
    they travel through XCom), blocking ones first.

    Blocking: a personal-looking column or prefix the map does not know (export and erasure would
    miss it), a mapped table, column or bucket that is gone (plans would fail). Warnings: missing
    indexes, unmapped tables and columns that do not look personal, unmapped prefixes likewise.
    """
    found: list[DriftFinding] = []
    for c in database.get("unmapped_columns", []):
        if c["looks_personal"]:
            found.append(DriftFinding(
                "unmapped_personal_column", True, f"{_table_place(c['system'], c['table'])}.fields",
                f"unmapped column {c['system']}.{c['table']}.{c['column']} ({c['data_type']}) looks personal: "
                f"{c['reason']}; map it (with its erasure action) or drop it",
            ))  # fmt: skip
    for t in database.get("missing_tables", []):
        system, _, table = str(t).partition(".")
        found.append(DriftFinding("missing_table", True, _table_place(system, table),
                                  f"mapped table {t} does not exist in the database"))  # fmt: skip
    for col in database.get("missing_columns", []):
        system, table, column = (str(col).split(".", 2) + ["", ""])[:3]
        found.append(DriftFinding("missing_column", True, f"{_table_place(system, table)}.fields[{column}]",
                                  f"mapped column {col} does not exist in the database"))  # fmt: skip
    for n in database.get("not_null_cleared", []):
        cleared = NotNullCleared(n["system"], n["table"], n["column"], tuple(n["reasons"]))
        found.append(DriftFinding("cleared_column_not_nullable", True,
                                  f"{_table_place(cleared.system, cleared.table)}.fields[{cleared.column}]",
                                  not_null_message(cleared)))  # fmt: skip
    unnormalised = [UnnormalisedIdentity(**u) for u in database.get("unnormalised_identities", [])]
    for u in unnormalised:
        if not u.found:
            found.append(DriftFinding("unnormalised_identity_missed", True,
                                      f"{_table_place(u.system, u.table)}.fields[{u.column}]", unnormalised_message(u)))  # fmt: skip
    for b in objects.get("missing_buckets", []):
        system = str(b).split(" ", 1)[0]
        found.append(DriftFinding("missing_bucket", True, f"systems[{system}].bucket", f"bucket of {b} does not exist"))
    for p in objects.get("unmapped_prefixes", []):
        if p["looks_personal"]:
            found.append(DriftFinding(
                "unmapped_personal_prefix", True, f"systems[{p['system']}].prefixes",
                f"unmapped prefix {p['system']}:{p['prefix']} looks personal: {p['reason']}; map it or move it",
            ))  # fmt: skip
    items = objects.get("item_stores") or {}
    for t in items.get("missing_tables", []):
        system, _, rest = str(t).partition(".")
        found.append(DriftFinding("missing_item_table", True, _table_place(system, rest.split(" ", 1)[0]),
                                  f"mapped DynamoDB table {t} does not exist"))  # fmt: skip
    for m in items.get("key_mismatches", []):
        system, _, rest = str(m).partition(".")
        found.append(DriftFinding("item_key_mismatch", True, _table_place(system, rest.split(":", 1)[0]), str(m)))
    for m in items.get("missing_indexes", []):
        system, _, rest = str(m).partition(".")
        found.append(DriftFinding("missing_item_index", True, f"{_table_place(system, rest.split(':', 1)[0])}.indexes",
                                  f"{m} does not exist: a Query on it would fail"))  # fmt: skip
    for a in items.get("unmapped_attributes", []):
        if a["looks_personal"]:
            found.append(DriftFinding(
                "unmapped_personal_attribute", True, f"{_table_place(a['system'], a['table'])}.attributes",
                f"unmapped DynamoDB attribute {a['system']}.{a['table']}.{a['attribute']} ({a['items']} sampled items) "
                f"looks personal: {a['reason']}; map it or stop writing it",
            ))  # fmt: skip
    for i in database.get("missing_indexes", []):
        found.append(DriftFinding(
            "missing_index", False, f"{_table_place(i['system'], i['table'])}.fields[{i['column']}]",
            f"{i['system']}.{i['table']}.{i['column']} ({i['purpose']}) has no index on {i['expression']}",
        ))  # fmt: skip
    for u in unnormalised:
        if u.found:
            found.append(DriftFinding("unnormalised_identity_found", False,
                                      f"{_table_place(u.system, u.table)}.fields[{u.column}]", unnormalised_message(u)))  # fmt: skip
    for t in database.get("unmapped_tables", []):
        system, _, _table = str(t).partition(".")
        found.append(DriftFinding("unmapped_table", False, f"systems[{system}].tables", f"unmapped table {t}"))
    for c in database.get("unmapped_columns", []):
        if not c["looks_personal"]:
            found.append(DriftFinding(
                "unmapped_column", False, f"{_table_place(c['system'], c['table'])}.fields",
                f"unmapped column {c['system']}.{c['table']}.{c['column']} ({c['data_type']})",
            ))  # fmt: skip
    for p in objects.get("unmapped_prefixes", []):
        if not p["looks_personal"]:
            found.append(DriftFinding("unmapped_prefix", False, f"systems[{p['system']}].prefixes",
                                      f"unmapped prefix {p['system']}:{p['prefix']}"))  # fmt: skip
    for a in items.get("unmapped_attributes", []):
        if not a["looks_personal"]:
            found.append(DriftFinding("unmapped_attribute", False, f"{_table_place(a['system'], a['table'])}.attributes",
                                      f"unmapped DynamoDB attribute {a['system']}.{a['table']}.{a['attribute']}"))  # fmt: skip
    for t in items.get("ttl_disabled", []):
        system, _, rest = str(t).partition(".")
        found.append(DriftFinding("item_ttl_disabled", False, f"{_table_place(system, rest.split(':', 1)[0])}.ttl_attribute",
                                  f"{t} is not enabled: items would never expire"))  # fmt: skip
    return found


def finding_counts(findings: Iterable[DriftFinding]) -> dict[str, int]:
    """``{kind: count}``, in first-seen order (blocking kinds first): what a task log may say."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return counts
