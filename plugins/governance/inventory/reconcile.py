"""The transfer inventory: the declarations, the data map and what really flowed, reconciled.

Pure: :func:`build_inventory` takes checked inputs (the subprocessor list, the data map, the
reference data, the observed datasets, the notified baseline) and returns the inventory and its
violations; reading the ledger, resolving connections and writing reports live elsewhere. The
same inputs always give the same result, which is what the tests plant violations into.

Violation kinds (``Violation.kind``):

* ``undeclared_processor``: a processor of the data map no subprocessor declares;
* ``undeclared_observed_flow``: data observed going to an external namespace no declaration covers;
* ``undeclared_category``: the data map sends a processor a category its declaration does not list;
* ``datamap_contradiction``: the data map's ``recipient`` block disagrees with the declaration
  (country, purpose or safeguard);
* ``stale_flow``: a declared technical flow not observed for ``settings.stale_after``;
* ``transfer_without_safeguard``: a country without adequacy (or outside a partial decision's
  scope) and no SCC, DPF (certified) or BCR;
* ``missing_tia``: an SCC or BCR transfer without a transfer impact assessment on file;
* ``dpa_missing`` / ``dpa_review_overdue``;
* ``changed_since_notice``: a new processor, country or category since the notified version;
* ``notice_baseline_missing``: the notified version's list is not on record, so changes cannot be told.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlsplit

from governance.datamap.model import DataMap, PostgresSystem
from governance.datamap.taxonomy import is_within
from governance.inventory.model import (
    DPF_CERTIFIED,
    SAFEGUARD_WORDS,
    Subprocessor,
    SubprocessorList,
    TransferMechanism,
    TransferReference,
)

VIOLATION_KINDS = (
    "undeclared_processor",
    "undeclared_observed_flow",
    "undeclared_category",
    "datamap_contradiction",
    "stale_flow",
    "transfer_without_safeguard",
    "missing_tia",
    "dpa_missing",
    "dpa_review_overdue",
    "changed_since_notice",
    "notice_baseline_missing",
)


@dataclass(frozen=True, order=True)
class Violation:
    """One thing the DPO must act on. ``subject`` is the subprocessor (or the undeclared processor
    or namespace); ``message`` says what is wrong in plain words. Never personal data."""

    kind: str
    subject: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in VIOLATION_KINDS:
            raise ValueError(f"unknown violation kind {self.kind!r}")


@dataclass(frozen=True)
class ObservedDataset:
    """A dataset some task read or wrote, with the last time and how many task records."""

    uri: str
    last_seen: datetime
    records: int


@dataclass(frozen=True)
class Observations:
    """What really flowed: datasets from the ledger and lineage events since ``evidence_since``
    (the oldest record read; None when there is no record at all)."""

    datasets: tuple[ObservedDataset, ...] = ()
    evidence_since: datetime | None = None


@dataclass(frozen=True)
class ChannelPrefixes:
    """Dataset URI prefixes of each channel (``processor:crm`` -> ``["http://crm.example:443/"]``)
    and of the project's own state (the governance database), which is never a flow to anyone."""

    channels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    internal: Sequence[str] = ()

    def channel_of(self, uri: str) -> str | None:
        for label, prefixes in self.channels.items():
            if any(uri.startswith(p) for p in prefixes):
                return label
        return None

    def is_internal(self, uri: str) -> bool:
        return any(uri.startswith(p) for p in self.internal)


@dataclass(frozen=True)
class NoticeEntry:
    """What customers were told about one subprocessor."""

    countries: tuple[str, ...]
    data_categories: tuple[str, ...]


@dataclass(frozen=True)
class CountryTransfer:
    country: str
    safeguard: str  # plain words: "EEA", "adequacy decision (...)", "SCC 2021 module 3", ...
    lawful: bool


