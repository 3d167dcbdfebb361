"""The data map as typed, immutable values (pydantic v2).

These models check the *shape* of ``include/datamap.yaml``: every key known (``extra="forbid"``),
every value of the right type, names usable as SQL identifiers, periods positive. Checks that need
the whole map (references that resolve, categories that exist in the fideslang taxonomy, cycles,
legal bases that are declared, ...) live in :mod:`governance.datamap.loader`, which is the only
supported way to obtain a :class:`DataMap`: a ``DataMap`` built by hand has not been checked.

Vocabulary used throughout:

* a *system* is a place that holds data (a PostgreSQL schema, an S3 bucket); a *processor* is a
  third party reached over HTTP that receives personal data from us;
* an *identity* is a way to find a person (``email``, ``phone``), normalised the same way on both
  sides (:mod:`governance.identity` in Python, the match expression in SQL);
* an *ownership* reference makes the referencing row belong to the referenced one (erased with
  it); a *mention* reference only names the person (the reference is cleared, the row stays); a
  *scope* reference ties a row to the business client it was collected for.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

# Names end up as SQL identifiers (always quoted with psycopg.sql.Identifier, but a map that needs
# quoting to be read is a map that will be misread), connection ids and parameter names.
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
# fideslang keys: dot-separated lower-case words (``user.contact.email``).
TaxonomyKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class _Strict(BaseModel):
    """Base of every data-map model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class DataMapIssue:
    """One thing wrong with a data map: the file, where inside it, and what is wrong.

    ``path`` names items by their ``name`` (``systems[aircalls_app].tables[calls]``), falling back
    to the position only for unnamed items. ``line``/``column`` (1-based) are set when known.
    """

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if not self.path and self.line is not None:  # YAML syntax: editors jump to file:line:col
            return f"{self.file}:{self.line}:{self.column or 1}: {self.message}"
        where = f"{self.file}: {self.path}: " if self.path else f"{self.file}: "
        return where + self.message + (f" (line {self.line})" if self.line is not None else "")


class DataMapError(ValueError):
    """The data map cannot be used. ``issues`` lists every problem found, not just the first;
    ``str()`` gives one ``FILE: PATH: MESSAGE`` line per issue."""

    def __init__(self, issues: list[DataMapIssue]) -> None:
        self.issues = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class DataMapUnreadable(DataMapError):
    """The data map file could not be read at all (missing, unreadable, not UTF-8)."""


# --------------------------------------------------------------------------------------------
# References to things inside the map


@dataclass(frozen=True, order=True)
class TableRef:
    """A table of a database system: ``aircalls_app.calls``."""

    system: str
    table: str

    def __str__(self) -> str:
        return f"{self.system}.{self.table}"


@dataclass(frozen=True, order=True)
class PrefixRef:
    """An object prefix of an object-store system: ``aircalls_objects.recordings``."""

    system: str
    prefix: str

    def __str__(self) -> str:
        return f"{self.system}.{self.prefix}"


# --------------------------------------------------------------------------------------------
# Periods


_PERIOD_RE = re.compile(r"^P(?:(?P<y>\d+)Y)?(?:(?P<m>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?$")


