"""The reference-deployment generator (pure: no database, no network)."""

from __future__ import annotations

import csv
import io
import re
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import phonenumbers
import pytest

from governance_dev.seed.cast import (
    BUSINESS_A,
    BUSINESS_B,
    CAST,
    CAST_ID_BASE,
    CAST_KEYS,
    cast_emails_lower,
    cast_phones_e164,
    heavy_call_count,
)
from governance_dev.seed.generate import (
    SCALES,
    TABLE_COLUMNS,
    TABLE_ORDER,
    ReferenceData,
    generate_reference_data,
    wav_bytes,
    write_csv_files,
)

SEED = 20261128
SEVEN_YEARS_BEFORE_SEED_DATE = pd.Timestamp("2019-11-28")
WINDOW_START, WINDOW_END = pd.Timestamp("2023-12-01"), pd.Timestamp("2026-11-28")


@pytest.fixture(scope="module")
def small() -> ReferenceData:
    return generate_reference_data("small", SEED)


def _text_cells(data: ReferenceData) -> set[str]:
    """Every text value in every table, lower-cased."""
    cells: set[str] = set()
    for frame in data.tables.values():
        for column in frame.columns:
            if frame[column].dtype == object or isinstance(
                frame[column].dtype, (pd.StringDtype, pd.CategoricalDtype)
            ):
                cells.update(str(v).lower() for v in frame[column].dropna().unique())
    return cells


# ------------------------------------------------------------------------------------- determinism


def test_same_scale_and_seed_give_identical_frames_and_byte_identical_csv_files(
    small: ReferenceData, tmp_path: Path
) -> None:
    again = generate_reference_data("small", SEED)
    for name in TABLE_ORDER:
        pd.testing.assert_frame_equal(small.tables[name], again.tables[name], obj=name)
    assert again.objects == small.objects
    assert again.payments_customers == small.payments_customers
    assert again.payments_charges == small.payments_charges
    assert again.crm_contacts == small.crm_contacts
    first = write_csv_files(small, tmp_path / "a")
    second = write_csv_files(again, tmp_path / "b")
    for name in TABLE_ORDER:
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_another_seed_gives_other_people(small: ReferenceData) -> None:
    other = generate_reference_data("small", SEED + 1)
    assert set(other.tables["users"]["email"]) != set(small.tables["users"]["email"])
    # ... but the cast stays exactly where it is
    cast_users = other.tables["users"][other.tables["users"]["id"] > CAST_ID_BASE]
    assert list(cast_users["email"]) == [s.email for s in CAST.values() if s.user_id is not None]


def test_small_scale_has_the_documented_sizes(small: ReferenceData) -> None:
    counts = small.row_counts()
    assert counts["businesses"] == 20
    assert 150 <= counts["users"] < 200
    assert 1_500 <= counts["callers"] < 1_600
    assert 10_000 <= counts["calls"] < 12_000
    assert 5_000 <= counts["messages"] < 5_500
    assert 30_000 <= counts["usage_events"] < 31_000
    assert all(counts[name] > 0 for name in TABLE_ORDER)


def test_large_scale_is_specified_for_benchmarks() -> None:
    large = SCALES["large"]
    assert large.usage_events >= 5_000_000
    assert large.calls >= 1_000_000
    assert large.object_sample == 10_000
    assert large.heavy_calls == 1_000 and heavy_call_count("large") == 1_000
    assert large.heavy_recording_bytes == 256 * 1024


# ------------------------------------------------------------------------------------- people


def test_user_phones_are_possible_numbers_whose_e164_is_what_phonenumbers_computes(
    small: ReferenceData,
) -> None:
    users = small.tables["users"]
    with_phone = users[users["phone"].notna()]
    assert len(with_phone) > 0.9 * len(users)
    for typed, e164 in zip(with_phone["phone"], with_phone["phone_e164"], strict=True):
        number = phonenumbers.parse(typed, "US")
        assert phonenumbers.is_possible_number(number), typed
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == e164
    assert users.loc[users["phone"].isna(), "phone_e164"].isna().all()


def test_user_phones_are_typed_in_varied_formats(small: ReferenceData) -> None:
    phones = [p for p in small.tables["users"]["phone"].dropna()]
    shapes = {
        "parenthesised": r"^\(\d{3}\) \d{3}-\d{4}$",
        "plus one dashed": r"^\+1 \d{3}-\d{3}-\d{4}$",
        "dotted": r"^\d{3}\.\d{3}\.\d{4}$",
        "international": r"^\+(?!1)\d{1,3}[ -]",
    }
    for label, pattern in shapes.items():
        assert any(re.match(pattern, p) for p in phones), label


