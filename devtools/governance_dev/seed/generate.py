"""Synthetic, deterministic data for the reference deployment (pure: no database, no network).

:func:`generate_reference_data` builds every ``app`` table as a pandas DataFrame, the object-store
contents (recordings and transcripts of a sample of calls) as specifications, and the processor
records (payments customers and charges, crm contacts). :func:`write_csv_files` writes the tables as
CSV files that PostgreSQL's ``COPY ... (FORMAT csv)`` reads.

Determinism: every part draws from its own ``numpy.random.Generator`` seeded with ``[seed, part]``
and Faker instances seeded with ``seed_instance``; nothing reads the clock. The same scale and seed
give identical frames and byte-identical CSV files (for the pinned numpy, pandas and Faker).

Faker is used only for people (names in several locales and scripts, addresses, job titles, e-mail
domains), drawn once into small pools; rows pick from the pools with vectorised numpy indexing, so
millions of rows cost no per-row Python. Row ids count up from 1 in time order (as an
auto-increment would); the cast (:mod:`governance_dev.seed.cast`) is appended with reserved ids.
"""

from __future__ import annotations

import io
import json
import re
import time
import wave
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pandas.api.types import union_categoricals

from governance_dev.seed.cast import (
    BUSINESS_A,
    CALL_HANDLER_SHARE_PERCENT,
    CAST,
    CAST_BUSINESS_IDS,
    CAST_ID_BASE,
    PAYER_FIRST_MONTH,
    PAYER_LAST_MONTH,
    heavy_call_count,
)

# ------------------------------------------------------------------------------------------ shape

#: Parents before children: the order tables are written and loaded in.
TABLE_ORDER: tuple[str, ...] = (
    "businesses",
    "users",
    "callers",
    "calls",
    "messages",
    "appointments",
    "support_tickets",
    "payments",
    "marketing_preferences",
    "usage_events",
)

TABLE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "businesses": ("id", "name", "industry", "country", "created_at"),
    "users": (
        "id",
        "business_id",
        "full_name",
        "email",
        "phone",
        "phone_e164",
        "job_title",
        "billing_address",
        "created_at",
        "last_login_at",
    ),
    "callers": ("id", "business_id", "phone", "full_name", "email", "first_seen_at"),
    "calls": (
        "id",
        "business_id",
        "caller_id",
        "handled_by_user_id",
        "started_at",
        "duration_s",
        "outcome",
        "recording_key",
        "transcript",
    ),
    "messages": ("id", "business_id", "caller_id", "user_id", "channel", "direction", "body", "sent_at"),
    "appointments": (
        "id",
        "business_id",
        "caller_id",
        "scheduled_for",
        "notes",
        "calendar_event_id",
        "created_at",
    ),
    "support_tickets": ("id", "user_id", "subject", "body", "status", "created_at"),
    "payments": (
        "id",
        "business_id",
        "user_id",
        "amount_cents",
        "currency",
        "card_last4",
        "billing_address",
        "processor_charge_id",
        "paid_at",
    ),
    "marketing_preferences": ("user_id", "email_opt_in", "sms_opt_in", "updated_at"),
    "usage_events": (
        "id",
        "user_id",
        "occurred_at",
        "ip_address",
        "user_agent",
        "device_id",
        "path",
        "geo_country",
    ),
}


@dataclass(frozen=True)
class ScaleSpec:
    """Row counts of one scale. Appointments follow the booked calls; payments follow the
    businesses (one a month from sign-up); marketing preferences cover 90% of users."""

    name: str
    businesses: int
    users: int
    callers: int
    calls: int
    messages: int
    support_tickets: int
    usage_events: int
    object_sample: int
    sample_recording_bytes: int
    heavy_recording_bytes: int

    @property
    def heavy_calls(self) -> int:
        return heavy_call_count(self.name)


# A WAV header is 44 bytes; 8 kHz mono 16-bit is 16,000 bytes a second.
_WAV_HEADER = 44
SCALES: Mapping[str, ScaleSpec] = {
    "small": ScaleSpec(
        name="small",
        businesses=20,
        users=150,
        callers=1_500,
        calls=10_000,
        messages=5_000,
        support_tickets=120,
        usage_events=30_000,
        object_sample=150,
        sample_recording_bytes=_WAV_HEADER + 4_000,
        heavy_recording_bytes=_WAV_HEADER + 4_000,
    ),
    "large": ScaleSpec(
        name="large",
        businesses=2_000,
        users=20_000,
        callers=200_000,
        calls=1_000_000,
        messages=500_000,
        support_tickets=12_000,
        usage_events=5_000_000,
        object_sample=10_000,
        sample_recording_bytes=_WAV_HEADER + 8_000,
        heavy_recording_bytes=256 * 1024,
    ),
}

DEFAULT_SEED = 20261128


def _epoch(iso: str) -> int:
    return int(np.datetime64(iso, "s").astype(np.int64))


#: Activity (calls, messages, usage) spans three years ending the day before the seed date.
ACTIVITY_START = _epoch("2023-12-01T00:00:00")
ACTIVITY_END = _epoch("2026-11-28T00:00:00")  # exclusive
PAYMENTS_START = _epoch("2018-12-01T00:00:00")
BUSINESS_CREATED_FROM = _epoch("2018-06-01T00:00:00")
BUSINESS_CREATED_TO = _epoch("2023-11-01T00:00:00")
DAY = 86_400

# ------------------------------------------------------------------------------------------ pools

COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "JP", "GR")
COUNTRY_WEIGHTS = np.array([0.55, 0.11, 0.09, 0.08, 0.07, 0.05, 0.05])
LOCALES: Mapping[str, str] = {
    "US": "en_US",
    "GB": "en_GB",
    "DE": "de_DE",
    "FR": "fr_FR",
    "ES": "es_ES",
    "JP": "ja_JP",
    "GR": "el_GR",
}
CURRENCIES: Mapping[str, str] = {
    "US": "USD",
    "GB": "GBP",
    "DE": "EUR",
    "FR": "EUR",
    "ES": "EUR",
    "JP": "JPY",
    "GR": "EUR",
}
# Monthly plan prices in minor units, per currency (JPY has no minor unit).
PLAN_PRICES: Mapping[str, tuple[int, ...]] = {
    "USD": (2_900, 4_900, 9_900, 19_900),
    "GBP": (2_500, 3_900, 7_900, 15_900),
    "EUR": (2_900, 4_500, 8_900, 17_900),
    "JPY": (4_400, 7_400, 14_800, 29_800),
}
INDUSTRIES: tuple[str, ...] = (
    "dental clinic",
    "law firm",
    "plumbing",
    "hair salon",
    "veterinary clinic",
    "real estate",
    "auto repair",
    "medical practice",
    "restaurant",
    "fitness studio",
    "accounting",
    "home cleaning",
)
OUTCOMES: tuple[str, ...] = ("answered", "voicemail", "transferred", "missed", "booked")
OUTCOME_WEIGHTS = np.array([0.45, 0.15, 0.13, 0.15, 0.12])
# Share of calls by UTC hour: business hours in the Americas and Europe.
_HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 9, 10, 11, 11, 10, 9, 8, 7, 5, 4, 3], dtype=np.float64
)
HOUR_WEIGHTS = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()

USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "aircalls-ios/4.12.0 (iPhone15,2; iOS 17.4)",
    "aircalls-android/4.11.3 (Pixel 7; Android 14)",
)
APP_PATHS: tuple[str, ...] = (
    "/dashboard",
    "/calls",
    "/calls/recent",
    "/calls/search",
    "/messages",
    "/messages/inbox",
    "/appointments",
    "/appointments/calendar",
    "/settings",
    "/settings/team",
    "/settings/billing",
    "/settings/integrations",
    "/reports/weekly",
    "/receptionist/script",
    "/receptionist/voice",
    "/api/v1/calls",
    "/api/v1/messages",
    "/login",
    "/logout",
    "/help",
)
_PATH_WEIGHTS = np.array([20, 15, 10, 4, 10, 6, 8, 6, 3, 2, 2, 2, 3, 2, 1, 8, 4, 6, 3, 1], dtype=np.float64)
PATH_WEIGHTS = _PATH_WEIGHTS / _PATH_WEIGHTS.sum()

CALL_INTENTS: Mapping[str, tuple[str, ...]] = {
    "answered": (
        "ask about your opening hours",
        "check the price of a consultation",
        "ask whether you take walk-ins",
    ),
    "voicemail": ("leave a message for the team", "ask for a call back about my invoice"),
    "transferred": ("speak to someone about my account", "talk to the manager about a complaint"),
    "missed": ("ask a quick question",),
    "booked": ("book an appointment for next week", "schedule a visit", "make a booking for Friday"),
}
CALL_CLOSINGS: Mapping[str, str] = {
    "answered": "Happy to help. Is there anything else I can do for you today?",
    "voicemail": "Nobody can take your call right now; please leave your message after the tone.",
    "transferred": "Let me transfer you to a colleague now, please hold.",
    "missed": "Sorry, we could not take your call.",
    "booked": "You are booked in. You will get a confirmation by text message.",
}
INBOUND_TEXTS: tuple[str, ...] = (
    "Can I move my appointment to Friday afternoon?",
    "Is there parking near the office?",
    "Running ten minutes late, sorry!",
    "Do you take card payments?",
    "What are your opening hours on Saturday?",
    "Thanks, see you tomorrow.",
    "Please cancel my booking for next week.",
    "Could you send me the invoice again?",
    "Is the price the same as last time?",
    "I lost the confirmation, what time was it again?",
)
OUTBOUND_TEXTS: tuple[str, ...] = (
    "your appointment is confirmed. Reply C to cancel.",
    "this is a reminder of your visit tomorrow.",
    "thanks for calling, here is the link to book online.",
    "we tried to reach you about your request, please call us back.",
    "your invoice is attached. Thank you for your business.",
    "your booking has been moved as requested.",
)
USER_TEXTS: tuple[str, ...] = (
    "How do I change the greeting of the receptionist?",
    "Can the assistant forward urgent calls to my mobile?",
    "Please add my colleague to our account.",
    "The weekly report did not arrive this Monday.",
    "How do I export last month's calls?",
    "Thanks, that fixed it.",
)
APPOINTMENT_NOTES: tuple[str, ...] = (
    "New client, prefers morning slots.",
    "Follow-up visit.",
    "Allergic to penicillin.",
    "Needs wheelchair access.",
    "Bring previous invoices.",
    "Second opinion requested.",
    "Asked for the same technician as last time.",
    "Pays by insurance.",
)
TICKET_SUBJECTS: tuple[str, ...] = (
    "Calls not forwarded",
    "Wrong business hours announced",
    "Invoice question",
    "Cannot log in",
    "Change the receptionist's voice",
    "Missing call recordings",
    "Update billing details",
    "Calendar sync stopped",
)
TICKET_BODIES: tuple[str, ...] = (
    "Since yesterday the assistant does not forward calls to our team.",
    "Callers are told we are closed on Saturdays but we are open until 2pm.",
    "I was charged twice this month, can you check?",
    "The password reset e-mail never arrives.",
    "We would like a warmer voice for the receptionist.",
    "Recordings from last week do not play in the dashboard.",
    "Please update our billing address on file.",
    "New appointments no longer appear in our calendar.",
)
CONTACT_NOTES: tuple[str, ...] = (
    "Interested in the Pro plan, call back after 3pm.",
    "Asked about HIPAA compliance.",
    "Prefers e-mail over phone.",
    "Referred by an existing client.",
    "Wants a demo for the whole team.",
)
ACTIVITY_TYPES: tuple[str, ...] = ("call", "email", "meeting")
ACTIVITY_SUMMARIES: tuple[str, ...] = (
    "Intro call",
    "Sent pricing",
    "Onboarding session",
    "Renewal discussion",
    "Follow-up on support ticket",
)
CARD_BRANDS: tuple[str, ...] = ("visa", "mastercard", "amex", "discover")