class RetentionPeriod(_Strict):
    """A positive calendar period: an ISO-8601 duration (``P30D``, ``P13M``, ``P7Y``, ``P1Y6M``)
    or a whole number of days. Weeks are stored as days. Time-of-day parts are not accepted:
    retention is decided per day, not per hour."""

    years: int = 0
    months: int = 0
    days: int = 0

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected an ISO-8601 duration like P30D, P13M or P7Y, or a number of days")
        if isinstance(value, int):
            if value <= 0:
                raise ValueError(f"period must be positive, got {value} days")
            return {"days": value}
        if isinstance(value, str):
            text = value.strip().upper()
            match = _PERIOD_RE.match(text)
            if text.startswith("-"):
                raise ValueError(f"period must be positive, got {value!r}")
            if not match or text == "P":
                raise ValueError(
                    f"{value!r} is not a period: use an ISO-8601 duration like P30D, P13M, P7Y or P1Y6M "
                    "(no time part), or a whole number of days"
                )
            years, months, weeks, days = (int(match.group(g) or 0) for g in ("y", "m", "w", "d"))
            if years == months == weeks == days == 0:
                raise ValueError(f"period must be positive, got {value!r}")
            return {"years": years, "months": months, "days": days + 7 * weeks}
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """What a map file holds (the parsed form above is internal): a duration or a day count."""
        return {
            "title": "Period",
            "description": "ISO-8601 calendar duration (P30D, P13M, P7Y, P1Y6M; no time part) or a number of days",
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[Pp](?:\d+[Yy])?(?:\d+[Mm])?(?:\d+[Ww])?(?:\d+[Dd])?\s*$"},
                {"type": "integer", "minimum": 1},
            ],
        }

    @property
    def iso(self) -> str:
        """The period as an ISO-8601 duration, e.g. ``P7Y`` or ``P1Y6M``."""
        parts = [f"{n}{unit}" for n, unit in ((self.years, "Y"), (self.months, "M"), (self.days, "D")) if n]
        return "P" + "".join(parts)

    @property
    def sql_interval(self) -> str:
        """Text PostgreSQL reads as an ``interval`` (bound as a parameter, cast with ``::interval``)."""
        return f"{self.years} years {self.months} months {self.days} days"

    @property
    def approx_days(self) -> float:
        """Length in days (a year is 365.25 days, a month 30.44): for comparing periods only."""
        return self.years * 365.25 + self.months * 30.44 + self.days

    def __str__(self) -> str:
        return self.iso


# --------------------------------------------------------------------------------------------
# Settings and identity kinds


class Settings(_Strict):
    """Map-wide settings. Deployment-specific values (bucket names, connection secrets) are not
    here: they come from the environment or Airflow connections."""

    default_phone_region: CountryCode = Field(
        default="US", description="region for phone numbers typed without a country code (overridden by GOVERNANCE_PHONE_REGION)"
    )
    erasure_batch_size: int = Field(default=1000, gt=0, description="rows per erasure statement")
    retention_batch_size: int = Field(default=5000, gt=0, description="rows per retention batch")
    ttl_expired_grace_days: int = Field(
        default=2, ge=0,
        description=(
            "ttl retention: items whose TTL passed more than this many days ago and that DynamoDB has not yet "
            "expired (it deletes lazily, typically within a few days) are deleted by the sweep"
        ),
    )  # fmt: skip


class IdentityMatch(StrEnum):
    """How an identity column is compared with a normalised identity in SQL."""

    exact = "exact"  # column = ANY(values): the column is stored normalised (E.164 phone)
    lowered = "lower"  # lower(column) = ANY(values): stored as typed; needs an index on lower(column)
    # lower(normalize(column, NFC)) = ANY(values): stored as typed, possibly decomposed (NFD, as
    # some keyboards and imports write it); the same steps as governance.identity.normalise_email.
    # Needs an index on that expression.
    lowered_nfc = "lower_nfc"

    def expression(self, column: str) -> str:
        """The SQL expression compared with the normalised identity, for ``column`` (as shown in
        messages and matched against index definitions)."""
        if self is IdentityMatch.lowered_nfc:
            return f"lower(normalize({column}, NFC))"
        if self is IdentityMatch.lowered:
            return f"lower({column})"
        return column

    @property
    def folds_case(self) -> bool:
        return self is not IdentityMatch.exact


class IdentityKindSpec(_Strict):
    """One kind of identity a person can be found by."""

    normalise: Literal["email", "phone"] = Field(description="normaliser in governance.identity")
    match: IdentityMatch = IdentityMatch.exact
    description: str | None = None


# --------------------------------------------------------------------------------------------
# Tables, fields, references


