"""One normalisation of personal identities, used everywhere identities are compared.

Both sides of every comparison go through here (or through the SQL expression that mirrors it),
so ``  Alice@Example.COM `` matches ``alice@example.com`` and ``+1 (555) 010-2000`` matches
``+15550102000``:

* e-mail: Unicode NFC, surrounding white space trimmed, lower-cased one character at a time with
  the simple (1:1) Unicode mapping, which is what PostgreSQL's ``lower()`` does under a UTF-8
  ``LC_CTYPE`` (no context-dependent final sigma, no ``İ`` -> ``i̇`` expansion).
* phone: parsed with ``phonenumbers`` against the region the caller passes in for numbers typed
  without a country code (the deployment's, :func:`governance.datamap.phone_region`), accepted
  when *possible* (length fits the region's plan), formatted as E.164.

Pure: nothing here reads configuration or the data map; the region is always passed in.

Anything that could widen a match (empty values, SQL or shell wildcards, control characters) is
refused with InvalidIdentity before any system is touched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

IdentityKind = Literal["email", "phone"]
IDENTITY_KINDS: tuple[IdentityKind, ...] = ("email", "phone")

# Wildcards of SQL LIKE, shell globs and regular expressions: never part of a real address or
# number, and the classic way an over-broad erasure starts.
_WILDCARDS = set("%*?[]\\")
# local@domain.tld with no white space; deliberately simpler than RFC 5322 (quoted local parts
# are not accepted by the app either).
_EMAIL_RE = re.compile(r"^[^\s@]{1,64}@[^\s@]+\.[^\s@.]{2,}$")
_MAX_EMAIL_LENGTH = 254


class InvalidIdentity(ValueError):
    """An identity that cannot be used to find a person. The message never repeats the value."""


def _lower_like_postgres(text: str) -> str:
    out = []
    for ch in text:
        low = ch.lower()
        # Python applies the full mapping (U+0130 -> "i" + U+0307); PostgreSQL's towlower-based
        # lower() applies the simple one (U+0130 -> "i"). Keep the simple mapping.
        if len(low) != 1:
            low = "i" if ch == "\u0130" else ch
        out.append(low)
    return "".join(out)


def normalise_email(raw: str) -> str:
    """Return the canonical form of an e-mail address, or raise InvalidIdentity."""
    if not isinstance(raw, str):
        raise InvalidIdentity("email must be text")
    value = unicodedata.normalize("NFC", raw).strip()
    if not value:
        raise InvalidIdentity("email is empty")
    if any(ch in _WILDCARDS for ch in value):
        raise InvalidIdentity("email contains a wildcard character (% * ? [ ] \\); give one exact address")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise InvalidIdentity("email contains control or invisible characters")
    if len(value) > _MAX_EMAIL_LENGTH or not _EMAIL_RE.match(value):
        raise InvalidIdentity("email is not a valid address (expected local@domain.tld)")
    return _lower_like_postgres(value)


def normalise_phone(raw: str, *, region: str | None) -> str:
    """Return the E.164 form of a phone number, or raise InvalidIdentity.

    Numbers without a ``+`` country code are read in ``region`` (ISO 3166 alpha-2, the
    deployment's :func:`governance.datamap.phone_region`); with ``region=None`` only numbers with
    a country code are accepted. Possible numbers are accepted even when not assigned (e.g. 555
    numbers), because people and test data use them.
    """
    import phonenumbers

    if not isinstance(raw, str):
        raise InvalidIdentity("phone must be text")
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        raise InvalidIdentity("phone is empty")
    if any(ch in _WILDCARDS for ch in value):
        raise InvalidIdentity("phone contains a wildcard character (% * ? [ ] \\); give one exact number")
    if sum(ch.isdigit() for ch in value) < 4:
        raise InvalidIdentity("phone has too few digits")
    try:
        # The region only matters without a country code.
        number = phonenumbers.parse(value, None if value.startswith("+") else (region.upper() if region else None))
    except phonenumbers.NumberParseException as exc:
        reason = str(exc).split(") ", 1)[-1]  # phonenumbers' reason never includes the input
        raise InvalidIdentity(f"phone could not be read as a number: {reason}") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentity("phone is not a possible number for its country (check the country code)")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise(kind: IdentityKind, raw: str, *, region: str | None) -> str:
    if kind == "email":
        return normalise_email(raw)
    if kind == "phone":
        return normalise_phone(raw, region=region)
    raise InvalidIdentity(f"unknown identity kind {kind!r}; expected one of {', '.join(IDENTITY_KINDS)}")


@dataclass(frozen=True)
class SubjectIdentities:
    """The normalised identities of one data subject (at least one present)."""

    email: str | None = None
    phone: str | None = None

    @classmethod
    def parse(cls, *, email: str | None = None, phone: str | None = None, region: str | None = None) -> SubjectIdentities:
        """Normalise the given identities; blank ones count as absent, at least one is required.
        ``region`` reads a phone typed without a country code (see :func:`normalise_phone`)."""
        email = email if email and email.strip() else None
        phone = phone if phone and phone.strip() else None
        if email is None and phone is None:
            raise InvalidIdentity("give at least one identity: an email or a phone")
        return cls(
            email=normalise_email(email) if email is not None else None,
            phone=normalise_phone(phone, region=region) if phone is not None else None,
        )

    def items(self) -> list[tuple[IdentityKind, str]]:
        pairs: list[tuple[IdentityKind, str]] = []
        if self.email is not None:
            pairs.append(("email", self.email))
        if self.phone is not None:
            pairs.append(("phone", self.phone))
        return pairs

    def __repr__(self) -> str:  # never print the identities themselves
        kinds = ",".join(kind for kind, _ in self.items())
        return f"SubjectIdentities(<{kinds}>)"

    __str__ = __repr__
