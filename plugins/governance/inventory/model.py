"""The declared subprocessors and the transfer reference data as typed, immutable values.

``include/subprocessors.yaml`` is the DPO's record of who receives which personal data, where and
under which safeguard (privacy policy 3.1, 7, 9); ``include/reference/`` holds the facts it is
judged against (ISO 3166 countries, EEA states, the Commission's adequacy decisions, DPF
certifications), each entry with its source and the date it was last checked.

As with the data map, these models check the *shape* (unknown keys are errors, dates are
``YYYY-MM-DD``, an SCC names its module); checks that need other files (a country that exists, a
category of the taxonomy, a processor of the data map, a connection that is configured) live in
:mod:`governance.inventory.loader`, the only supported way to obtain a :class:`SubprocessorList`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from governance.datamap.model import CountryCode, Identifier, RetentionPeriod, TaxonomyKey

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date(value: Any) -> Any:
    """Only a calendar date written ``YYYY-MM-DD`` (YAML gives a ``date``; quoted, a string)."""
    if isinstance(value, datetime):
        raise ValueError(f"{value.isoformat()!r} is a date-time: write the date only, as YYYY-MM-DD")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DATE_RE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date") from None
    raise ValueError(f"{value!r} is not a date in the form YYYY-MM-DD")


IsoDate = Annotated[date, BeforeValidator(_iso_date)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Declarations


class TransferMechanism(StrEnum):
    """How a transfer outside the EEA is made lawful (GDPR chapter V)."""

    NONE = "none"  # no transfer: every processing country is in the EEA
    ADEQUACY_DECISION = "adequacy_decision"  # art. 45
    SCC_2021 = "scc_2021"  # art. 46(2)(c), Commission Implementing Decision (EU) 2021/914
    DPF = "dpf"  # the US partial adequacy decision, for a certified recipient
    BCR = "bcr"  # art. 47
    DEROGATION = "derogation"  # art. 49


# What the data map's ``recipient.transfer_safeguard`` words mean in this file's terms.
SAFEGUARD_WORDS: dict[str, TransferMechanism] = {
    "not_required_within_eea": TransferMechanism.NONE,
    "none": TransferMechanism.NONE,
    "adequacy_decision": TransferMechanism.ADEQUACY_DECISION,
    "standard_contractual_clauses": TransferMechanism.SCC_2021,
    "scc_2021": TransferMechanism.SCC_2021,
    "data_privacy_framework": TransferMechanism.DPF,
    "dpf": TransferMechanism.DPF,
    "binding_corporate_rules": TransferMechanism.BCR,
    "bcr": TransferMechanism.BCR,
    "derogation": TransferMechanism.DEROGATION,
}


class Channel(_Strict):
    """One way data reaches a recipient: exactly one of the four keys."""

    processor: Identifier | None = Field(default=None, description="a processor of the data map")
    system: Identifier | None = Field(default=None, description="a system of the data map the recipient hosts or operates")
    connection: Identifier | None = Field(default=None, description="an Airflow connection the workflows send data through")
    contractual_only: str | None = Field(
        default=None, min_length=1, description="why no workflow sends it data (only the contract covers it)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Channel:
        given = [k for k in ("processor", "system", "connection", "contractual_only") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of processor, system, connection or contractual_only"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def technical(self) -> bool:
        """Whether a workflow sends data this way (so the ledger can show it)."""
        return self.contractual_only is None

    @property
    def label(self) -> str:
        """``processor:crm``, ``system:aircalls_app``, ``connection:x`` or ``contractual``."""
        for key in ("processor", "system", "connection"):
            value = getattr(self, key)
            if value is not None:
                return f"{key}:{value}"
        return "contractual"


class Transfer(_Strict):
    """The safeguard for processing outside the EEA."""

    mechanism: TransferMechanism
    scc_module: Literal[1, 2, 3, 4] | None = Field(
        default=None, description="for scc_2021: module 1 (C2C), 2 (C2P), 3 (P2P) or 4 (P2C)"
    )
    dpf_participant: str | None = Field(default=None, description="for dpf: the name as on the DPF list")
    adequacy_conditions: list[Identifier] = Field(
        default_factory=list, description="conditions of a partial adequacy decision the recipient meets (pipeda_commercial)"
    )
    derogation: str | None = Field(default=None, description="for derogation: the GDPR art. 49(1) ground")
    tia_on_file: bool = Field(default=False, description="a transfer impact assessment is on file")
    tia_date: IsoDate | None = None

    @model_validator(mode="after")
    def _details_match_mechanism(self) -> Transfer:
        if self.mechanism == TransferMechanism.SCC_2021 and self.scc_module is None:
            raise ValueError("scc_2021 needs scc_module (1 C2C, 2 C2P, 3 P2P, 4 P2C)")
        if self.mechanism != TransferMechanism.SCC_2021 and self.scc_module is not None:
            raise ValueError(f"scc_module is only for scc_2021, not {self.mechanism.value}")
        if self.mechanism == TransferMechanism.DPF and not self.dpf_participant:
            raise ValueError("dpf needs dpf_participant (the organisation's name as on the DPF list)")
        if self.mechanism == TransferMechanism.DEROGATION and not self.derogation:
            raise ValueError("derogation needs derogation (the GDPR art. 49(1) ground relied on)")
        if self.tia_date is not None and not self.tia_on_file:
            raise ValueError("tia_date is given but tia_on_file is false")
        return self


class Dpa(_Strict):
    """The data processing agreement (GDPR art. 28)."""

    signed: IsoDate
    review_by: IsoDate
    reference: str | None = None

    @model_validator(mode="after")
    def _review_after_signature(self) -> Dpa:
        if self.review_by <= self.signed:
            raise ValueError("review_by must come after signed")
        return self


class Subprocessor(_Strict):
    """One recipient of personal data."""

    name: Identifier
    legal_name: str = Field(min_length=1)
    role: Literal["subprocessor", "processor"] = "subprocessor"
    purpose: TaxonomyKey = Field(description="fideslang data use")
    description: str | None = None
    receives_through: list[Channel] = Field(min_length=1)
    data_categories: list[TaxonomyKey] = Field(min_length=1)
    processing_countries: list[CountryCode] = Field(min_length=1)
    transfer: Transfer
    dpa: Dpa | None = Field(default=None, description="omit when none is signed (reported)")
    since: IsoDate = Field(description="when it started receiving data")

    @property
    def technical_channels(self) -> list[Channel]:
        return [c for c in self.receives_through if c.technical]


class CustomerNotice(_Strict):
    """The version of this list customers were last told about, and when."""

    version: str = Field(min_length=1)
    date: IsoDate


class InventorySettings(_Strict):
    stale_after: RetentionPeriod = Field(
        default_factory=lambda: RetentionPeriod(days=90),
        description="a declared technical flow not observed for this long is reported",
    )


class SubprocessorList(_Strict):
    """The whole file. Obtain it from :func:`governance.inventory.loader.load_subprocessors`."""

    version: str = Field(min_length=1)
    customer_notice: CustomerNotice
    settings: InventorySettings = Field(default_factory=lambda: InventorySettings())
    subprocessors: list[Subprocessor] = Field(min_length=1)

    _source: str = PrivateAttr(default="<memory>")
    _sha256: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        return self._source

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the file's bytes; empty when validated from a dict."""
        return self._sha256

    def subprocessor(self, name: str) -> Subprocessor | None:
        return next((s for s in self.subprocessors if s.name == name), None)

    def declaring_processor(self, processor: str) -> Subprocessor | None:
        """The subprocessor that receives data through the data map's processor ``processor``."""
        return next((s for s in self.subprocessors if any(c.processor == processor for c in s.receives_through)), None)