class ErasureAction(StrEnum):
    """What erasing a person does to one field.

    ``delete_row``: the value only goes away with its row; any such field makes the row deleted.
    ``nullify``: set to NULL (in YAML write ``nullify``: a bare ``null`` means "no value").
    ``mask``: overwrite with the field's fixed ``mask_value``.
    ``keyed_hash``: replace with HMAC-SHA256 (hex) under the governance hash key: the value can
    still be counted or joined, not read back.
    ``keep``: kept under the legal exception named by ``legal_basis``.
    ``none``: not personal; untouched unless its row is deleted.
    """

    delete_row = "delete_row"
    nullify = "nullify"
    mask = "mask"
    keyed_hash = "keyed_hash"
    keep = "keep"
    none = "none"


REWRITING_ACTIONS = frozenset({ErasureAction.nullify, ErasureAction.mask, ErasureAction.keyed_hash})


class FieldSpec(_Strict):
    """One column: what it holds (fideslang data category), why (fideslang data use), and what
    erasure does to it."""

    name: Identifier
    data_category: TaxonomyKey
    data_use: TaxonomyKey
    personal: bool | None = Field(default=None, description="default: true for user.* categories")
    erasure: ErasureAction | None = Field(default=None, description="required for personal fields")
    mask_value: str | None = None
    legal_basis: Identifier | None = Field(default=None, description="name of a legal_exceptions entry (erasure: keep)")
    description: str | None = None

    @property
    def is_personal(self) -> bool:
        """Whether the field holds personal data (explicit, else by category: ``user.*``)."""
        if self.personal is not None:
            return self.personal
        return self.data_category == "user" or self.data_category.startswith("user.")

    @property
    def erasure_action(self) -> ErasureAction:
        """The effective erasure action (``none`` when not declared)."""
        return self.erasure or ErasureAction.none


class IdentityField(_Strict):
    """A column that holds an identity of the person the row is about."""

    field: Identifier
    kind: Identifier
    match: IdentityMatch | None = Field(default=None, description="default: the identity kind's match")


class ReferenceKind(StrEnum):
    ownership = "ownership"  # the row belongs to the referenced row's person: erased with it
    mention = "mention"  # the row names the person: the reference is cleared, the row stays
    scope = "scope"  # the row was collected for this business client: a filter, never erased


class ReferenceTarget(_Strict):
    table: Identifier
    field: Identifier | None = Field(default=None, description="default: the target table's primary key")
    system: Identifier | None = Field(default=None, description="default: the referencing table's system")


class OrphanClear(_Strict):
    """Clear these fields of a mention-only row (set them to NULL); the row stays."""

    clear: list[Identifier] = Field(min_length=1, description="fields set to NULL (not the primary key or a reference)")


OrphanRule = Literal["keep", "delete_row"] | OrphanClear


class Reference(_Strict):
    """A column of this table pointing at a row of another table.

    A *mention-only* row is one whose mention points at the person and none of whose ownership
    references is set (a staff member's note with no caller): nobody else's data holds it, so a
    mention reference says what becomes of it (``orphan``) and whether the mentioned person's
    export includes it (``export``). A row that still has an owner is that owner's data: its
    mention is cleared on erasure and it is never exported to the mentioned person.
    """

    field: Identifier
    to: ReferenceTarget
    kind: ReferenceKind
    description: str | None = None
    orphan: OrphanRule = Field(
        default="keep",
        description="mention only: what erasing the mentioned person does to a mention-only row: keep (only the "
        "mention is cleared), delete_row, or {clear: [fields]}",
    )
    export: Literal["include", "exclude"] = Field(
        default="exclude", description="mention only: whether the mentioned person's export includes mention-only rows"
    )

    @property
    def orphan_deletes_row(self) -> bool:
        return self.orphan == "delete_row"

    @property
    def orphan_clears(self) -> tuple[str, ...]:
        """Fields a mention-only row has cleared on erasure (empty unless ``orphan: {clear: ...}``)."""
        return tuple(self.orphan.clear) if isinstance(self.orphan, OrphanClear) else ()

    @property
    def exports_orphans(self) -> bool:
        return self.kind is ReferenceKind.mention and self.export == "include"


