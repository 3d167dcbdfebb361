"""The cast: named data subjects with fixed identities that tests and benchmarks rely on.

The bulk of the reference deployment is random (seeded) data. On top of it the seeder writes these
subjects, whose identities, ids and relationships never change between seeds or scales, so a test
can say "erase ``household_a``" and know exactly what must go and what must stay:

* ids live in a reserved block above :data:`CAST_ID_BASE` (bulk ids count up from 1), so they are
  the same at every scale; cast members belong to the bulk businesses 1..7, which exist at every
  scale;
* phones use the fictional 555-01xx US range (and the UK/Greek drama ranges), e-mails the reserved
  ``example.*`` domains: bulk data never produces either, so a lookup finds exactly the cast rows;
* ``no_data`` is an identity that exists in no system.

Only ``heavy_subject``'s call count depends on the scale (see :func:`heavy_call_count`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Cast rows take ids CAST_ID_BASE + 1, + 2, ... in every table; bulk ids stay far below.
CAST_ID_BASE = 1_000_000_000

# The bulk businesses the cast belongs to (they exist at every scale).
BUSINESS_A = 1
BUSINESS_B = 2
BUSINESS_C = 3
BUSINESS_D = 4
BUSINESS_E = 5
BUSINESS_F = 6
BUSINESS_G = 7
CAST_BUSINESS_IDS = (BUSINESS_A, BUSINESS_B, BUSINESS_C, BUSINESS_D, BUSINESS_E, BUSINESS_F, BUSINESS_G)


def _uid(n: int) -> int:
    return CAST_ID_BASE + n


@dataclass(frozen=True)
class CastSubject:
    """One designated data subject and where the seeder puts them.

    ``email`` and ``phone`` are the identities as the person typed them (for a user: the
    ``users`` row; for a caller-only subject: the caller's e-mail and the caller-ID number);
    ``e164`` is the normalised phone. ``caller_email`` is the address on the caller rows, the
    same address as ``email`` but typed in another case where both exist. ``caller_ids`` and
    ``caller_business_ids`` are parallel. Processor presence is by e-mail (case-insensitive).
    """

    key: str
    description: str
    full_name: str | None
    email: str | None
    phone: str | None
    e164: str | None
    user_id: int | None = None
    user_business_id: int | None = None
    caller_ids: tuple[int, ...] = ()
    caller_business_ids: tuple[int, ...] = ()
    caller_email: str | None = None
    in_payments: bool = False
    in_crm: bool = False
    first_name: str | None = field(default=None, repr=False)
    last_name: str | None = field(default=None, repr=False)

    @property
    def business_ids(self) -> tuple[int, ...]:
        """Every business holding a row of this subject (user and caller rows), ascending."""
        ids = set(self.caller_business_ids)
        if self.user_business_id is not None:
            ids.add(self.user_business_id)
        return tuple(sorted(ids))

    @property
    def is_user(self) -> bool:
        return self.user_id is not None

    @property
    def in_app(self) -> bool:
        """Whether any ``app`` row holds this subject."""
        return self.user_id is not None or bool(self.caller_ids)

    def __repr__(self) -> str:  # identities stay out of logs and test output
        return f"CastSubject(key={self.key!r}, user_id={self.user_id}, caller_ids={self.caller_ids})"


_SUBJECTS: tuple[CastSubject, ...] = (
    CastSubject(
        key="both_user_and_caller",
        description="user of business A who also called business B from the same phone, same e-mail",
        full_name="María López",
        first_name="María",
        last_name="López",
        email="Maria.Lopez@Example.com",
        phone="(415) 555-0132",
        e164="+14155550132",
        user_id=_uid(1),
        user_business_id=BUSINESS_A,
        caller_ids=(_uid(1),),
        caller_business_ids=(BUSINESS_B,),
        caller_email="maria.lopez@example.com",
        in_payments=True,
        in_crm=True,
    ),
    CastSubject(
        key="call_handler",
        description="user of business A who handled many calls of other callers",
        full_name="Daniel Okafor",
        first_name="Daniel",
        last_name="Okafor",
        email="Daniel.Okafor@example.com",
        phone="+1 415-555-0133",
        e164="+14155550133",
        user_id=_uid(2),
        user_business_id=BUSINESS_A,
        in_crm=True,
    ),
    CastSubject(
        key="caller_only",
        description="caller of business C with no user account: recorded and transcribed calls, "
        "messages, appointments",
        full_name="田中 健二",
        first_name="健二",
        last_name="田中",
        email="kenji.tanaka@example.org",
        phone="+16285550141",
        e164="+16285550141",
        caller_ids=(_uid(2),),
        caller_business_ids=(BUSINESS_C,),
        caller_email="kenji.tanaka@example.org",
        in_crm=True,
    ),
    CastSubject(
        key="household_a",
        description="caller of business D sharing one household phone with household_b",
        full_name="Anna Schmidt",
        first_name="Anna",
        last_name="Schmidt",
        email="Anna.Schmidt@Example.org",
        phone="+13125550147",
        e164="+13125550147",
        caller_ids=(_uid(3),),
        caller_business_ids=(BUSINESS_D,),
        caller_email="Anna.Schmidt@Example.org",
        in_crm=True,
    ),
    CastSubject(
        key="household_b",
        description="caller of business D sharing one household phone with household_a (no e-mail)",
        full_name="Jonas Schmidt",
        first_name="Jonas",
        last_name="Schmidt",
        email=None,
        phone="+13125550147",
        e164="+13125550147",
        caller_ids=(_uid(4),),
        caller_business_ids=(BUSINESS_D,),
    ),
    CastSubject(
        key="multi_business_caller",
        description="one phone that called three businesses: three caller rows (e-mail on the one at C)",
        full_name="Chloé Dubois",
        first_name="Chloé",
        last_name="Dubois",
        email="chloe.dubois@example.net",
        phone="+442079460958",
        e164="+442079460958",
        caller_ids=(_uid(5), _uid(6), _uid(7)),
        caller_business_ids=(BUSINESS_B, BUSINESS_C, BUSINESS_D),
        caller_email="chloe.dubois@example.net",
        in_crm=True,
    ),
    CastSubject(
        key="processor_only_payments",
        description="a customer of the payments processor only: in no app table and not in the crm",
        full_name="Lukas Weber",
        first_name="Lukas",
        last_name="Weber",
        email="Lukas.Weber@Example.net",
        phone="+49 30 901820",
        e164="+4930901820",
        in_payments=True,
    ),
    CastSubject(
        key="shared_business_user_1",
        description="one of two users of business E",
        full_name="Sofía García",
        first_name="Sofía",
        last_name="García",
        email="sofia.garcia@example.com",
        phone="415.555.0150",
        e164="+14155550150",
        user_id=_uid(3),
        user_business_id=BUSINESS_E,
        in_crm=True,
    ),
    CastSubject(
        key="shared_business_user_2",
        description="the other of two users of business E (Greek name and number)",
        full_name="Γιώργος Παπαδόπουλος",
        first_name="Γιώργος",
        last_name="Παπαδόπουλος",
        email="G.Papadopoulos@Example.com",
        phone="+30 21 0555 0151",
        e164="+302105550151",
        user_id=_uid(4),
        user_business_id=BUSINESS_E,
        in_crm=True,
    ),
    CastSubject(
        key="payer",
        description="user of business F with monthly payments from 2018-12 to 2026-11, older and "
        "younger than the 7-year tax retention",
        full_name="Olivia Bennett",
        first_name="Olivia",
        last_name="Bennett",
        email="olivia.bennett@example.com",
        phone="+1 (646) 555-0160",
        e164="+16465550160",
        user_id=_uid(5),
        user_business_id=BUSINESS_F,
        in_payments=True,
        in_crm=True,
    ),
    CastSubject(
        key="heavy_subject",
        description="caller of business G with many recorded calls (1,000 x 256 KiB at large scale)",
        full_name="Ahmed Hassan",
        first_name="Ahmed",
        last_name="Hassan",
        email="ahmed.hassan@example.org",
        phone="+12065550170",
        e164="+12065550170",
        caller_ids=(_uid(8),),
        caller_business_ids=(BUSINESS_G,),
        caller_email="ahmed.hassan@example.org",
        in_crm=True,
    ),
    CastSubject(
        key="no_data",
        description="an identity that exists in no system",
        full_name="Nobody Here",
        first_name="Nobody",
        last_name="Here",
        email="nobody.here@example.net",
        phone="+1 415-555-0199",
        e164="+14155550199",
    ),
)

#: The cast by key, in declaration order (read-only).
CAST: Mapping[str, CastSubject] = MappingProxyType({s.key: s for s in _SUBJECTS})
CAST_KEYS: tuple[str, ...] = tuple(CAST)

# Per-subject shape of the generated data (used by the generator, and by tests as expectations).
#: Months with a payment of ``payer``: 2018-12 .. 2026-11 inclusive.
PAYER_FIRST_MONTH = (2018, 12)
PAYER_LAST_MONTH = (2026, 11)
#: Share of business A's answered, transferred or booked bulk calls that ``call_handler`` handled.
CALL_HANDLER_SHARE_PERCENT = 60


def heavy_call_count(scale: str) -> int:
    """How many recorded calls ``heavy_subject`` has at ``scale``."""
    return 1000 if scale == "large" else 20


def cast_member(key: str) -> CastSubject:
    """The subject named ``key``; KeyError naming the known keys otherwise."""
    try:
        return CAST[key]
    except KeyError:
        raise KeyError(f"no cast member {key!r}; known: {', '.join(CAST_KEYS)}") from None


def app_subjects() -> Iterator[CastSubject]:
    """Cast members with at least one ``app`` row."""
    return (s for s in _SUBJECTS if s.in_app)


def cast_phones_e164() -> frozenset[str]:
    """Every cast phone (E.164): bulk data never uses them."""
    return frozenset(s.e164 for s in _SUBJECTS if s.e164)


def cast_emails_lower() -> frozenset[str]:
    """Every cast e-mail, lower-cased: bulk data never uses them."""
    out = {s.email.lower() for s in _SUBJECTS if s.email}
    out |= {s.caller_email.lower() for s in _SUBJECTS if s.caller_email}
    return frozenset(out)