# Phone numbering per country: (national prefix, random digits after it). US numbers are built
# separately (area code, exchange 200-999 without 555 or N11, line). The prefixes avoid the
# fictional ranges the cast uses (555, London 20 7946, Athens 210).
US_AREA_CODES: tuple[str, ...] = (
    "201", "202", "206", "212", "213", "214", "303", "305", "312", "404", "415", "503",
    "512", "602", "617", "646", "702", "713", "718", "805", "818", "917", "949", "972",
)  # fmt: skip
PHONE_PLANS: Mapping[str, tuple[str, tuple[tuple[str, int], ...]]] = {
    "GB": ("44", (("208", 7), ("74", 8), ("75", 8), ("77", 8), ("78", 8), ("79", 8))),
    "DE": ("49", (("30", 8), ("151", 8), ("152", 8), ("157", 8), ("176", 8))),
    "FR": ("33", (("1", 8), ("4", 8), ("5", 8), ("6", 8), ("7", 8))),
    "ES": ("34", (("91", 7), ("93", 7), ("95", 7), ("6", 8))),
    "JP": ("81", (("3", 8), ("6", 8), ("90", 8), ("80", 8), ("70", 8))),
    "GR": ("30", (("211", 7), ("231", 7), ("69", 8))),
}
PHONE_REGION = "US"  # numbers typed without a country code are read as US (fixed: determinism)

_POOL_NAMES = 300
_POOL_ADDRESSES = 150
_POOL_JOBS = 60
_POOL_COMPANIES = 200

# Independent random streams, one per part: changing one part never shifts another.
_PART_POOLS, _PART_BUSINESSES, _PART_USERS, _PART_CALLERS, _PART_CALLS = 1, 2, 3, 4, 5
_PART_MESSAGES, _PART_APPOINTMENTS, _PART_TICKETS, _PART_PAYMENTS, _PART_PREFS = 6, 7, 8, 9, 10
_PART_USAGE, _PART_CAST, _PART_PROCESSORS, _PART_OBJECTS = 11, 12, 13, 14

Array = NDArray[Any]


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, part])


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class CallObjects:
    """The objects of one recorded call: a WAV recording and (optionally) a JSON transcript."""

    call_id: int
    business_id: int
    recording_bytes: int
    transcript: Mapping[str, Any] | None

    @property
    def recording_key(self) -> str:
        return recording_key(self.business_id, self.call_id)

    @property
    def transcript_key(self) -> str | None:
        return transcript_key(self.business_id, self.call_id) if self.transcript is not None else None


def recording_key(business_id: int, call_id: int) -> str:
    return f"recordings/{business_id}/{call_id}.wav"


def transcript_key(business_id: int, call_id: int) -> str:
    return f"transcripts/{business_id}/{call_id}.json"


@dataclass
class ReferenceData:
    """Everything the seeder writes, generated in memory."""

    scale: ScaleSpec
    seed: int
    tables: dict[str, pd.DataFrame]
    objects: list[CallObjects]
    payments_customers: list[dict[str, Any]] = field(default_factory=list)
    payments_charges: list[dict[str, Any]] = field(default_factory=list)
    crm_contacts: list[dict[str, Any]] = field(default_factory=list)

    def row_counts(self) -> dict[str, int]:
        return {name: len(self.tables[name]) for name in TABLE_ORDER}


# ------------------------------------------------------------------------------------------ people


@dataclass(frozen=True)
class _Pools:
    """Faker-drawn pools, concatenated over COUNTRIES: entry ``c * size + i`` is country ``c``."""

    given: Array
    family: Array
    given_ascii: Array
    family_ascii: Array
    line1: Array
    city: Array
    postal: Array
    jobs: Array
    companies: Array
    domains: list[list[str]]


def _ascii_handle(text: str) -> str:
    from faker.decode import unidecode

    cleaned = re.sub(r"[^A-Za-z]", "", unidecode(text))
    return cleaned[:1].upper() + cleaned[1:].lower() if cleaned else "Guest"


def _draw_pools(seed: int) -> _Pools:
    from faker import Faker

    given: list[str] = []
    family: list[str] = []
    given_ascii: list[str] = []
    family_ascii: list[str] = []
    line1: list[str] = []
    city: list[str] = []
    postal: list[str] = []
    jobs: list[str] = []
    companies: list[str] = []
    domains: list[list[str]] = []
    for index, country in enumerate(COUNTRIES):
        fake = Faker(LOCALES[country])
        fake.seed_instance(seed * 100 + _PART_POOLS * 10 + index)
        for _ in range(_POOL_NAMES):
            if country == "JP":
                g_native, _kana, g_roman = fake.first_name_pair()
                f_native, _kana, f_roman = fake.last_name_pair()
                given.append(g_native)
                family.append(f_native)
                given_ascii.append(_ascii_handle(g_roman))
                family_ascii.append(_ascii_handle(f_roman))
            else:
                g, f = fake.first_name(), fake.last_name()
                given.append(g)
                family.append(f)
                given_ascii.append(_ascii_handle(g))
                family_ascii.append(_ascii_handle(f))
        for _ in range(_POOL_ADDRESSES):
            if country == "JP":
                line1.append(f"{fake.town()}{fake.chome()}{fake.ban()}{fake.gou()}")
                city.append(f"{fake.prefecture()}{fake.city()}")
                postal.append(fake.zipcode())
            else:
                line1.append(fake.street_address().replace("\n", " "))
                city.append(fake.city())
                postal.append(fake.postcode())
        jobs.extend(fake.job() for _ in range(_POOL_JOBS))
        companies.extend(fake.company() for _ in range(_POOL_COMPANIES))
        domains.append(sorted({fake.free_email_domain() for _ in range(40)}))

    def arr(values: list[str]) -> Array:
        return np.array(values, dtype=object)

    return _Pools(
        given=arr(given),
        family=arr(family),
        given_ascii=arr(given_ascii),
        family_ascii=arr(family_ascii),
        line1=arr(line1),
        city=arr(city),
        postal=arr(postal),
        jobs=arr(jobs),
        companies=arr(companies),
        domains=domains,
    )


@dataclass(frozen=True)
class _People:
    """Names and e-mail parts of a batch of people (parallel arrays)."""

    country: Array  # index into COUNTRIES (the person's locale)
    given: Array
    family: Array
    full_name: Array
    given_ascii: Array
    family_ascii: Array


def _draw_people(rng: np.random.Generator, pools: _Pools, home_country: Array) -> _People:
    """People living mostly in ``home_country`` (indices into COUNTRIES): 75% take its locale."""
    n = len(home_country)
    other = rng.integers(0, len(COUNTRIES), n)
    country = np.where(rng.random(n) < 0.75, home_country, other)
    gi = country * _POOL_NAMES + rng.integers(0, _POOL_NAMES, n)
    fi = country * _POOL_NAMES + rng.integers(0, _POOL_NAMES, n)
    given, family = pools.given[gi], pools.family[fi]
    japanese = country == COUNTRIES.index("JP")
    # Japanese names are written family name first.
    full_name = np.where(japanese, family + " " + given, given + " " + family)
    return _People(country, given, family, full_name, pools.given_ascii[gi], pools.family_ascii[fi])


_EMAIL_PATTERNS = 5
_CASE_WEIGHTS = np.array([0.55, 0.25, 0.12, 0.05, 0.03])


def _emails(rng: np.random.Generator, pools: _Pools, people: _People) -> list[str]:
    """Addresses built from the people's names, in the case people type them (mostly lower case,
    some ``Maria.Lopez@Example.com``, a few in capitals). Not yet unique."""
    n = len(people.country)
    pattern = rng.integers(0, _EMAIL_PATTERNS, n)
    style = rng.choice(len(_CASE_WEIGHTS), size=n, p=_CASE_WEIGHTS)
    year = rng.integers(60, 106, n) % 100
    domain_pick = rng.integers(0, 1 << 30, n)
    out: list[str] = []
    for i in range(n):
        g, f = str(people.given_ascii[i]), str(people.family_ascii[i])
        p = int(pattern[i])
        if p == 0:
            local = f"{g}.{f}"
        elif p == 1:
            local = f"{g}{f}"
        elif p == 2:
            local = f"{g[0]}.{f}"
        elif p == 3:
            local = f"{g}_{f}"
        else:
            local = f"{g}.{f}{int(year[i]):02d}"
        domains = pools.domains[int(people.country[i])]
        domain = domains[int(domain_pick[i]) % len(domains)]
        s = int(style[i])
        if s == 0:
            out.append(f"{local.lower()}@{domain}")
        elif s == 1:
            out.append(f"{local}@{domain}")
        elif s == 2:
            out.append(f"{local}@{domain.capitalize()}")
        elif s == 3:
            out.append(f"{local.upper()}@{domain}")
        else:
            out.append(f"{local}@{domain}".upper())
    return out