class TableSpec(_Strict):
    """One table: its columns, which of them identify a person, and how it hangs off others."""

    name: Identifier
    description: str | None = None
    primary_key: Identifier
    fields: list[FieldSpec]
    identities: list[IdentityField] = []
    references: list[Reference] = []

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or None."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def scope_column(self) -> str | None:
        """The column tying rows to a business client (the field of the scope reference)."""
        return next((r.field for r in self.references if r.kind is ReferenceKind.scope), None)

    @property
    def deletes_rows_on_erasure(self) -> bool:
        """True when erasing the person deletes this table's rows (some field is ``delete_row``)."""
        return any(f.erasure_action is ErasureAction.delete_row for f in self.fields)


class PostgresSystem(_Strict):
    """A PostgreSQL schema reached through an Airflow ``postgres`` connection."""

    kind: Literal["postgres"]
    name: Identifier
    connection_id: Identifier
    db_schema: Identifier = Field(alias="schema")
    description: str | None = None
    tables: list[TableSpec]

    def table(self, name: str) -> TableSpec | None:
        return next((t for t in self.tables if t.name == name), None)


# --------------------------------------------------------------------------------------------
# Object stores


class BucketSetting(_Strict):
    """Where the bucket name comes from: an environment variable, else the default."""

    env: str | None = None
    default: str

    def resolve(self) -> str:
        """The bucket name in this environment."""
        return (os.environ.get(self.env) if self.env else None) or self.default


class ObjectTie(_Strict):
    """Ties each object of a prefix to one row of a table: the key template's placeholders are
    filled from that row's columns."""

    table: Identifier
    system: Identifier | None = Field(default=None, description="default: the only postgres system")
    placeholders: dict[str, Identifier] = Field(
        default_factory=dict, description="placeholder -> column, where the names differ ({call_id} -> id)"
    )
    key_column: Identifier | None = Field(default=None, description="column storing the object's key, if any")

    def column_for(self, placeholder: str) -> str:
        """The tied table's column that fills ``placeholder``."""
        return self.placeholders.get(placeholder, placeholder)


REQUEST_ID_PLACEHOLDER = "request_id"


class ObjectPrefix(_Strict):
    """A family of objects under one key template.

    ``owned_by: row`` objects belong to a row (``tied_to``) and are erased with it;
    ``owned_by: privacy_request`` objects (export bundles) are keyed by ``{request_id}`` and are
    erased with the person's privacy requests. A template ending in ``/`` names a folder: every
    object under it is covered.
    """

    name: Identifier
    key_template: str = Field(min_length=1)
    owned_by: Literal["row", "privacy_request"]
    tied_to: ObjectTie | None = None
    data_category: TaxonomyKey
    data_use: TaxonomyKey
    personal: bool = True
    description: str | None = None

    @property
    def placeholders(self) -> list[str]:
        """Placeholder names of the key template, in order (raises ValueError if malformed)."""
        return template_placeholders(self.key_template)

    @property
    def static_prefix(self) -> str:
        """The part of the key before the first placeholder: what to list for retention."""
        return self.key_template.split("{", 1)[0]


class ObjectStoreSystem(_Strict):
    """An S3 API bucket reached through an Airflow ``aws`` connection."""

    kind: Literal["s3"]
    name: Identifier
    connection_id: Identifier
    bucket: BucketSetting
    description: str | None = None
    prefixes: list[ObjectPrefix]

    def prefix(self, name: str) -> ObjectPrefix | None:
        return next((p for p in self.prefixes if p.name == name), None)


# --------------------------------------------------------------------------------------------
# Key-value item stores (DynamoDB)


class ItemKey(_Strict):
    """One key attribute of a DynamoDB table or index, with its DynamoDB type."""

    attribute: Identifier
    type: Literal["S", "N"] = "S"
    kind: Identifier | None = Field(
        default=None, description="partition key only: the identity kind the attribute holds (its items are a person's)"
    )