@dataclass(frozen=True)
class InventoryEntry:
    """One subprocessor as the inventory shows it."""

    name: str
    legal_name: str
    role: str
    purpose: str
    channels: tuple[str, ...]
    data_categories: tuple[str, ...]
    transfers: tuple[CountryTransfer, ...]
    mechanism: str
    tia_on_file: bool
    dpa_signed: date | None
    dpa_review_by: date | None
    since: date
    last_observed: datetime | None
    sources: tuple[str, ...]  # data map systems (or "product") the data leaves from, for the diagram

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("dpa_signed", "dpa_review_by", "since", "last_observed"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True)
class Inventory:
    """The reconciled inventory: entries, violations, and what it was built from."""

    as_of: datetime
    list_version: str
    notice_version: str
    notice_date: date
    entries: tuple[InventoryEntry, ...]
    violations: tuple[Violation, ...]
    changes: tuple[Violation, ...]  # the changed_since_notice subset, for the report's own section
    observed_since: datetime | None

    @property
    def is_clean(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.violations:
            counts[v.kind] = counts.get(v.kind, 0) + 1
        return counts


PRODUCT_SOURCE = "aircalls product (no workflow)"


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _covered(category: str, declared: Sequence[str]) -> bool:
    return any(is_within(category, d) for d in declared)


def country_transfer(sub: Subprocessor, country: str, reference: TransferReference) -> CountryTransfer:
    """The safeguard a transfer of ``sub``'s to ``country`` relies on, and whether it holds."""
    transfer = sub.transfer
    if reference.in_eea(country):
        return CountryTransfer(country, "EEA (no transfer)", True)
    decision = reference.adequacy_for(country)
    if decision is not None and decision.scope == "full":
        return CountryTransfer(country, f"adequacy decision ({decision.decision})", True)
    if decision is not None and decision.applies_to == DPF_CERTIFIED and reference.dpf_active(transfer.dpf_participant):
        return CountryTransfer(country, "EU-US Data Privacy Framework (certified participant)", True)
    if decision is not None and decision.applies_to in transfer.adequacy_conditions:
        return CountryTransfer(country, f"adequacy decision for {decision.applies_to} ({decision.decision})", True)
    mechanism = transfer.mechanism
    if mechanism == TransferMechanism.SCC_2021:
        return CountryTransfer(country, f"2021 standard contractual clauses, module {transfer.scc_module}", True)
    if mechanism == TransferMechanism.BCR:
        return CountryTransfer(country, "binding corporate rules", True)
    if mechanism == TransferMechanism.DEROGATION:
        return CountryTransfer(country, f"derogation (GDPR art. 49: {transfer.derogation})", True)
    return CountryTransfer(country, _why_unlawful(sub, country, reference), False)


def _why_unlawful(sub: Subprocessor, country: str, reference: TransferReference) -> str:
    decision = reference.adequacy_for(country)
    transfer = sub.transfer
    if transfer.mechanism == TransferMechanism.DPF or (decision is not None and decision.applies_to == DPF_CERTIFIED):
        if transfer.mechanism == TransferMechanism.DPF or transfer.dpf_participant:
            return (
                f"{country}: {transfer.dpf_participant!r} is not an active participant of the EU-US Data Privacy "
                "Framework (include/reference/dpf_participants.yaml), and no SCC or BCR is in place"
            )
    if decision is not None:
        return (
            f"{country}: the adequacy decision covers only {decision.applies_to}, which this recipient does not "
            "declare (transfer.adequacy_conditions), and no SCC, DPF or BCR is in place"
        )
    return f"{country}: no adequacy decision, and no SCC, DPF or BCR is in place (mechanism {transfer.mechanism.value})"


def _holds_any(system: PostgresSystem, categories: Sequence[str]) -> bool:
    """Whether a table of ``system`` holds personal data of one of ``categories`` (either way up
    the taxonomy: ``user.contact`` matches a ``user.contact.email`` field and the reverse)."""
    return any(
        is_within(f.data_category, c) or is_within(c, f.data_category)
        for t in system.tables for f in t.fields if f.data_category.startswith("user") for c in categories
    )  # fmt: skip


def _sources(sub: Subprocessor, datamap: DataMap) -> tuple[str, ...]:
    """Data map systems the data leaves from: hosted systems, and for a processor the databases
    holding a category it receives; the product itself for contractual-only flows."""
    found: list[str] = []
    for channel in sub.receives_through:
        if channel.system is not None:
            found.append(channel.system)
        elif channel.processor is not None:
            processor = datamap.processor(channel.processor)
            categories = processor.data_categories if processor else []
            for system in datamap.systems:
                if isinstance(system, PostgresSystem) and _holds_any(system, categories):
                    found.append(system.name)
        elif channel.connection is not None:
            found.append(f"connection {channel.connection}")
        else:
            found.append(PRODUCT_SOURCE)
    return tuple(dict.fromkeys(found))


def build_inventory(
    declared: SubprocessorList,
    datamap: DataMap,
    reference: TransferReference,
    *,
    observed: Observations,
    prefixes: ChannelPrefixes,
    notified: Mapping[str, NoticeEntry] | None,
    as_of: datetime,
) -> Inventory:
    """Reconcile the three sources at ``as_of``. ``notified`` is the list customers were last
    told about (by subprocessor name), or None when it is not on record."""
    violations: list[Violation] = []
    last_seen: dict[str, datetime] = {}
    for dataset in observed.datasets:
        label = prefixes.channel_of(dataset.uri)
        if label is not None:
            if label not in last_seen or dataset.last_seen > last_seen[label]:
                last_seen[label] = dataset.last_seen
    declared_labels = {c.label for s in declared.subprocessors for c in s.receives_through if c.technical}

    # The data map against the declarations.
    for processor in datamap.processors:
        sub = declared.declaring_processor(processor.name)
        if sub is None:
            violations.append(Violation(
                "undeclared_processor", processor.name,
                f"the data map sends data to processor {processor.name!r} (connection {processor.connection_id}), "
                "which no subprocessor declares (receives_through: processor)",
            ))  # fmt: skip
            continue
        missing = [c for c in processor.data_categories if not _covered(c, sub.data_categories)]
        if missing:
            violations.append(Violation(
                "undeclared_category", sub.name,
                f"the data map sends {', '.join(missing)} to processor {processor.name!r}; the declaration lists "
                f"only {', '.join(sub.data_categories)}",
            ))  # fmt: skip
        recipient = processor.recipient
        if recipient is not None:
            if recipient.country not in sub.processing_countries:
                violations.append(Violation(
                    "datamap_contradiction", sub.name,
                    f"the data map places processor {processor.name!r} in {recipient.country}; the declaration "
                    f"lists {', '.join(sub.processing_countries)}",
                ))  # fmt: skip
            if not is_within(recipient.purpose, sub.purpose):
                violations.append(Violation(
                    "datamap_contradiction", sub.name,
                    f"the data map's purpose for processor {processor.name!r} is {recipient.purpose}; the "
                    f"declaration's is {sub.purpose}",
                ))  # fmt: skip
            if recipient.transfer_safeguard is not None:
                mechanism = SAFEGUARD_WORDS.get(recipient.transfer_safeguard)
                if mechanism != sub.transfer.mechanism:
                    violations.append(Violation(
                        "datamap_contradiction", sub.name,
                        f"the data map's transfer_safeguard for processor {processor.name!r} is "
                        f"{recipient.transfer_safeguard}; the declaration's mechanism is {sub.transfer.mechanism.value}",
                    ))  # fmt: skip

    # Observed flows against the declarations.
    undeclared: dict[str, ObservedDataset] = {}
    for dataset in observed.datasets:
        if prefixes.is_internal(dataset.uri):
            continue
        label = prefixes.channel_of(dataset.uri)
        if label is not None and label in declared_labels:
            continue
        if label is not None and label.startswith("system:"):
            continue  # a governed system no recipient hosts: internal, not a transfer
        namespace = _namespace(dataset.uri)
        earlier = undeclared.get(namespace)
        if earlier is None or dataset.last_seen > earlier.last_seen:
            undeclared[namespace] = dataset
    for namespace, dataset in sorted(undeclared.items()):
        violations.append(Violation(
            "undeclared_observed_flow", namespace,
            f"tasks sent data to {namespace} ({dataset.records} task records, last {dataset.last_seen:%Y-%m-%d}); "
            "no subprocessor declares it",
        ))  # fmt: skip

    stale_after = declared.settings.stale_after
    cutoff = as_of - timedelta(days=stale_after.approx_days)
    entries: list[InventoryEntry] = []
    for sub in declared.subprocessors:
        transfers = tuple(country_transfer(sub, c, reference) for c in sub.processing_countries)
        for t in transfers:
            if not t.lawful:
                violations.append(Violation("transfer_without_safeguard", sub.name, t.safeguard))
        outside = [t.country for t in transfers if not reference.in_eea(t.country)]
        if sub.transfer.mechanism in (TransferMechanism.SCC_2021, TransferMechanism.BCR) and outside and not sub.transfer.tia_on_file:
            violations.append(Violation(
                "missing_tia", sub.name,
                f"transfer to {', '.join(outside)} under {sub.transfer.mechanism.value} without a transfer impact "
                "assessment on file",
            ))  # fmt: skip
        if sub.dpa is None:
            violations.append(Violation("dpa_missing", sub.name, "no data processing agreement is on file"))
        elif sub.dpa.review_by < as_of.date():
            violations.append(Violation(
                "dpa_review_overdue", sub.name,
                f"the data processing agreement was due for review on {sub.dpa.review_by.isoformat()}",
            ))  # fmt: skip
        seen_times = [last_seen[c.label] for c in sub.technical_channels if c.label in last_seen]
        for channel in sub.technical_channels:
            if observed.evidence_since is None:
                break  # nothing on record yet: no flow can be called stale
            seen = last_seen.get(channel.label)
            counted_from = seen or max(observed.evidence_since, _start_of(sub.since))
            if counted_from < cutoff:
                what = f"last observed {seen:%Y-%m-%d}" if seen else (
                    f"never observed since {counted_from:%Y-%m-%d}")  # fmt: skip
                violations.append(Violation(
                    "stale_flow", sub.name,
                    f"declared flow {channel.label} {what} (stale after {stale_after.iso}); remove it or find out "
                    "why nothing was sent",
                ))  # fmt: skip
        entries.append(InventoryEntry(
            name=sub.name, legal_name=sub.legal_name, role=sub.role, purpose=sub.purpose,
            channels=tuple(c.label for c in sub.receives_through), data_categories=tuple(sub.data_categories),
            transfers=transfers, mechanism=sub.transfer.mechanism.value, tia_on_file=sub.transfer.tia_on_file,
            dpa_signed=sub.dpa.signed if sub.dpa else None, dpa_review_by=sub.dpa.review_by if sub.dpa else None,
            since=sub.since, last_observed=max(seen_times) if seen_times else None, sources=_sources(sub, datamap),
        ))  # fmt: skip

    changes = _changes_since_notice(declared, notified)
    violations += changes
    return Inventory(
        as_of=as_of,
        list_version=declared.version,
        notice_version=declared.customer_notice.version,
        notice_date=declared.customer_notice.date,
        entries=tuple(entries),
        violations=tuple(violations),
        changes=tuple(changes),
        observed_since=observed.evidence_since,
    )


def _namespace(uri: str) -> str:
    """The OpenLineage namespace of a dataset URI (``scheme://host:port``), as
    ``governance.lineage.openlineage_dataset`` names it (kept here: that module imports the
    OpenLineage client, which a pure reconciliation does not need)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else uri


def notice_entries(declared: SubprocessorList) -> dict[str, NoticeEntry]:
    """The list as customers would be told about it now (what a snapshot records)."""
    return {
        s.name: NoticeEntry(tuple(s.processing_countries), tuple(s.data_categories)) for s in declared.subprocessors
    }


def _changes_since_notice(declared: SubprocessorList, notified: Mapping[str, NoticeEntry] | None) -> list[Violation]:
    notice = declared.customer_notice
    if notified is None:
        if declared.version == notice.version:
            return []  # the current list is the notified one
        return [Violation(
            "notice_baseline_missing", "customer_notice",
            f"customers were last notified of version {notice.version}, which is not on record "
            "(governance.transfer_inventory): what changed since cannot be told",
        )]  # fmt: skip
    changes: list[Violation] = []
    told = f"since the customer notice of {notice.date.isoformat()} (version {notice.version})"
    for sub in declared.subprocessors:
        before = notified.get(sub.name)
        if before is None:
            changes.append(Violation(
                "changed_since_notice", sub.name,
                f"new subprocessor {sub.name!r} ({sub.legal_name}) {told}: notify customers before it starts",
            ))  # fmt: skip
            continue
        for country in sub.processing_countries:
            if country not in before.countries:
                changes.append(Violation("changed_since_notice", sub.name, f"new processing country {country} {told}"))
        for category in sub.data_categories:
            if not _covered(category, before.data_categories):
                changes.append(Violation("changed_since_notice", sub.name, f"new data category {category} {told}"))
    return changes