def _make_unique(emails: list[str], offset: int = 0) -> list[str]:
    """Unique on lower(email): later duplicates get ``.<n>`` appended to the local part (no
    generated local part ends in a dot and digits, so the result cannot collide)."""
    seen: set[str] = set()
    out: list[str] = []
    for i, email in enumerate(emails):
        key = email.lower()
        if key in seen:
            local, _, domain = email.partition("@")
            email = f"{local}.{offset + i + 1}@{domain}"
            key = email.lower()
        seen.add(key)
        out.append(email)
    return out


# ------------------------------------------------------------------------------------------ phones


def _national_numbers(rng: np.random.Generator, country: Array) -> tuple[Array, Array]:
    """(country calling code, national significant number) strings for people of ``country``."""
    n = len(country)
    cc = np.empty(n, dtype=object)
    nsn = np.empty(n, dtype=object)
    us = country == COUNTRIES.index("US")
    k = int(us.sum())
    if k:
        area = np.array(US_AREA_CODES, dtype=object)[rng.integers(0, len(US_AREA_CODES), k)]
        exchange = rng.integers(200, 1000, k)
        exchange = np.where(exchange == 555, 556, exchange)  # 555 is the cast's fictional range
        exchange = np.where(exchange % 100 == 11, exchange + 1, exchange)  # N11 are service codes
        line = rng.integers(0, 10_000, k)
        cc[us] = "1"
        nsn[us] = (
            area
            + np.char.zfill(exchange.astype(str), 3).astype(object)
            + np.char.zfill(line.astype(str), 4).astype(object)
        )
    for code, (calling_code, plans) in PHONE_PLANS.items():
        mask = country == COUNTRIES.index(code)
        k = int(mask.sum())
        if not k:
            continue
        plan = rng.integers(0, len(plans), k)
        prefixes = np.array([p for p, _ in plans], dtype=object)[plan]
        widths = np.array([w for _, w in plans])[plan]
        digits = rng.integers(0, 10**8, k) % (10**widths)
        rest = np.array(
            [str(int(d)).zfill(int(w)) for d, w in zip(digits, widths, strict=True)], dtype=object
        )
        cc[mask] = calling_code
        nsn[mask] = prefixes + rest
    return cc, nsn


def _typed_phones(rng: np.random.Generator, cc: Array, nsn: Array) -> tuple[list[str], list[str]]:
    """Phones as people type them (``(415) 555-0132``, ``+1 415-555-0132``, ``415.555.0132``,
    ``+44 20 7946 0958``...) and their E.164 form computed by ``phonenumbers`` (region US)."""
    import phonenumbers

    n = len(cc)
    style = rng.integers(0, 8, n)
    typed: list[str] = []
    e164: list[str] = []
    for i in range(n):
        c, d, s = str(cc[i]), str(nsn[i]), int(style[i])
        if c == "1":
            a, b, x = d[:3], d[3:6], d[6:]
            text = (
                f"({a}) {b}-{x}",
                f"+1 {a}-{b}-{x}",
                f"{a}.{b}.{x}",
                f"{a}-{b}-{x}",
                f"{a}{b}{x}",
                f"+1 ({a}) {b}-{x}",
                f"+1{a}{b}{x}",
                f"1-{a}-{b}-{x}",
            )[s]
        else:
            number = phonenumbers.parse(f"+{c}{d}", None)
            international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            text = (international, f"+{c}{d}", international.replace(" ", "-"))[s % 3]
        parsed = phonenumbers.parse(text, PHONE_REGION)
        if not phonenumbers.is_possible_number(parsed):  # a bug in the plans above, not bad luck
            raise AssertionError(f"generated an impossible phone number for country code {c}")
        normalised = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if normalised != f"+{c}{d}":
            raise AssertionError(f"phone formatting does not round-trip for country code {c}")
        typed.append(text)
        e164.append(normalised)
    return typed, e164


# ------------------------------------------------------------------------------------------ helpers


def _ts(values: Array) -> Array:
    """Epoch seconds -> datetime64[s] (naive, meaning UTC)."""
    return np.asarray(values, dtype=np.int64).astype("datetime64[s]")


def _keep(keep: Array, values: Array) -> Array:
    """``values`` as an object array with None (NULL) where ``keep`` is False."""
    out = np.array(values, dtype=object)
    out[~np.asarray(keep, dtype=bool)] = None
    return out


def _nullable_int(values: Array, mask: Array | None = None) -> pd.arrays.IntegerArray:
    """Int64 extension array, NULL where ``mask`` is False (or values < 0 without a mask)."""
    values = np.asarray(values, dtype=np.int64)
    null = (values < 0) if mask is None else ~np.asarray(mask, dtype=bool)
    return pd.arrays.IntegerArray(np.where(null, 0, values), null)


def _pooled(codes: Array, pool: Sequence[str] | Array) -> pd.Categorical:
    """A categorical from codes into ``pool`` (code -1 is NULL); the pool may repeat values."""
    uniques, remap = np.unique(np.asarray(pool, dtype=object).astype(str), return_inverse=True)
    codes = np.asarray(codes, dtype=np.int64)
    mapped = np.where(codes < 0, -1, remap[np.clip(codes, 0, None)])
    return pd.Categorical.from_codes(mapped, categories=pd.Index(uniques.astype(object), dtype=object))


def _group_index(keys: Array, n_groups: int) -> tuple[Array, Array, Array]:
    """For rows keyed 0..n_groups-1: (row order sorted by key, start of each group, its size)."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return order, starts, counts


def _pick_in_group(rng: np.random.Generator, groups: tuple[Array, Array, Array], keys: Array) -> Array:
    """A uniformly random member (row index) of each row's group; -1 for empty groups."""
    order, starts, counts = groups
    size = counts[keys]
    offset = np.floor(rng.random(len(keys)) * np.maximum(size, 1)).astype(np.int64)
    picked = (
        order[np.minimum(starts[keys] + offset, len(order) - 1)] if len(order) else np.zeros(len(keys), int)
    )
    return np.where(size > 0, picked, -1)