class ItemIndex(_Strict):
    """A global secondary index: how items are found by something other than the table's key."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{3,255}$")]
    partition_key: ItemKey
    sort_key: ItemKey | None = None
    purpose: Literal["business"] = Field(
        default="business", description="business: the partition key is the business client's id (offboarding)"
    )


class ItemTable(_Strict):
    """A DynamoDB table whose items belong to the person named by their partition key.

    A person is found with a ``Query`` on the partition key (an identity kind, ``partition_key.kind``)
    and a business client's items with a ``Query`` on the index whose purpose is ``business``; the
    map is refused when finding one person would need a ``Scan`` (an identity attribute that is no
    table or index partition key). Erasure deletes the person's items (every attribute goes with
    the item); retention relies on ``ttl_attribute`` (epoch seconds).
    """

    name: Identifier
    table_name: BucketSetting = Field(description="the DynamoDB table name: an environment variable, else the default")
    description: str | None = None
    partition_key: ItemKey
    sort_key: ItemKey | None = None
    ttl_attribute: Identifier | None = Field(default=None, description="attribute holding the expiry time (epoch seconds)")
    indexes: list[ItemIndex] = Field(default_factory=list)
    identities: list[IdentityField] = Field(
        default_factory=list, description="attributes holding an identity besides the partition key (each must be a key)"
    )
    attributes: list[FieldSpec] = Field(description="every attribute an item holds (keys, payload, TTL)")

    def attribute(self, name: str) -> FieldSpec | None:
        return next((a for a in self.attributes if a.name == name), None)

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def business_index(self) -> ItemIndex | None:
        return next((i for i in self.indexes if i.purpose == "business"), None)

    @property
    def key_attributes(self) -> list[str]:
        return [self.partition_key.attribute] + ([self.sort_key.attribute] if self.sort_key else [])


class DynamoDBSystem(_Strict):
    """DynamoDB tables reached through an Airflow ``aws`` connection (``DynamoDBHook``)."""

    kind: Literal["dynamodb"]
    name: Identifier
    connection_id: Identifier
    description: str | None = None
    tables: list[ItemTable]

    def table(self, name: str) -> ItemTable | None:
        return next((t for t in self.tables if t.name == name), None)


SystemSpec = Annotated[PostgresSystem | ObjectStoreSystem | DynamoDBSystem, Field(discriminator="kind")]


def template_placeholders(template: str) -> list[str]:
    """Names of the ``{placeholders}`` in ``template``; ValueError if braces are unbalanced or a
    placeholder uses format specs, conversions, attributes or indexes."""
    names: list[str] = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not re.match(IDENTIFIER_PATTERN, name) or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name like {{call_id}}")
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# Processors (third parties over HTTP)


class Paging(_Strict):
    """How a list call continues onto its next page, declared, not coded.

    The next request repeats the call with the cursor in the query parameter ``cursor_param``.
    The cursor is either the ``cursor_field`` of the page's last record (Stripe-like lists:
    ``starting_after`` = the last record's ``id``) or the value at the dot path
    ``next_cursor_path`` of the response (``paging.next.after``). Pages are followed while a
    cursor is found, the page is not empty and, when ``has_more_path`` is declared, the boolean
    there is true; a call needing more than ``max_pages`` pages fails rather than export part of
    a person's records.
    """

    cursor_param: str = Field(min_length=1, description="query parameter carrying the cursor")
    cursor_field: str | None = Field(default=None, description="field of the last record that is the next cursor")
    next_cursor_path: str | None = Field(default=None, description="dot path of the next cursor in the response")
    has_more_path: str | None = Field(default=None, description="dot path of a boolean: more pages follow")
    max_pages: int = Field(default=1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_cursor_source(self) -> Paging:
        if (self.cursor_field is None) == (self.next_cursor_path is None):
            raise ValueError(
                "paging needs exactly one of cursor_field (the cursor is a field of the page's last record) "
                "or next_cursor_path (the response says the next cursor)"
            )
        return self


class RequestTemplate(_Strict):
    """One HTTP call, declared, not coded: placeholders ``{email}``, ``{phone}`` (identities) or
    ``{id}`` (the processor's record id) in ``path`` and ``query`` values are filled, URL-encoded,
    at run time. A list call that returns its records in pages declares ``paging``."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/")
    query: dict[str, str] = Field(default_factory=dict)
    records_path: str | None = Field(default=None, description="dot path of the record list in the JSON response")
    id_field: str | None = Field(default=None, description="field of each record holding its id")
    success_status: list[int] = Field(default_factory=lambda: [200])
    absent_status: list[int] = Field(default_factory=list, description="statuses meaning 'nothing there'")
    paging: Paging | None = Field(default=None, description="how the call continues onto its next page")

    @property
    def placeholders(self) -> list[str]:
        names = template_placeholders(self.path)
        for value in self.query.values():
            names.extend(template_placeholders(value))
        return names