# --------------------------------------------------------------------------------------------
# Reference data


class CountryList(_Strict):
    source: str
    last_checked: IsoDate
    codes: dict[CountryCode, str]


class EeaState(_Strict):
    code: CountryCode
    name: str
    source: str
    last_checked: IsoDate


class EeaStates(_Strict):
    states: list[EeaState] = Field(min_length=1)


class AdequacyDecision(_Strict):
    country: CountryCode
    name: str
    decision: str
    scope: Literal["full", "partial"]
    applies_to: Identifier | None = Field(
        default=None, description="for a partial decision: dpf_certified, or a condition the recipient declares"
    )
    note: str | None = None
    source: str
    last_checked: IsoDate

    @model_validator(mode="after")
    def _partial_says_to_whom(self) -> AdequacyDecision:
        if self.scope == "partial" and not self.applies_to:
            raise ValueError("a partial decision says whom it applies_to (dpf_certified or a condition name)")
        if self.scope == "full" and self.applies_to:
            raise ValueError("applies_to is only for a partial decision")
        return self


class AdequacyDecisions(_Strict):
    decisions: list[AdequacyDecision] = Field(min_length=1)


class DpfParticipant(_Strict):
    name: str = Field(min_length=1)
    status: Literal["active", "inactive"]
    source: str
    last_checked: IsoDate


class DpfParticipants(_Strict):
    participants: list[DpfParticipant] = Field(default_factory=list)


DPF_CERTIFIED = "dpf_certified"


class TransferReference(_Strict):
    """Everything in ``include/reference/``, checked."""

    countries: CountryList
    eea: EeaStates
    adequacy: AdequacyDecisions
    dpf: DpfParticipants

    def in_eea(self, country: str) -> bool:
        return any(s.code == country for s in self.eea.states)

    def adequacy_for(self, country: str) -> AdequacyDecision | None:
        return next((d for d in self.adequacy.decisions if d.country == country), None)

    def dpf_active(self, name: str | None) -> bool:
        return bool(name) and any(p.name == name and p.status == "active" for p in self.dpf.participants)

    def dated_entries(self) -> list[tuple[str, str, date, str]]:
        """(file, entry, last_checked, source) of every dated entry, for the staleness listing."""
        rows: list[tuple[str, str, date, str]] = [
            ("countries.yaml", "ISO 3166-1 code list", self.countries.last_checked, self.countries.source)
        ]
        rows += [("eea_states.yaml", f"{s.code} {s.name}", s.last_checked, s.source) for s in self.eea.states]
        rows += [
            ("adequacy_decisions.yaml", f"{d.country} {d.name} ({d.scope})", d.last_checked, d.source)
            for d in self.adequacy.decisions
        ]
        rows += [("dpf_participants.yaml", p.name, p.last_checked, p.source) for p in self.dpf.participants]
        return rows