def _random_tokens(rng: np.random.Generator, n: int, length: int, alphabet: str) -> Array:
    """``n`` random strings of ``length`` characters from ``alphabet`` (vectorised)."""
    chars = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    codes = chars[rng.integers(0, len(chars), (n, length))]
    return np.array([b.decode("ascii") for b in codes.view(f"S{length}").ravel()], dtype=object)


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _iso(ts: int) -> str:
    """Epoch seconds as ``2024-05-01T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _month_starts(first_month: Array, n_months: Array) -> tuple[Array, Array]:
    """For groups starting at month index ``first_month`` (months since 1970) with ``n_months``
    months each: (group of each row, month start in epoch seconds)."""
    group = np.repeat(np.arange(len(first_month)), n_months)
    within = np.arange(len(group)) - np.repeat(np.cumsum(n_months) - n_months, n_months)
    months = (first_month[group] + within).astype("datetime64[M]")
    return group, months.astype("datetime64[s]").astype(np.int64)


def _month_index(epoch_s: Array) -> Array:
    return (
        np.asarray(epoch_s, dtype=np.int64).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    )


# ------------------------------------------------------------------------------------------ bulk


@dataclass
class _Bulk:
    """Bulk tables plus the per-row context the cast and the objects need."""

    tables: dict[str, pd.DataFrame]
    business_names: Array
    user_given: Array  # per user row (id = index + 1)
    user_family: Array
    billing_user: Array  # per business index, user index or -1
    caller_given: Array  # per caller row (id = index + 1), None when nameless
    caller_family: Array
    caller_name: Array
    caller_phone: Array
    sample_calls: Array  # call row indices with objects


def _businesses(seed: int, spec: ScaleSpec, pools: _Pools) -> tuple[pd.DataFrame, Array, Array]:
    rng = _rng(seed, _PART_BUSINESSES)
    n = spec.businesses
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS)
    country[: len(CAST_BUSINESS_IDS)] = COUNTRIES.index("US")  # the cast's businesses are American
    company = pools.companies[country * _POOL_COMPANIES + rng.integers(0, _POOL_COMPANIES, n)]
    industry = np.array(INDUSTRIES, dtype=object)[rng.integers(0, len(INDUSTRIES), n)]
    created = np.sort(rng.integers(BUSINESS_CREATED_FROM, BUSINESS_CREATED_TO, n))
    frame = pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "name": company,
            "industry": industry,
            "country": np.array(COUNTRIES, dtype=object)[country],
            "created_at": _ts(created),
        }
    )
    return frame, country, created


def _generate_bulk(seed: int, spec: ScaleSpec, pools: _Pools) -> _Bulk:
    if spec.users < spec.businesses or spec.callers > spec.calls:
        raise ValueError("a scale needs at least one user per business and one call per caller")
    businesses, b_country, b_created = _businesses(seed, spec, pools)
    n_b = spec.businesses
    country_codes = np.array(COUNTRIES, dtype=object)

    # ---- users: every business has one (its first, the billing owner), the rest spread unevenly
    rng = _rng(seed, _PART_USERS)
    n_u = spec.users
    b_weight = rng.pareto(1.2, n_b) + 1.0
    u_business = np.concatenate(
        [np.arange(n_b), rng.choice(n_b, size=n_u - n_b, p=b_weight / b_weight.sum())]
    ).astype(np.int64)
    is_owner = np.zeros(n_u, dtype=bool)
    is_owner[:n_b] = True
    span = np.maximum(ACTIVITY_END - 180 * DAY - b_created[u_business], DAY)
    created = np.where(
        is_owner,
        b_created[u_business] + rng.integers(0, 3 * DAY, n_u),
        b_created[u_business] + (rng.random(n_u) ** 1.5 * span).astype(np.int64),
    )
    order = np.argsort(created, kind="stable")  # ids follow sign-up time
    u_business, created, is_owner = u_business[order], created[order], is_owner[order]
    people = _draw_people(rng, pools, b_country[u_business])
    emails = _emails(rng, pools, people)
    phone_country = np.where(rng.random(n_u) < 0.85, people.country, b_country[u_business])
    cc, nsn = _national_numbers(rng, phone_country)
    typed, e164 = _typed_phones(rng, cc, nsn)
    has_phone = rng.random(n_u) >= 0.05
    typed_or_null: list[str | None] = [t if keep else None for t, keep in zip(typed, has_phone, strict=True)]
    e164_or_null = [e if keep else None for e, keep in zip(e164, has_phone, strict=True)]
    job = _keep(
        rng.random(n_u) < 0.85, pools.jobs[people.country * _POOL_JOBS + rng.integers(0, _POOL_JOBS, n_u)]
    )
    addr = people.country * _POOL_ADDRESSES + rng.integers(0, _POOL_ADDRESSES, n_u)
    address = (
        pools.line1[addr]
        + ", "
        + pools.postal[addr]
        + " "
        + pools.city[addr]
        + ", "
        + country_codes[people.country]
    )
    address = _keep(is_owner | (rng.random(n_u) < 0.6), address)
    login_from = np.maximum(created, _epoch("2025-06-01T00:00:00"))
    last_login = login_from + (rng.random(n_u) * np.maximum(ACTIVITY_END - login_from, 1)).astype(np.int64)
    has_login = rng.random(n_u) < 0.9
    billing_user = np.full(n_b, -1, dtype=np.int64)
    owners = np.flatnonzero(is_owner)
    billing_user[u_business[owners]] = owners
    # 10% of businesses pay by invoice: their payments name no user.
    billing_user[rng.random(n_b) < 0.10] = -1

    # ---- callers: one row per (business, phone); some phones are shared (households) or call
    # several businesses
    rng = _rng(seed, _PART_CALLERS)
    n_c = spec.callers
    b_popularity = rng.pareto(1.0, n_b) + 1.0
    # call_handler's business is among the busiest (so they handle many calls), not a giant
    b_popularity[BUSINESS_A - 1] = max(b_popularity[BUSINESS_A - 1], float(np.quantile(b_popularity, 0.95)))
    c_business = rng.choice(n_b, size=n_c, p=b_popularity / b_popularity.sum()).astype(np.int64)
    n_phones = max(1, int(n_c * 0.96))
    phone_idx = np.concatenate([np.arange(n_phones), rng.integers(0, n_phones, n_c - n_phones)])
    rng.shuffle(phone_idx)
    # A phone's country is that of the first business it called (85%), else any country.
    _, first_use = np.unique(phone_idx, return_index=True)
    phone_country = np.where(
        rng.random(n_phones) < 0.85,
        b_country[c_business[first_use]],
        rng.integers(0, len(COUNTRIES), n_phones),
    )
    p_cc, p_nsn = _national_numbers(rng, phone_country)
    phone_pool = "+" + p_cc + p_nsn
    c_phone = phone_pool[phone_idx]
    c_people = _draw_people(rng, pools, phone_country[phone_idx])
    named = rng.random(n_c) < 0.75
    c_name = _keep(named, c_people.full_name)
    with_email = named & (rng.random(n_c) < 0.08)
    c_email = np.full(n_c, None, dtype=object)

    # ---- calls: every caller called at least once; a few call a lot
    rng = _rng(seed, _PART_CALLS)
    n_k = spec.calls
    c_weight = rng.pareto(1.5, n_c) + 1.0
    k_caller = np.concatenate(
        [np.arange(n_c), rng.choice(n_c, size=n_k - n_c, p=c_weight / c_weight.sum())]
    ).astype(np.int64)
    day = rng.integers(0, (ACTIVITY_END - ACTIVITY_START) // DAY, n_k)
    started = (
        ACTIVITY_START
        + day * DAY
        + rng.choice(24, size=n_k, p=HOUR_WEIGHTS) * 3600
        + rng.integers(0, 3600, n_k)
    )
    order = np.argsort(started, kind="stable")  # ids follow time
    k_caller, started = k_caller[order], started[order]
    outcome = rng.choice(len(OUTCOMES), size=n_k, p=OUTCOME_WEIGHTS)
    base = np.exp(rng.normal(np.log(150.0), 0.7, n_k))
    duration = np.where(
        outcome == OUTCOMES.index("missed"),
        0,
        np.where(outcome == OUTCOMES.index("voicemail"), rng.integers(8, 90, n_k), np.clip(base, 15, 3600)),
    ).astype(np.int64)
    # Callers are numbered in the order they were first seen (their first call).
    first_call = np.full(n_c, np.iinfo(np.int64).max)
    np.minimum.at(first_call, k_caller, started)
    caller_order = np.argsort(first_call, kind="stable")
    caller_rank = np.empty(n_c, dtype=np.int64)
    caller_rank[caller_order] = np.arange(n_c)
    # re-index every per-caller array by caller id - 1
    c_business, c_phone, c_name = c_business[caller_order], c_phone[caller_order], c_name[caller_order]
    with_email = with_email[caller_order]
    c_given, c_family = c_people.given[caller_order], c_people.family[caller_order]
    c_ascii_people = _People(
        c_people.country[caller_order],
        c_given,
        c_family,
        c_people.full_name[caller_order],
        c_people.given_ascii[caller_order],
        c_people.family_ascii[caller_order],
    )
    first_seen = first_call[caller_order]
    k_caller = caller_rank[k_caller]
    k_business = c_business[k_caller]
    # handled by a user of the same business for most answered, transferred and booked calls
    user_groups = _group_index(u_business, n_b)
    human = np.isin(outcome, [OUTCOMES.index(o) for o in ("answered", "transferred", "booked")])
    handler = _pick_in_group(rng, user_groups, k_business)
    handled = human & (rng.random(n_k) < 0.6) & (handler >= 0)
    handled_by = np.where(handled, handler + 1, -1)
    # call_handler (cast) handled most of business A's human-handled calls
    a_calls = human & (k_business == BUSINESS_A - 1) & (rng.random(n_k) * 100 < CALL_HANDLER_SHARE_PERCENT)
    handled_by = np.where(a_calls, CAST["call_handler"].user_id or 0, handled_by)
    # objects for a sample of calls that were not missed
    candidates = np.flatnonzero(outcome != OUTCOMES.index("missed"))
    sample = np.sort(rng.choice(candidates, size=min(spec.object_sample, len(candidates)), replace=False))

    # caller e-mails (a few callers leave one, e.g. when booking); unique together with users'
    c_email_list = _emails(rng, pools, _subset_people(c_ascii_people, with_email))
    all_emails = _make_unique(emails + c_email_list)
    user_emails, caller_emails = all_emails[:n_u], all_emails[n_u:]
    c_email[with_email] = np.array(caller_emails, dtype=object)

    users = pd.DataFrame(
        {
            "id": np.arange(1, n_u + 1, dtype=np.int64),
            "business_id": u_business + 1,
            "full_name": people.full_name,
            "email": np.array(user_emails, dtype=object),
            "phone": np.array(typed_or_null, dtype=object),
            "phone_e164": np.array(e164_or_null, dtype=object),
            "job_title": job,
            "billing_address": address,
            "created_at": _ts(created),
            "last_login_at": pd.array(
                np.where(has_login, _ts(last_login), np.datetime64("NaT")), dtype="datetime64[s]"
            ),
        }
    )
    callers = pd.DataFrame(
        {
            "id": np.arange(1, n_c + 1, dtype=np.int64),
            "business_id": c_business + 1,
            "phone": c_phone,
            "full_name": c_name,
            "email": c_email,
            "first_seen_at": _ts(first_seen),
        }
    )
    calls = pd.DataFrame(
        {
            "id": np.arange(1, n_k + 1, dtype=np.int64),
            "business_id": k_business + 1,
            "caller_id": k_caller + 1,
            "handled_by_user_id": _nullable_int(handled_by),
            "started_at": _ts(started),
            "duration_s": duration,
            "outcome": _pooled(outcome, OUTCOMES),
            "recording_key": np.full(n_k, None, dtype=object),
            "transcript": np.full(n_k, None, dtype=object),
        }
    )

    nameless = np.asarray(pd.isna(c_name), dtype=bool)
    tables: dict[str, pd.DataFrame] = {
        "businesses": businesses,
        "users": users,
        "callers": callers,
        "calls": calls,
    }
    tables["messages"] = _messages(
        seed, spec, u_business, created, c_business, first_seen, _keep(~nameless, c_given), c_phone
    )
    tables["appointments"] = _appointments(seed, calls, outcome, started, duration)
    tables["support_tickets"] = _tickets(seed, spec, created, typed_or_null, user_emails)
    tables["payments"] = _payments(seed, b_country, b_created, billing_user, address)
    tables["marketing_preferences"] = _preferences(seed, created)
    tables["usage_events"] = _usage(seed, spec, created, b_country[u_business])
    return _Bulk(
        tables=tables,
        business_names=businesses["name"].to_numpy(dtype=object),
        user_given=people.given,
        user_family=people.family,
        billing_user=billing_user,
        caller_given=_keep(~nameless, c_given),
        caller_family=_keep(~nameless, c_family),
        caller_name=c_name,
        caller_phone=c_phone,
        sample_calls=sample,
    )


def _subset_people(people: _People, mask: Array) -> _People:
    return _People(
        people.country[mask],
        people.given[mask],
        people.family[mask],
        people.full_name[mask],
        people.given_ascii[mask],
        people.family_ascii[mask],
    )


def _messages(
    seed: int,
    spec: ScaleSpec,
    u_business: Array,
    u_created: Array,
    c_business: Array,
    c_first_seen: Array,
    c_given: Array,
    c_phone: Array,
) -> pd.DataFrame:
    rng = _rng(seed, _PART_MESSAGES)
    n = spec.messages
    n_c, n_u = len(c_business), len(u_business)
    with_caller = rng.random(n) < 0.7
    caller = rng.integers(0, n_c, n)
    user = rng.integers(0, n_u, n)
    business = np.where(with_caller, c_business[caller], u_business[user])
    channel = np.where(with_caller, rng.choice(3, size=n, p=[0.6, 0.2, 0.2]), rng.choice([1, 2], size=n))
    outbound = rng.random(n) < 0.5
    # outbound messages to callers are sent by a user of the business half of the time
    groups = _group_index(u_business, int(max(u_business.max(), c_business.max())) + 1)
    sender = _pick_in_group(rng, groups, business)
    user_id = np.where(
        with_caller,
        np.where(outbound & (rng.random(n) < 0.5) & (sender >= 0), sender + 1, -1),
        user + 1,
    )
    lo = np.where(
        with_caller,
        np.maximum(c_first_seen[caller], ACTIVITY_START),
        np.maximum(u_created[user], ACTIVITY_START),
    )
    lo = np.minimum(lo, ACTIVITY_END - DAY)
    sent = lo + (rng.random(n) * (ACTIVITY_END - lo)).astype(np.int64)
    order = np.argsort(sent, kind="stable")
    inbound_text = np.array(INBOUND_TEXTS, dtype=object)[rng.integers(0, len(INBOUND_TEXTS), n)]
    call_back = rng.random(n) < 0.15
    inbound_text = np.where(call_back, "Please call me back on " + c_phone[caller] + ".", inbound_text)
    greeting = np.where(pd.isna(c_given[caller]), "Hi there", "Hi " + c_given[caller].astype(str))
    outbound_text = (
        greeting + ", " + np.array(OUTBOUND_TEXTS, dtype=object)[rng.integers(0, len(OUTBOUND_TEXTS), n)]
    )
    user_text = np.array(USER_TEXTS, dtype=object)[rng.integers(0, len(USER_TEXTS), n)]
    body = np.where(with_caller, np.where(outbound, outbound_text, inbound_text), user_text)
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "business_id": (business + 1)[order],
            "caller_id": _nullable_int(np.where(with_caller, caller + 1, -1)[order]),
            "user_id": _nullable_int(user_id[order]),
            "channel": _pooled(channel[order], ("sms", "email", "chat")),
            "direction": _pooled(outbound[order].astype(np.int64), ("inbound", "outbound")),
            "body": body[order],
            "sent_at": _ts(sent[order]),
        }
    )


def _appointments(
    seed: int, calls: pd.DataFrame, outcome: Array, started: Array, duration: Array
) -> pd.DataFrame:
    """One appointment per booked call, created when the call ended."""
    rng = _rng(seed, _PART_APPOINTMENTS)
    booked = np.flatnonzero(outcome == OUTCOMES.index("booked"))
    n = len(booked)
    created = started[booked] + duration[booked]
    day_start = (created // DAY + rng.integers(1, 22, n)) * DAY
    scheduled = day_start + rng.integers(8 * 2, 18 * 2, n) * 1800
    notes = _keep(
        rng.random(n) < 0.6,
        np.array(APPOINTMENT_NOTES, dtype=object)[rng.integers(0, len(APPOINTMENT_NOTES), n)],
    )
    event = _keep(rng.random(n) < 0.9, _random_tokens(rng, n, 26, "0123456789abcdefghijklmnopqrstuv"))
    order = np.argsort(created, kind="stable")
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "business_id": calls["business_id"].to_numpy()[booked][order],
            "caller_id": calls["caller_id"].to_numpy()[booked][order],
            "scheduled_for": _ts(scheduled[order]),
            "notes": notes[order],
            "calendar_event_id": event[order],
            "created_at": _ts(created[order]),
        }
    )


def _tickets(
    seed: int, spec: ScaleSpec, u_created: Array, u_phone: list[str | None], u_email: list[str]
) -> pd.DataFrame:
    rng = _rng(seed, _PART_TICKETS)
    n = spec.support_tickets
    user = rng.integers(0, len(u_created), n)
    lo = np.minimum(np.maximum(u_created[user], ACTIVITY_START - 365 * DAY), ACTIVITY_END - DAY)
    created = lo + (rng.random(n) * (ACTIVITY_END - lo)).astype(np.int64)
    order = np.argsort(created, kind="stable")
    user, created = user[order], created[order]
    topic = rng.integers(0, len(TICKET_SUBJECTS), n)
    body = np.array(TICKET_BODIES, dtype=object)[topic]
    phones = np.array(u_phone, dtype=object)[user]
    emails = np.array(u_email, dtype=object)[user]
    mention = rng.random(n)
    body = np.where(
        (mention < 0.25) & pd.notna(phones), body + " You can reach me on " + phones.astype(str) + ".", body
    )
    body = np.where(mention > 0.85, body + " Please reply to " + emails + ".", body)
    recent = created > ACTIVITY_END - 30 * DAY
    status = np.where(
        recent, rng.choice(4, size=n, p=[0.5, 0.3, 0.1, 0.1]), rng.choice([2, 3], size=n, p=[0.3, 0.7])
    )
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "user_id": user + 1,
            "subject": _pooled(topic, TICKET_SUBJECTS),
            "body": body,
            "status": _pooled(status, ("open", "pending", "solved", "closed")),
            "created_at": _ts(created),
        }
    )


def _payments(
    seed: int, b_country: Array, b_created: Array, billing_user: Array, u_address: Array
) -> pd.DataFrame:
    """A monthly subscription charge per business from the month after sign-up (at the earliest
    2018-12) to 2026-11: eight years, so the 7-year tax retention is testable."""
    rng = _rng(seed, _PART_PAYMENTS)
    n_b = len(b_country)
    first = np.maximum(_month_index(b_created) + 1, _month_index(np.array([PAYMENTS_START]))[0])
    last = _month_index(np.array([ACTIVITY_END - 1]))[0]
    n_months = np.maximum(last - first + 1, 0)
    business, month_start = _month_starts(first, n_months)
    n = len(business)
    pay_day = rng.integers(0, 28, n_b)
    pay_hour = rng.integers(0, 24, n_b)
    paid = month_start + pay_day[business] * DAY + pay_hour[business] * 3600 + rng.integers(0, 3600, n)
    currency = np.array([CURRENCIES[c] for c in COUNTRIES], dtype=object)[b_country][business]
    tier = rng.integers(0, 4, n_b)[business]
    price = np.array([PLAN_PRICES[c][t] for c, t in zip(currency, tier, strict=True)], dtype=np.int64)
    raised = paid >= _epoch("2024-07-01T00:00:00")  # a price rise mid-2024
    amount = np.where(raised, (price * 11 // 10 // 100) * 100, price)
    card_a = rng.integers(0, 10_000, n_b)
    card_b = rng.integers(0, 10_000, n_b)
    switch = first + (rng.random(n_b) * np.maximum(n_months, 1)).astype(np.int64)
    month_of_row = _month_index(paid)
    card = np.where(month_of_row < switch[business], card_a[business], card_b[business])
    user = billing_user[business]
    address = _keep(user >= 0, u_address[np.maximum(user, 0)])
    charge_ids = "ch_" + _random_tokens(rng, n, 24, _BASE62)
    order = np.argsort(paid, kind="stable")
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "business_id": (business + 1)[order],
            "user_id": _nullable_int(np.where(user >= 0, user + 1, -1)[order]),
            "amount_cents": amount[order],
            "currency": _pooled(np.unique(currency, return_inverse=True)[1][order], np.unique(currency)),
            "card_last4": np.char.zfill(card[order].astype(str), 4).astype(object),
            "billing_address": address[order],
            "processor_charge_id": charge_ids[order],
            "paid_at": _ts(paid[order]),
        }
    )


def _preferences(seed: int, u_created: Array) -> pd.DataFrame:
    rng = _rng(seed, _PART_PREFS)
    n_u = len(u_created)
    chosen = np.flatnonzero(rng.random(n_u) < 0.9)
    lo = u_created[chosen]
    updated = lo + (rng.random(len(chosen)) * np.maximum(ACTIVITY_END - lo, 1)).astype(np.int64)
    return pd.DataFrame(
        {
            "user_id": chosen + 1,
            "email_opt_in": rng.random(len(chosen)) < 0.4,
            "sms_opt_in": rng.random(len(chosen)) < 0.2,
            "updated_at": _ts(updated),
        }
    )


def _ip_strings(rng: np.random.Generator, n: int) -> Array:
    """``n`` public-looking addresses: 90% IPv4, 10% IPv6 (as ``inet`` text)."""
    v4 = (
        rng.integers(1, 224, n).astype(str).astype(object)
        + "."
        + rng.integers(0, 256, n).astype(str).astype(object)
        + "."
        + rng.integers(0, 256, n).astype(str).astype(object)
        + "."
        + rng.integers(1, 255, n).astype(str).astype(object)
    )
    groups = rng.integers(0, 1 << 16, (n, 4))
    v6 = np.array(["2a02:{:x}:{:x}:{:x}::{:x}".format(*g) for g in groups.tolist()], dtype=object)
    return np.where(rng.random(n) < 0.9, v4, v6)


def _usage(seed: int, spec: ScaleSpec, u_created: Array, u_country: Array) -> pd.DataFrame:
    """Web and app events: by far the largest table. Each user has two addresses, two devices and
    two user agents; 5% of events are anonymous (no user, sometimes no device)."""
    rng = _rng(seed, _PART_USAGE)
    n, n_u = spec.usage_events, len(u_created)
    anon_pool = 2_000
    user_ips = _ip_strings(rng, 2 * n_u)
    anon_ips = _ip_strings(rng, anon_pool)
    user_devices = "d-" + _random_tokens(rng, 2 * n_u, 16, "0123456789abcdef")
    anon_devices = "d-" + _random_tokens(rng, anon_pool, 16, "0123456789abcdef")
    user_agent_of = rng.integers(0, len(USER_AGENTS), 2 * n_u)

    weight = rng.pareto(1.3, n_u) + 1.0
    user = rng.choice(n_u, size=n, p=weight / weight.sum())
    anonymous = rng.random(n) < 0.05
    lo = np.minimum(np.maximum(u_created[user], ACTIVITY_START), ACTIVITY_END - DAY)
    lo = np.where(anonymous, ACTIVITY_START, lo)
    occurred = lo + (rng.random(n) * (ACTIVITY_END - lo)).astype(np.int64)
    slot = rng.integers(0, 2, n)
    anon_slot = rng.integers(0, anon_pool, n)
    ip_code = np.where(anonymous, 2 * n_u + anon_slot, 2 * user + slot)
    device_code = np.where(anonymous, np.where(rng.random(n) < 0.5, 2 * n_u + anon_slot, -1), 2 * user + slot)
    agent = np.where(anonymous, rng.integers(0, len(USER_AGENTS), n), user_agent_of[2 * user + slot])
    path = rng.choice(len(APP_PATHS), size=n, p=PATH_WEIGHTS)
    geo = np.where(
        anonymous | (rng.random(n) < 0.1),
        rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS),
        u_country[user],
    )
    order = np.argsort(occurred, kind="stable")
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "user_id": _nullable_int(np.where(anonymous, -1, user + 1)[order]),
            "occurred_at": _ts(occurred[order]),
            "ip_address": _pooled(ip_code[order], np.concatenate([user_ips, anon_ips])),
            "user_agent": _pooled(agent[order], USER_AGENTS),
            "device_id": _pooled(device_code[order], np.concatenate([user_devices, anon_devices])),
            "path": _pooled(path[order], APP_PATHS),
            "geo_country": _pooled(geo[order], COUNTRIES),
        }
    )


# ------------------------------------------------------------------------------------------ transcripts


def _spoken_phone(e164: str) -> str:
    """The number as a receptionist reads it back (international format)."""
    if e164.startswith("+1") and len(e164) == 12:  # NANP: cheap, and most callers
        return f"+1 {e164[2:5]}-{e164[5:8]}-{e164[8:]}"
    import phonenumbers

    return str(
        phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL
        )
    )


def build_transcript(
    *,
    call_id: int,
    business_id: int,
    business_name: str,
    caller_phone: str,
    caller_name: str | None,
    started_at: int,
    duration_s: int,
    outcome: str,
    intent_pick: int,
) -> dict[str, Any]:
    """The transcript document of one call (what ``transcripts/{business}/{call}.json`` holds):
    the caller's phone and name and the utterances, alternating receptionist and caller."""
    intents = CALL_INTENTS[outcome]
    intent = intents[intent_pick % len(intents)]
    intro = f"Hi, this is {caller_name}." if caller_name else "Hi there."
    lines = [
        (
            "receptionist",
            f"Thank you for calling {business_name}, this is the virtual receptionist. How can I help?",
        ),
        ("caller", f"{intro} I'd like to {intent}."),
        ("receptionist", f"Of course. Is {_spoken_phone(caller_phone)} the best number to reach you?"),
        ("caller", "Yes, that's right."),
        ("receptionist", CALL_CLOSINGS[outcome]),
    ]
    step = max(duration_s, len(lines)) / len(lines)
    return {
        "call_id": call_id,
        "business_id": business_id,
        "started_at": _iso(started_at),
        "language": "en",
        "caller": {"phone": caller_phone, "name": caller_name},
        "utterances": [
            {"speaker": speaker, "start_s": round(i * step, 1), "text": text}
            for i, (speaker, text) in enumerate(lines)
        ],
    }