class ProcessorExport(RequestTemplate):
    name: Identifier


class ProcessorAuth(_Strict):
    """How requests authenticate; the secret is always read from the Airflow connection."""

    type: Literal["bearer", "header", "basic"]
    header: str | None = Field(default=None, description="header name, for type: header")
    secret: Literal["password", "login"] = "password"


class Recipient(_Strict):
    """Who receives the data, for the subprocessor and transfer inventory."""

    name: str
    purpose: TaxonomyKey = Field(description="fideslang data use")
    country: CountryCode
    region: str | None = None
    transfer_safeguard: str | None = Field(default=None, description="e.g. standard_contractual_clauses, adequacy_decision")
    dpa: str | None = Field(default=None, description="reference of the data processing agreement")


class Processor(_Strict):
    """A third party holding personal data we sent it, reached over HTTP.

    ``connector: http`` (the default): the calls are declared as request templates (``auth``,
    ``lookup``, ``export``, ``erase``). ``connector: python``: the escape hatch for an API the
    templates cannot express (request bodies, OAuth client credentials, asynchronous jobs): a
    Python class named by ``class`` (``module:Class``) implementing
    ``governance.connectors.base.ProcessorConnector``, looked up with the identity kinds
    ``lookup_by``. Both are reached through the Airflow connection ``connection_id``.
    """

    name: Identifier
    kind: Literal["http"] = "http"
    connector: Literal["http", "python"] = Field(
        default="http", description="http: declared request templates; python: a connector class (class)"
    )
    class_path: str | None = Field(
        default=None,
        alias="class",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="for connector: python, the connector class as module:Class",
    )
    lookup_by: list[Identifier] = Field(
        default_factory=list, description="for connector: python, the identity kinds it looks people up by"
    )
    connection_id: Identifier
    description: str | None = None
    recipient: Recipient | None = None
    data_categories: list[TaxonomyKey] = Field(default_factory=list)
    auth: ProcessorAuth | None = None
    lookup: RequestTemplate | None = None
    export: list[ProcessorExport] = Field(default_factory=list)
    erase: RequestTemplate | None = None

    @property
    def lookup_identity_kinds(self) -> list[str]:
        """Identity kinds the lookup call can be made with (its placeholders, or ``lookup_by``)."""
        if self.connector == "python" or self.lookup is None:
            return list(self.lookup_by)
        return self.lookup.placeholders

    @property
    def exports_records(self) -> bool:
        """Whether an export asks the processor for each record's contents (beyond the look-up)."""
        return self.connector == "python" or bool(self.export)


# --------------------------------------------------------------------------------------------
# Retention and legal exceptions


class Condition(_Strict):
    """A SQL-free row condition: exactly one of ``in``, ``not_in``, ``is_null`` on ``column``, or
    ``unreferenced: true`` (no other table's row references this one)."""

    column: Identifier | None = None
    in_: list[str | int | bool] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[str | int | bool] | None = Field(default=None, min_length=1)
    is_null: bool | None = None
    unreferenced: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        operators = [k for k in ("in_", "not_in", "is_null", "unreferenced") if getattr(self, k) is not None]
        if len(operators) != 1:
            raise ValueError("a condition needs exactly one of: in, not_in, is_null, unreferenced")
        if self.unreferenced is None and self.column is None:
            raise ValueError("a condition on values needs a column")
        if self.unreferenced is not None and self.column is not None:
            raise ValueError("unreferenced: true takes no column")
        return self