def test_user_emails_are_unique_case_insensitively_and_typed_in_varied_case(small: ReferenceData) -> None:
    emails = small.tables["users"]["email"]
    assert emails.str.lower().is_unique
    assert any(e != e.lower() for e in emails)  # some typed with capitals
    assert any(e == e.lower() for e in emails)
    assert all(re.match(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", e) for e in emails)


def test_names_come_from_several_locales_and_scripts(small: ReferenceData) -> None:
    names = " ".join(small.tables["users"]["full_name"]) + " ".join(
        small.tables["callers"]["full_name"].dropna()
    )
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", names)  # Japanese
    assert re.search(r"[\u0370-\u03ff]", names)  # Greek
    assert re.search(r"[äöüßéèçñáí]", names)  # Latin with diacritics


def test_several_people_share_a_business(small: ReferenceData) -> None:
    per_business = small.tables["users"].groupby("business_id").size()
    assert per_business.min() >= 1
    assert (per_business >= 3).sum() >= 5


def test_caller_phones_are_e164(small: ReferenceData) -> None:
    for phone in small.tables["callers"]["phone"]:
        number = phonenumbers.parse(phone, None)
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == phone


# ------------------------------------------------------------------------------------- integrity


def test_every_reference_resolves_within_the_generated_tables(small: ReferenceData) -> None:
    t = small.tables
    ids = {name: set(t[name]["id"]) for name in TABLE_ORDER if "id" in TABLE_COLUMNS[name]}
    refs = [
        ("users", "business_id", "businesses"),
        ("callers", "business_id", "businesses"),
        ("calls", "business_id", "businesses"),
        ("calls", "caller_id", "callers"),
        ("calls", "handled_by_user_id", "users"),
        ("messages", "business_id", "businesses"),
        ("messages", "caller_id", "callers"),
        ("messages", "user_id", "users"),
        ("appointments", "caller_id", "callers"),
        ("support_tickets", "user_id", "users"),
        ("payments", "business_id", "businesses"),
        ("payments", "user_id", "users"),
        ("marketing_preferences", "user_id", "users"),
        ("usage_events", "user_id", "users"),
    ]
    for table, column, parent in refs:
        values = set(t[table][column].dropna().astype("int64"))
        assert values <= ids[parent], f"{table}.{column}"
    for name in TABLE_ORDER:
        key = "id" if "id" in TABLE_COLUMNS[name] else "user_id"
        assert t[name][key].is_unique, name
    # a call belongs to its caller's business
    callers = t["callers"].set_index("id")["business_id"]
    calls = t["calls"]
    assert (calls["caller_id"].map(callers) == calls["business_id"]).all()


def test_activity_falls_in_the_fixed_three_year_window_and_payments_span_eight_years(
    small: ReferenceData,
) -> None:
    t = small.tables
    for table, column in (("calls", "started_at"), ("messages", "sent_at"), ("usage_events", "occurred_at")):
        values = t[table][column]
        assert values.min() >= WINDOW_START and values.max() < WINDOW_END, table
    paid = t["payments"]["paid_at"]
    assert paid.min() < SEVEN_YEARS_BEFORE_SEED_DATE < paid.max()
    assert (paid.max() - paid.min()).days > 7 * 365


def test_recorded_calls_have_objects_and_transcripts_naming_the_callers_phone(small: ReferenceData) -> None:
    calls = small.tables["calls"]
    recorded = calls[calls["recording_key"].notna()]
    assert len(recorded) == len(small.objects)
    assert len(recorded) >= SCALES["small"].object_sample
    by_id = {o.call_id: o for o in small.objects}
    callers = small.tables["callers"].set_index("id")
    for row in recorded.itertuples():
        spec = by_id[row.id]
        assert row.recording_key == f"recordings/{row.business_id}/{row.id}.wav" == spec.recording_key
        assert (
            spec.transcript is not None
            and spec.transcript_key == f"transcripts/{row.business_id}/{row.id}.json"
        )
        assert spec.transcript["caller"]["phone"] == callers.loc[row.caller_id, "phone"]
        assert isinstance(row.transcript, str) and spec.transcript["utterances"][1]["text"] in row.transcript
    assert calls.loc[calls["recording_key"].isna(), "transcript"].isna().all()


def test_wav_recordings_are_valid_deterministic_and_of_the_requested_size() -> None:
    body = wav_bytes(SEED, 42, 256 * 1024)
    assert len(body) == 256 * 1024
    assert body == wav_bytes(SEED, 42, 256 * 1024)
    assert body != wav_bytes(SEED, 43, 256 * 1024)
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8_000)
        assert wav.getnframes() == (256 * 1024 - 44) // 2


def test_csv_files_keep_nulls_apart_from_text_and_follow_the_column_order(
    small: ReferenceData, tmp_path: Path
) -> None:
    paths = write_csv_files(small, tmp_path)
    with paths["users"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    users = small.tables["users"]
    assert len(rows) == len(users)
    assert all(len(r) == len(TABLE_COLUMNS["users"]) for r in rows)
    first = users.iloc[0]
    assert rows[0][:4] == [str(first["id"]), str(first["business_id"]), first["full_name"], first["email"]]
    raw = paths["users"].read_text(encoding="utf-8").splitlines()[0]
    assert raw.split(",")[2].startswith('"')  # text is quoted, so "" would stay an empty string
    null_phone = users.index[users["phone"].isna()][0]
    assert rows[null_phone][4] == ""


# ------------------------------------------------------------------------------------- the cast


def _users(data: ReferenceData) -> pd.DataFrame:
    return data.tables["users"].set_index("id")


def _callers(data: ReferenceData) -> pd.DataFrame:
    return data.tables["callers"].set_index("id")


def test_cast_keys_and_identities_are_stable() -> None:
    assert set(CAST_KEYS) >= {
        "both_user_and_caller",
        "call_handler",
        "caller_only",
        "household_a",
        "household_b",
        "multi_business_caller",
        "processor_only_payments",
        "shared_business_user_1",
        "shared_business_user_2",
        "payer",
        "heavy_subject",
        "no_data",
    }
    for subject in CAST.values():
        if subject.phone:
            number = phonenumbers.parse(subject.phone, "US")
            assert phonenumbers.is_possible_number(number), subject.key
            assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == subject.e164
        shown = repr(subject)  # what a failing assertion or a log line would print
        assert all(v not in shown for v in (subject.email, subject.phone, subject.full_name) if v)


def test_cast_rows_hold_the_identities_the_cast_declares(small: ReferenceData) -> None:
    users, callers = _users(small), _callers(small)
    for subject in CAST.values():
        if subject.user_id is not None:
            row = users.loc[subject.user_id]
            assert (row["email"], row["phone"], row["phone_e164"]) == (
                subject.email,
                subject.phone,
                subject.e164,
            )
            assert row["business_id"] == subject.user_business_id
        for caller_id, business_id in zip(subject.caller_ids, subject.caller_business_ids, strict=True):
            row = callers.loc[caller_id]
            assert (row["phone"], row["business_id"], row["full_name"]) == (
                subject.e164,
                business_id,
                subject.full_name,
            )


def test_both_user_and_caller_is_a_user_of_a_and_a_caller_of_b_with_the_same_email_and_phone(
    small: ReferenceData,
) -> None:
    subject = CAST["both_user_and_caller"]
    user = _users(small).loc[subject.user_id]
    (caller_id,) = subject.caller_ids
    caller = _callers(small).loc[caller_id]
    assert user["business_id"] == BUSINESS_A and caller["business_id"] == BUSINESS_B
    assert user["email"].lower() == caller["email"].lower() and user["email"] != caller["email"]
    assert user["phone_e164"] == caller["phone"]
    assert (small.tables["calls"]["caller_id"] == caller_id).sum() >= 3


def test_call_handler_handled_many_calls_of_other_callers(small: ReferenceData) -> None:
    subject = CAST["call_handler"]
    calls = small.tables["calls"]
    handled = calls[calls["handled_by_user_id"] == subject.user_id]
    assert len(handled) >= 50
    assert handled["caller_id"].nunique() >= 20
    assert (handled["business_id"] == subject.user_business_id).all()
    assert not handled["caller_id"].isin([c for s in CAST.values() for c in s.caller_ids]).any()


def test_caller_only_has_recorded_and_transcribed_calls_messages_appointments_but_no_account(
    small: ReferenceData,
) -> None:
    subject = CAST["caller_only"]
    (caller_id,) = subject.caller_ids
    t = small.tables
    calls = t["calls"][t["calls"]["caller_id"] == caller_id]
    assert len(calls) >= 3 and calls["recording_key"].notna().all() and calls["transcript"].notna().all()
    assert (t["messages"]["caller_id"] == caller_id).sum() >= 1
    assert (t["appointments"]["caller_id"] == caller_id).sum() >= 1
    assert subject.user_id is None
    assert not (t["users"]["email"].str.lower() == subject.email.lower()).any()
    assert not (t["users"]["phone_e164"] == subject.e164).any()


def test_household_callers_share_one_phone_and_one_business(small: ReferenceData) -> None:
    a, b = CAST["household_a"], CAST["household_b"]
    callers = _callers(small)
    row_a, row_b = callers.loc[a.caller_ids[0]], callers.loc[b.caller_ids[0]]
    assert row_a["phone"] == row_b["phone"] == a.e164
    assert row_a["business_id"] == row_b["business_id"]
    assert row_a["full_name"] != row_b["full_name"]
    assert (small.tables["callers"]["phone"] == a.e164).sum() == 2


def test_multi_business_caller_has_three_caller_rows_in_three_businesses(small: ReferenceData) -> None:
    subject = CAST["multi_business_caller"]
    rows = small.tables["callers"][small.tables["callers"]["phone"] == subject.e164]
    assert sorted(rows["id"]) == sorted(subject.caller_ids)
    assert rows["business_id"].nunique() == 3


def test_shared_business_users_belong_to_the_same_business(small: ReferenceData) -> None:
    one, two = CAST["shared_business_user_1"], CAST["shared_business_user_2"]
    users = _users(small)
    assert users.loc[one.user_id, "business_id"] == users.loc[two.user_id, "business_id"]


def test_payer_has_payments_older_and_younger_than_seven_years(small: ReferenceData) -> None:
    subject = CAST["payer"]
    payments = small.tables["payments"]
    mine = payments[payments["user_id"] == subject.user_id]
    assert len(mine) == 96  # monthly, 2018-12 .. 2026-11
    assert mine["paid_at"].min() < SEVEN_YEARS_BEFORE_SEED_DATE < mine["paid_at"].max()
    charges = {c["id"] for c in small.payments_charges}
    assert set(mine["processor_charge_id"]) <= charges


def test_heavy_subject_has_the_scale_dependent_number_of_recorded_calls(small: ReferenceData) -> None:
    subject = CAST["heavy_subject"]
    calls = small.tables["calls"]
    mine = calls[calls["caller_id"] == subject.caller_ids[0]]
    assert len(mine) == heavy_call_count("small") == 20
    assert mine["recording_key"].notna().all()


def test_no_data_and_processor_only_identities_appear_in_no_app_row(small: ReferenceData) -> None:
    cells = _text_cells(small)
    for key in ("no_data", "processor_only_payments"):
        subject = CAST[key]
        assert subject.email is not None and subject.e164 is not None
        assert not any(subject.email.lower() in cell for cell in cells), key
        assert not any(subject.e164 in cell for cell in cells), key


def test_processors_hold_exactly_the_subjects_the_cast_says(small: ReferenceData) -> None:
    customers = {c["email"].lower() for c in small.payments_customers}
    contacts = {c["email"].lower() for c in small.crm_contacts}
    for subject in CAST.values():
        if subject.email is None:
            continue
        assert (subject.email.lower() in customers) == subject.in_payments, subject.key
        assert (subject.email.lower() in contacts) == subject.in_crm, subject.key
    customer_ids = {c["id"] for c in small.payments_customers}
    assert all(charge["customer"] in customer_ids for charge in small.payments_charges)
    assert len({c["id"] for c in small.crm_contacts}) == len(small.crm_contacts)


def test_bulk_data_never_uses_a_cast_identity(small: ReferenceData) -> None:
    users = small.tables["users"]
    callers = small.tables["callers"]
    bulk_users = users[users["id"] < CAST_ID_BASE]
    bulk_callers = callers[callers["id"] < CAST_ID_BASE]
    assert not bulk_users["phone_e164"].isin(cast_phones_e164()).any()
    assert not bulk_callers["phone"].isin(cast_phones_e164()).any()
    assert not bulk_users["email"].str.lower().isin(cast_emails_lower()).any()
    assert not bulk_callers["email"].dropna().str.lower().isin(cast_emails_lower()).any()
    assert np.all(bulk_users["id"].to_numpy() < CAST_ID_BASE)