def transcript_text(document: Mapping[str, Any]) -> str:
    """The plain text the ``calls.transcript`` column holds for a transcript document."""
    return "\n".join(f"{u['speaker'].capitalize()}: {u['text']}" for u in document["utterances"])


def transcript_bytes(document: Mapping[str, Any]) -> bytes:
    """The JSON object body of a transcript (stable key order, UTF-8)."""
    return json.dumps(document, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")


def wav_bytes(seed: int, call_id: int, size_bytes: int) -> bytes:
    """A valid WAV file (8 kHz, mono, 16-bit PCM) of exactly ``size_bytes`` (rounded down to a whole
    frame): a triangle tone whose pitch depends on the call, plus noise. Integer arithmetic only,
    so the bytes are identical on every platform."""
    frames = max((size_bytes - _WAV_HEADER) // 2, 1)
    period = 20 + (call_id * 7919) % 60  # samples per cycle: 133-400 Hz
    t = np.arange(frames, dtype=np.int64) % period
    triangle = (np.abs(2 * t - period) * 2 * 6_000) // period - 6_000
    noise = np.random.default_rng([seed, _PART_OBJECTS, call_id]).integers(-600, 601, frames)
    samples = np.clip(triangle + noise, -32_768, 32_767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8_000)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def _attach_objects(seed: int, spec: ScaleSpec, bulk: _Bulk) -> list[CallObjects]:
    """Recording keys and transcripts for the bulk sample; returns their object specifications."""
    rng = _rng(seed, _PART_OBJECTS)
    calls = bulk.tables["calls"]
    sample = bulk.sample_calls
    ids = calls["id"].to_numpy()[sample]
    business = calls["business_id"].to_numpy()[sample]
    caller = calls["caller_id"].to_numpy()[sample] - 1
    started = calls["started_at"].to_numpy()[sample].astype(np.int64)
    duration = calls["duration_s"].to_numpy()[sample]
    outcome = calls["outcome"].to_numpy(dtype=object)[sample]
    picks = rng.integers(0, 1 << 20, len(sample))
    keys = np.full(len(calls), None, dtype=object)
    texts = np.full(len(calls), None, dtype=object)
    objects: list[CallObjects] = []
    for i in range(len(sample)):
        name = bulk.caller_name[caller[i]]
        doc = build_transcript(
            call_id=int(ids[i]),
            business_id=int(business[i]),
            business_name=str(bulk.business_names[business[i] - 1]),
            caller_phone=str(bulk.caller_phone[caller[i]]),
            caller_name=None if name is None else str(name),
            started_at=int(started[i]),
            duration_s=int(duration[i]),
            outcome=str(outcome[i]),
            intent_pick=int(picks[i]),
        )
        keys[sample[i]] = recording_key(int(business[i]), int(ids[i]))
        texts[sample[i]] = transcript_text(doc)
        objects.append(CallObjects(int(ids[i]), int(business[i]), spec.sample_recording_bytes, doc))
    calls["recording_key"] = keys
    calls["transcript"] = texts
    return objects


# ------------------------------------------------------------------------------------------ cast


class _CastRows:
    """Rows of the cast, appended after the bulk with ids from CAST_ID_BASE + 1."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_ORDER}

    def add(self, table: str, **values: Any) -> int:
        rows = self.rows[table]
        row_id = CAST_ID_BASE + len(rows) + 1
        if "id" in TABLE_COLUMNS[table]:
            values["id"] = row_id
        rows.append(values)
        return row_id


_CAST_ADDRESSES: Mapping[str, str] = {
    "both_user_and_caller": "1234 Mission St, 94103 San Francisco, US",
    "call_handler": "88 Market St, 94105 San Francisco, US",
    "shared_business_user_1": "500 Castro St, 94114 San Francisco, US",
    "shared_business_user_2": "Λεωφόρος Κηφισίας 12, ΤΚ 115 26 Αθήνα, GR",
    "payer": "200 Park Ave, 10166 New York, US",
}
_CAST_JOBS: Mapping[str, str] = {
    "both_user_and_caller": "Office manager",
    "call_handler": "Front desk lead",
    "shared_business_user_1": "Practice owner",
    "shared_business_user_2": "Accountant",
    "payer": "Owner",
}


def _cast_layer(seed: int, spec: ScaleSpec, bulk: _Bulk) -> tuple[dict[str, pd.DataFrame], list[CallObjects]]:
    rng = _rng(seed, _PART_CAST)
    rows = _CastRows()
    objects: list[CallObjects] = []
    names = bulk.business_names

    def when(lo: str, hi: str) -> int:
        return int(rng.integers(_epoch(lo), _epoch(hi)))

    # users
    user_subjects = [s for s in CAST.values() if s.user_id is not None]
    for subject in user_subjects:
        created = when("2019-01-01T00:00:00", "2022-12-31T00:00:00")
        assert subject.user_id == CAST_ID_BASE + len(rows.rows["users"]) + 1
        rows.add(
            "users",
            business_id=subject.user_business_id,
            full_name=subject.full_name,
            email=subject.email,
            phone=subject.phone,
            phone_e164=subject.e164,
            job_title=_CAST_JOBS[subject.key],
            billing_address=_CAST_ADDRESSES[subject.key],
            created_at=created,
            last_login_at=when("2026-11-01T00:00:00", "2026-11-27T00:00:00"),
        )
        rows.add(
            "marketing_preferences",
            user_id=subject.user_id,
            email_opt_in=subject.key != "payer",
            sms_opt_in=subject.key == "both_user_and_caller",
            updated_at=when("2025-01-01T00:00:00", "2026-11-27T00:00:00"),
        )
        n_tickets = 2 if subject.key == "payer" else 1
        for t in range(n_tickets):
            topic = (len(rows.rows["support_tickets"]) + t) % len(TICKET_SUBJECTS)
            rows.add(
                "support_tickets",
                user_id=subject.user_id,
                subject=TICKET_SUBJECTS[topic],
                body=f"{TICKET_BODIES[topic]} You can reach me on {subject.phone}.",
                status="closed" if t == 0 else "open",
                created_at=when("2024-01-01T00:00:00", "2026-11-27T00:00:00"),
            )
        n_events = 200 if subject.key == "call_handler" else 40
        ip = f"198.51.100.{10 + len(rows.rows['users'])}"
        device = f"d-cast{subject.user_id:012d}"
        for _ in range(n_events):
            rows.add(
                "usage_events",
                user_id=subject.user_id,
                occurred_at=when("2023-12-01T00:00:00", "2026-11-28T00:00:00"),
                ip_address=ip,
                user_agent=USER_AGENTS[subject.user_id % len(USER_AGENTS)],
                device_id=device,
                path=APP_PATHS[int(rng.integers(0, len(APP_PATHS)))],
                geo_country="GR" if subject.key == "shared_business_user_2" else "US",
            )
        for _ in range(2):  # messages the user wrote to aircalls support from their dashboard
            rows.add(
                "messages",
                business_id=subject.user_business_id,
                caller_id=None,
                user_id=subject.user_id,
                channel="chat",
                direction="inbound",
                body=f"{USER_TEXTS[int(rng.integers(0, len(USER_TEXTS)))]} ({subject.full_name})",
                sent_at=when("2024-01-01T00:00:00", "2026-11-27T00:00:00"),
            )

    # callers and their calls, messages, appointments
    call_plan: Mapping[str, tuple[int, int]] = {  # calls per caller row, of which recorded
        "both_user_and_caller": (5, 3),
        "caller_only": (6, 6),
        "household_a": (3, 2),
        "household_b": (3, 1),
        "multi_business_caller": (2, 1),
        "heavy_subject": (spec.heavy_calls, spec.heavy_calls),
    }
    caller_subjects = [s for s in CAST.values() if s.caller_ids]
    for subject in caller_subjects:
        for caller_id, business_id in zip(subject.caller_ids, subject.caller_business_ids, strict=True):
            n_calls, n_recorded = call_plan[subject.key]
            times = np.sort(
                rng.integers(_epoch("2024-01-01T00:00:00"), _epoch("2026-11-27T00:00:00"), n_calls)
            )
            # multi_business_caller left an e-mail only with business C
            email = subject.caller_email
            if subject.key == "multi_business_caller" and business_id != subject.caller_business_ids[1]:
                email = None
            assert caller_id == CAST_ID_BASE + len(rows.rows["callers"]) + 1
            rows.add(
                "callers",
                business_id=business_id,
                phone=subject.e164,
                full_name=subject.full_name,
                email=email,
                first_seen_at=int(times[0]),
            )
            owner = int(bulk.billing_user[business_id - 1]) if bulk.billing_user[business_id - 1] >= 0 else -1
            for j in range(n_calls):
                outcome = ("answered", "booked", "voicemail", "transferred", "answered")[j % 5]
                recorded = j < n_recorded
                duration = 60 + int(rng.integers(0, 400)) if outcome != "voicemail" else 45
                call_id = CAST_ID_BASE + len(rows.rows["calls"]) + 1
                size = (
                    spec.heavy_recording_bytes
                    if subject.key == "heavy_subject"
                    else spec.sample_recording_bytes
                )
                doc = None
                if recorded:
                    doc = build_transcript(
                        call_id=call_id,
                        business_id=business_id,
                        business_name=str(names[business_id - 1]),
                        caller_phone=str(subject.e164),
                        caller_name=subject.full_name,
                        started_at=int(times[j]),
                        duration_s=duration,
                        outcome=outcome,
                        intent_pick=j,
                    )
                    objects.append(CallObjects(call_id, business_id, size, doc))
                rows.add(
                    "calls",
                    business_id=business_id,
                    caller_id=caller_id,
                    handled_by_user_id=owner + 1
                    if outcome in ("answered", "transferred") and owner >= 0
                    else None,
                    started_at=int(times[j]),
                    duration_s=duration,
                    outcome=outcome,
                    recording_key=recording_key(business_id, call_id) if recorded else None,
                    transcript=transcript_text(doc) if doc is not None else None,
                )
                if outcome == "booked" and (subject.key != "heavy_subject" or j < 25):
                    created = int(times[j]) + duration
                    rows.add(
                        "appointments",
                        business_id=business_id,
                        caller_id=caller_id,
                        scheduled_for=(created // DAY + 3) * DAY + 10 * 3600,
                        notes=f"Booked by phone by {subject.full_name}; call back on {subject.e164}.",
                        calendar_event_id=f"castevt{call_id}",
                        created_at=created,
                    )
            n_messages = 10 if subject.key == "heavy_subject" else 3 if subject.key == "caller_only" else 1
            for m in range(n_messages):
                inbound = m % 2 == 0
                rows.add(
                    "messages",
                    business_id=business_id,
                    caller_id=caller_id,
                    user_id=None,
                    channel="sms" if m % 3 != 2 else "email",
                    direction="inbound" if inbound else "outbound",
                    body=(
                        f"Please call me back on {subject.e164}. {INBOUND_TEXTS[m % len(INBOUND_TEXTS)]}"
                        if inbound
                        else f"Hi {subject.first_name}, {OUTBOUND_TEXTS[m % len(OUTBOUND_TEXTS)]}"
                    ),
                    sent_at=int(times[-1]) + (m + 1) * 3600,
                )

    # payments: payer monthly 2018-12 .. 2026-11 (older and younger than 7 years); a few recent
    # ones for both_user_and_caller
    payer = CAST["payer"]
    months = np.arange(
        np.datetime64(f"{PAYER_FIRST_MONTH[0]}-{PAYER_FIRST_MONTH[1]:02d}", "M"),
        np.datetime64(f"{PAYER_LAST_MONTH[0]}-{PAYER_LAST_MONTH[1]:02d}", "M") + 1,
    )
    charge_tokens = _random_tokens(rng, len(months) + 3, 24, _BASE62)
    for i, month in enumerate(months):
        start = int(month.astype("datetime64[s]").astype(np.int64))
        rows.add(
            "payments",
            business_id=payer.user_business_id,
            user_id=payer.user_id,
            amount_cents=4_900 if start < _epoch("2024-07-01T00:00:00") else 5_300,
            currency="USD",
            card_last4="4242" if i < 48 else "1881",
            billing_address=_CAST_ADDRESSES["payer"],
            processor_charge_id=f"ch_{charge_tokens[i]}",
            paid_at=start + 4 * DAY + 9 * 3600,
        )
    both = CAST["both_user_and_caller"]
    for i, recent in enumerate(("2026-09", "2026-10", "2026-11")):
        rows.add(
            "payments",
            business_id=both.user_business_id,
            user_id=both.user_id,
            amount_cents=1_500,
            currency="USD",
            card_last4="0005",
            billing_address=_CAST_ADDRESSES["both_user_and_caller"],
            processor_charge_id=f"ch_{charge_tokens[len(months) + i]}",
            paid_at=_epoch(f"{recent}-15T12:00:00"),
        )

    frames: dict[str, pd.DataFrame] = {}
    for table in TABLE_ORDER:
        frame = pd.DataFrame(rows.rows[table], columns=list(TABLE_COLUMNS[table]))
        frames[table] = frame
    return frames, objects


# ------------------------------------------------------------------------------------------ processors


def _processor_records(seed: int, data: ReferenceData, bulk: _Bulk) -> None:
    """Payments customers (users who pay, plus ``processor_only_payments``) with their charges,
    and crm contacts (every user, plus callers who left an e-mail)."""
    rng = _rng(seed, _PART_PROCESSORS)
    users = data.tables["users"]
    payments = data.tables["payments"]
    businesses = data.tables["businesses"]
    business_name = dict(zip(businesses["id"].tolist(), businesses["name"].tolist(), strict=True))

    def names_of(user_id: int) -> tuple[str, str]:
        if user_id > CAST_ID_BASE:
            subject = next(s for s in CAST.values() if s.user_id == user_id)
            return subject.first_name or "", subject.last_name or ""
        return str(bulk.user_given[user_id - 1]), str(bulk.user_family[user_id - 1])

    def address_of(text: str | None) -> dict[str, str] | None:
        if not text:
            return None
        parts = [p.strip() for p in text.split(",")]
        postal_city = parts[-2] if len(parts) >= 3 else ""
        postal, _, city = postal_city.rpartition(" ") if " " in postal_city else ("", "", postal_city)
        return {
            "line1": ", ".join(parts[:-2]) or parts[0],
            "city": city,
            "postal_code": postal,
            "country": parts[-1],
        }

    user_rows = users.set_index("id")
    paying = sorted(int(u) for u in payments["user_id"].dropna().unique())
    tokens = _random_tokens(rng, len(paying) + 1, 14, _BASE62)
    customer_of: dict[int, str] = {}
    for i, user_id in enumerate(paying):
        row = user_rows.loc[user_id]
        cid = f"cus_{tokens[i]}"
        customer_of[user_id] = cid
        data.payments_customers.append(
            {
                "id": cid,
                "object": "customer",
                "email": str(row["email"]),
                "name": str(row["full_name"]),
                "phone": None if pd.isna(row["phone"]) else str(row["phone"]),
                "address": address_of(
                    None if pd.isna(row["billing_address"]) else str(row["billing_address"])
                ),
                "created": int(pd.Timestamp(row["created_at"]).timestamp()),
                "metadata": {
                    "aircalls_user_id": str(user_id),
                    "aircalls_business_id": str(int(row["business_id"])),
                },
            }
        )
    paid = payments[payments["user_id"].notna()]
    paid_at = paid["paid_at"].to_numpy().astype("datetime64[s]").astype(np.int64)
    brand_of_business = rng.integers(0, len(CARD_BRANDS), int(businesses["id"].max()) + 1)
    for charge_id, user_id, business_id, amount, currency, last4, ts in zip(
        paid["processor_charge_id"].tolist(),
        paid["user_id"].astype("int64").tolist(),
        paid["business_id"].tolist(),
        paid["amount_cents"].tolist(),
        paid["currency"].astype(str).tolist(),
        paid["card_last4"].tolist(),
        paid_at.tolist(),
        strict=True,
    ):
        month = _iso(ts)[:7]
        data.payments_charges.append(
            {
                "id": charge_id,
                "object": "charge",
                "customer": customer_of[user_id],
                "amount": int(amount),
                "currency": currency.lower(),
                "created": int(ts),
                "description": f"aircalls.ai subscription {month}",
                "payment_method_details": {
                    "card": {
                        "last4": last4,
                        "brand": CARD_BRANDS[int(brand_of_business[business_id % len(brand_of_business)])],
                    }
                },
            }
        )
    only = CAST["processor_only_payments"]
    only_id = f"cus_{tokens[-1]}"
    data.payments_customers.append(
        {
            "id": only_id,
            "object": "customer",
            "email": only.email,
            "name": only.full_name,
            "phone": only.phone,
            "address": {"line1": "Torstraße 1", "city": "Berlin", "postal_code": "10119", "country": "DE"},
            "created": _epoch("2022-03-01T10:00:00"),
            "metadata": {},
        }
    )
    for i, month in enumerate(("2022-03", "2022-04", "2022-05")):
        data.payments_charges.append(
            {
                "id": f"ch_castonly{i + 1:016d}",
                "object": "charge",
                "customer": only_id,
                "amount": 9_900,
                "currency": "eur",
                "created": _epoch(f"{month}-01T10:00:00"),
                "description": f"aircalls.ai subscription {month}",
                "payment_method_details": {"card": {"last4": "3220", "brand": "visa"}},
            }
        )

    # crm: every user, then callers with an e-mail no contact has yet
    contact_id = 0
    note_id = 0
    activity_id = 0
    seen: set[str] = set()

    def contact(email: str, first: str, last: str, phone: str | None, company: str, created: int) -> None:
        nonlocal contact_id, note_id, activity_id
        contact_id += 1
        notes: list[dict[str, Any]] = []
        for _ in range(int(rng.integers(0, 3))):
            note_id += 1
            at = created + int(rng.integers(0, 400)) * DAY
            notes.append(
                {
                    "id": note_id,
                    "body": CONTACT_NOTES[int(rng.integers(0, len(CONTACT_NOTES)))],
                    "created_at": _iso(min(at, ACTIVITY_END - 1)),
                }
            )
        activities: list[dict[str, Any]] = []
        for _ in range(int(rng.integers(0, 4))):
            activity_id += 1
            at = created + int(rng.integers(0, 600)) * DAY
            activities.append(
                {
                    "id": activity_id,
                    "type": ACTIVITY_TYPES[int(rng.integers(0, len(ACTIVITY_TYPES)))],
                    "at": _iso(min(at, ACTIVITY_END - 1)),
                    "summary": ACTIVITY_SUMMARIES[int(rng.integers(0, len(ACTIVITY_SUMMARIES)))],
                }
            )
        updated = max(
            [created]
            + [_epoch(n["created_at"][:-1]) for n in notes]
            + [_epoch(a["at"][:-1]) for a in activities]
        )
        data.crm_contacts.append(
            {
                "id": contact_id,
                "email": email,
                "first_name": first,
                "last_name": last,
                "phone": phone,
                "company": company,
                "notes": notes,
                "activities": activities,
                "created_at": _iso(created),
                "updated_at": _iso(updated),
            }
        )
        seen.add(email.lower())

    created_s = users["created_at"].to_numpy().astype("datetime64[s]").astype(np.int64)
    for user_id, email, phone, business_id, created in zip(
        users["id"].tolist(),
        users["email"].tolist(),
        users["phone"].tolist(),
        users["business_id"].tolist(),
        created_s.tolist(),
        strict=True,
    ):
        first, last = names_of(int(user_id))
        contact(
            str(email),
            first,
            last,
            None if pd.isna(phone) else str(phone),
            str(business_name[business_id]),
            int(created),
        )
    callers = data.tables["callers"]
    with_email = callers[callers["email"].notna()]
    first_seen = with_email["first_seen_at"].to_numpy().astype("datetime64[s]").astype(np.int64)
    for caller_id, email, phone, business_id, seen_at in zip(
        with_email["id"].tolist(),
        with_email["email"].tolist(),
        with_email["phone"].tolist(),
        with_email["business_id"].tolist(),
        first_seen.tolist(),
        strict=True,
    ):
        if str(email).lower() in seen:
            continue
        if caller_id > CAST_ID_BASE:
            subject = next(s for s in CAST.values() if caller_id in s.caller_ids)
            first, last = subject.first_name or "", subject.last_name or ""
        else:
            first, last = str(bulk.caller_given[caller_id - 1]), str(bulk.caller_family[caller_id - 1])
        contact(str(email), first, last, str(phone), str(business_name[business_id]), int(seen_at))


# ------------------------------------------------------------------------------------------ entry


def scale_spec(scale: str) -> ScaleSpec:
    """The :class:`ScaleSpec` named ``scale``; ValueError naming the known scales otherwise."""
    try:
        return SCALES[scale]
    except KeyError:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}") from None


def _concat(bulk: pd.DataFrame, cast_rows: pd.DataFrame) -> pd.DataFrame:
    """Bulk rows then cast rows, the cast columns converted to the bulk column types (cast
    timestamps are epoch seconds, NULL is None)."""
    if cast_rows.empty:
        return bulk
    merged: dict[str, pd.Series] = {}
    for column in bulk.columns:
        head = bulk[column].reset_index(drop=True)
        values = cast_rows[column].to_numpy(dtype=object)
        null = np.asarray(pd.isna(values), dtype=bool)
        dtype = head.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            labels = pd.Index(sorted({str(v) for v in values[~null]}), dtype=object)
            tail_cat = pd.Categorical(values, categories=labels)
            merged[column] = pd.Series(union_categoricals([head.array, tail_cat], sort_categories=True))
            continue
        if isinstance(dtype, pd.Int64Dtype):
            ints = np.where(null, -1, values).astype(np.int64)
            tail = pd.Series(_nullable_int(ints, ~null))
        elif dtype == np.bool_:
            tail = pd.Series(values.astype(bool))
        elif not isinstance(dtype, pd.api.extensions.ExtensionDtype) and np.issubdtype(dtype, np.datetime64):
            stamps = _ts(np.where(null, 0, values).astype(np.int64))
            tail = pd.Series(np.where(null, np.datetime64("NaT", "s"), stamps).astype("datetime64[s]"))
        elif not isinstance(dtype, pd.api.extensions.ExtensionDtype) and np.issubdtype(dtype, np.integer):
            tail = pd.Series(values.astype(np.int64))
        else:
            head = pd.Series(head.to_numpy(dtype=object, na_value=None), dtype=object)
            tail = pd.Series(values, dtype=object)
        merged[column] = pd.concat([head, tail], ignore_index=True)
    return pd.DataFrame(merged, columns=bulk.columns)


def generate_reference_data(scale: str, seed: int = DEFAULT_SEED) -> ReferenceData:
    """Generate the whole reference deployment for ``scale`` in memory (deterministic)."""
    spec = scale_spec(scale)
    pools = _draw_pools(seed)
    bulk = _generate_bulk(seed, spec, pools)
    objects = _attach_objects(seed, spec, bulk)
    cast_frames, cast_objects = _cast_layer(seed, spec, bulk)
    tables = {name: _concat(bulk.tables[name], cast_frames[name]) for name in TABLE_ORDER}
    data = ReferenceData(scale=spec, seed=seed, tables=tables, objects=objects + cast_objects)
    _processor_records(seed, data, bulk)
    return data


# ------------------------------------------------------------------------------------------ CSV

CSV_CHUNK_ROWS = 200_000


def _csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _column_formatter(series: pd.Series) -> Callable[[int, int], list[str]]:
    """A function giving rows ``[start, stop)`` of one column as CSV fields: NULL is an empty
    unquoted field, text is always quoted (so an empty string stays distinct from NULL),
    timestamps are ISO 8601 in UTC, booleans ``t``/``f``. Categories are quoted once."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        labels = [_csv_quote(str(c)) for c in dtype.categories.to_numpy(dtype=object).tolist()]
        quoted = np.array([*labels, ""], dtype=object)
        codes = series.cat.codes.to_numpy().astype(np.int64)
        codes = np.where(codes < 0, len(quoted) - 1, codes)
        return lambda start, stop: quoted[codes[start:stop]].tolist()
    if isinstance(dtype, pd.Int64Dtype):
        mask = series.isna().to_numpy()
        ints = series.to_numpy(dtype=np.int64, na_value=0)
        return lambda start, stop: np.where(mask[start:stop], "", ints[start:stop].astype(str)).tolist()
    if dtype == np.bool_:
        flags = series.to_numpy()
        return lambda start, stop: np.where(flags[start:stop], "t", "f").tolist()
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype) and np.issubdtype(dtype, np.datetime64):
        stamps = series.to_numpy().astype("datetime64[s]")

        def timestamps(start: int, stop: int) -> list[str]:
            part = stamps[start:stop]
            text = np.datetime_as_string(part, unit="s", timezone="UTC")
            return np.where(np.isnat(part), "", text).tolist()

        return timestamps
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype) and np.issubdtype(dtype, np.integer):
        numbers = series.to_numpy()
        return lambda start, stop: list(map(str, numbers[start:stop].tolist()))
    values = series.to_numpy(dtype=object, na_value=None)
    return lambda start, stop: ["" if v is None else _csv_quote(str(v)) for v in values[start:stop].tolist()]