class Generalisation(_Strict):
    """Coarsen one field instead of deleting it: an IP address to its network, or a timestamp
    to the start of its day/week/month/year (UTC)."""

    field: Identifier
    method: Literal["ip_prefix", "timestamp_trunc"]
    ipv4_prefix: int = Field(default=24, ge=0, le=32)
    ipv6_prefix: int = Field(default=48, ge=0, le=128)
    unit: Literal["day", "week", "month", "year"] = "month"


RetentionAction = Literal["delete_rows", "null_fields", "generalise", "delete_objects", "ttl"]


class RetentionRule(_Strict):
    """Keep rows (or objects) only for ``period`` after ``age_column``, then apply ``action``.

    Table rules name ``table``; object rules name ``prefix`` and age by the tied row's
    ``age_column`` or, without one, by the object's last-modified time. A DynamoDB table's rule
    (action ``ttl``) names the item ``table`` and the attribute holding the item's age as
    ``age_column``: every item's TTL attribute is kept no later than age + period (DynamoDB then
    deletes the item itself).
    """

    name: Identifier
    system: Identifier
    table: Identifier | None = None
    prefix: Identifier | None = None
    age_column: Identifier | None = None
    period: RetentionPeriod
    action: RetentionAction
    fields: list[Identifier] = Field(default_factory=list, description="for null_fields")
    generalise: Generalisation | None = None
    conditions: list[Condition] = Field(default_factory=list, description="all must hold")
    reason: str = Field(min_length=1)

    @model_validator(mode="after")
    def _target(self) -> RetentionRule:
        if (self.table is None) == (self.prefix is None):
            raise ValueError("a retention rule names exactly one of table or prefix")
        return self


class LegalException(_Strict):
    """A law makes us keep rows of ``table`` for ``period`` after ``age_column``, even against an
    erasure request. Meanwhile erasure minimises the rows (each field's erasure action: fields
    marked ``keep`` with this exception as ``legal_basis`` are kept, the rest rewritten); once the
    period has passed, erasure deletes them."""

    name: Identifier
    system: Identifier
    table: Identifier
    basis: str = Field(min_length=1, description="the obligation, in words a data subject understands")
    law: str | None = Field(default=None, description="citation")
    data_use: TaxonomyKey = "essential.legal_obligation"
    age_column: Identifier
    period: RetentionPeriod


# --------------------------------------------------------------------------------------------
# The map