def iter_csv_chunks(frame: pd.DataFrame, chunk_rows: int = CSV_CHUNK_ROWS) -> Iterator[str]:
    """The frame as CSV text in chunks of ``chunk_rows`` rows (no header)."""
    formatters = [_column_formatter(frame[name]) for name in frame.columns]
    for start in range(0, len(frame), chunk_rows):
        stop = min(start + chunk_rows, len(frame))
        columns = [format_rows(start, stop) for format_rows in formatters]
        yield "\n".join(map(",".join, zip(*columns, strict=True))) + "\n"


def write_csv_files(data: ReferenceData, work_dir: Path) -> dict[str, Path]:
    """Write every table to ``work_dir/<table>.csv`` (UTF-8, no header, columns in
    TABLE_COLUMNS order); returns the paths in TABLE_ORDER."""
    work_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in TABLE_ORDER:
        path = work_dir / f"{name}.csv"
        frame = data.tables[name][list(TABLE_COLUMNS[name])]
        with path.open("w", encoding="utf-8", newline="") as handle:
            for chunk in iter_csv_chunks(frame):
                handle.write(chunk)
        paths[name] = path
    return paths


__all__ = [
    "DEFAULT_SEED",
    "SCALES",
    "TABLE_COLUMNS",
    "TABLE_ORDER",
    "CallObjects",
    "ReferenceData",
    "ScaleSpec",
    "build_transcript",
    "generate_reference_data",
    "recording_key",
    "scale_spec",
    "transcript_bytes",
    "transcript_key",
    "transcript_text",
    "wav_bytes",
    "write_csv_files",
]