class DataMap(_Strict):
    """The whole data map. Obtain it from :func:`governance.datamap.loader.load_datamap`."""

    version: str = Field(min_length=1)
    settings: Settings = Field(default_factory=lambda: Settings())
    identity_kinds: dict[Identifier, IdentityKindSpec]
    systems: list[SystemSpec]
    processors: list[Processor] = Field(default_factory=list)
    retention: list[RetentionRule] = Field(default_factory=list)
    legal_exceptions: list[LegalException] = Field(default_factory=list)

    _source: str = PrivateAttr(default="<memory>")
    _sha256: str = PrivateAttr(default="")
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    # -- provenance ------------------------------------------------------------------------

    def place(self, path: str, message: str) -> DataMapIssue:
        """A message about ``path`` inside this map, placed as the validator places its own:
        the file read, the path and the line of ``path`` (or of its nearest ancestor in the file)."""
        probe = path
        line = None
        while probe:
            if probe in self._lines:
                line = self._lines[probe]
                break
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return DataMapIssue(self._source, path, message, line)

    @property
    def source(self) -> str:
        """The file the map was read from (``<memory>`` when validated from a dict)."""
        return self._source

    @property
    def version_hash(self) -> str:
        """sha256 (hex) of the file's bytes, for run manifests; empty when built from a dict."""
        return self._sha256

    # -- lookups ---------------------------------------------------------------------------

    @property
    def postgres_systems(self) -> list[PostgresSystem]:
        return [s for s in self.systems if isinstance(s, PostgresSystem)]

    @property
    def object_systems(self) -> list[ObjectStoreSystem]:
        return [s for s in self.systems if isinstance(s, ObjectStoreSystem)]

    @property
    def dynamodb_systems(self) -> list[DynamoDBSystem]:
        return [s for s in self.systems if isinstance(s, DynamoDBSystem)]

    def item_tables(self) -> list[tuple[DynamoDBSystem, ItemTable]]:
        """Every DynamoDB table, with its system, in map order."""
        return [(s, t) for s in self.dynamodb_systems for t in s.tables]

    def system(self, name: str) -> PostgresSystem | ObjectStoreSystem | DynamoDBSystem | None:
        return next((s for s in self.systems if s.name == name), None)

    def postgres_system(self, name: str) -> PostgresSystem:
        """The postgres system ``name``; KeyError if there is none."""
        system = self.system(name)
        if not isinstance(system, PostgresSystem):
            raise KeyError(f"no postgres system {name!r} in the data map")
        return system

    def table(self, ref: TableRef) -> TableSpec:
        """The table ``ref``; KeyError if the map has none."""
        table = self.postgres_system(ref.system).table(ref.table)
        if table is None:
            raise KeyError(f"no table {ref} in the data map")
        return table

    def table_refs(self) -> list[TableRef]:
        """Every table, in map order."""
        return [TableRef(s.name, t.name) for s in self.postgres_systems for t in s.tables]

    def prefix(self, ref: PrefixRef) -> ObjectPrefix:
        """The object prefix ``ref``; KeyError if the map has none."""
        system = self.system(ref.system)
        prefix = system.prefix(ref.prefix) if isinstance(system, ObjectStoreSystem) else None
        if prefix is None:
            raise KeyError(f"no object prefix {ref} in the data map")
        return prefix

    def prefix_refs(self) -> list[PrefixRef]:
        return [PrefixRef(s.name, p.name) for s in self.object_systems for p in s.prefixes]

    def tie_table(self, prefix: ObjectPrefix) -> TableRef | None:
        """The table a row-owned prefix is tied to (resolving the default system)."""
        if prefix.tied_to is None:
            return None
        system = prefix.tied_to.system
        if system is None:
            postgres = self.postgres_systems
            system = postgres[0].name if len(postgres) == 1 else ""
        return TableRef(system, prefix.tied_to.table)

    def prefixes_tied_to(self, ref: TableRef) -> list[PrefixRef]:
        """Row-owned prefixes whose objects belong to rows of ``ref``."""
        return [p for p in self.prefix_refs() if self.tie_table(self.prefix(p)) == ref]

    def processor(self, name: str) -> Processor | None:
        return next((p for p in self.processors if p.name == name), None)

    def legal_exception(self, name: str) -> LegalException | None:
        return next((e for e in self.legal_exceptions if e.name == name), None)

    def legal_exception_for(self, ref: TableRef) -> LegalException | None:
        """The legal exception keeping rows of ``ref``, if any (at most one per table)."""
        return next((e for e in self.legal_exceptions if (e.system, e.table) == (ref.system, ref.table)), None)

    def reference_target(self, ref: TableRef, reference: Reference) -> tuple[TableRef, str]:
        """The (table, column) a reference of table ``ref`` points at, defaults resolved."""
        target = TableRef(reference.to.system or ref.system, reference.to.table)
        field = reference.to.field or self.table(target).primary_key
        return target, field

    def counts(self) -> dict[str, int]:
        """Sizes for summaries: systems, tables, fields, prefixes, processors, retention rules."""
        tables = [t for s in self.postgres_systems for t in s.tables]
        return {
            "systems": len(self.systems),
            "tables": len(tables),
            "fields": sum(len(t.fields) for t in tables),
            "prefixes": sum(len(s.prefixes) for s in self.object_systems),
            "item_tables": sum(len(s.tables) for s in self.dynamodb_systems),
            "processors": len(self.processors),
            "retention_rules": len(self.retention),
            "legal_exceptions": len(self.legal_exceptions),
        }
