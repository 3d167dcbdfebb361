from __future__ import annotations

from pathlib import Path

import pytest

from governance.config import datamap_path
from governance.datamap import phone_region
from governance.identity import InvalidIdentity, SubjectIdentities, normalise_email, normalise_phone


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("  Alice@Example.COM ", "alice@example.com"),
        ("alice@example.com", "alice@example.com"),
        ("\tMARIA.LOPEZ@Example.com\n", "maria.lopez@example.com"),
        # NFC: "é" typed as e + combining acute equals the precomposed letter
        ("Rene\u0301@Example.fr", "ren\u00e9@example.fr"),
        ("ÅSA@Exempel.SE", "åsa@exempel.se"),
    ],
)
def test_email_variants_normalise_to_one_canonical_form(typed: str, canonical: str) -> None:
    assert normalise_email(typed) == canonical


def test_email_lowercasing_uses_simple_mapping_like_postgres_lower() -> None:
    # Python's str.lower() turns a final capital sigma into "ς" and "İ" into two code points;
    # PostgreSQL's lower() maps character by character.
    assert normalise_email("ΟΔΥΣΣΕΑΣ@example.gr") == "οδυσσεασ@example.gr"
    assert normalise_email("İLKER@example.com") == "ilker@example.com"


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "no-at-sign", "a@b", "two@@example.com", "%@example.com", "*@example.com", "a b@example.com",
     "bob@exa%mple.com", "x\u200b@example.com", "a" * 65 + "@example.com"],
)  # fmt: skip
def test_invalid_or_wildcard_emails_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentity):
        normalise_email(bad)


def test_refusal_message_never_repeats_the_value() -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalise_email("secret-person%@example.com")
    assert "secret-person" not in str(info.value)


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+1 (555) 010-2000", "+15550102000"),
        ("(555) 010-2000", "+15550102000"),
        ("555.010.2000", "+15550102000"),
        ("+15550102000", "+15550102000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+49 30 901820", "+4930901820"),
        ("＋１ ５５５ ０１０ ２０００", "+15550102000"),  # full-width digits from a phone keyboard
    ],
)
def test_phone_formats_normalise_to_e164(typed: str, e164: str) -> None:
    assert normalise_phone(typed, region="US") == e164


def test_phone_without_country_code_is_read_in_the_region_passed_in() -> None:
    assert normalise_phone("020 7946 0958", region="GB") == "+442079460958"
    assert normalise_phone("020 7946 0958", region="gb") == "+442079460958"
    assert normalise_phone("+1 555 010 2000", region="GB") == "+15550102000"  # a country code wins
    with pytest.raises(InvalidIdentity, match="could not be read"):  # no region: a country code is needed
        normalise_phone("(555) 010-2000", region=None)
    assert SubjectIdentities.parse(phone="(555) 010-2000", region="US").phone == "+15550102000"


def test_identity_normalisation_reads_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVERNANCE_PHONE_REGION", "GB")
    monkeypatch.setenv("GOVERNANCE_DATAMAP", "/nonexistent/datamap.yaml")
    assert normalise_phone("(555) 010-2000", region="US") == "+15550102000"


def test_phone_region_comes_from_the_data_map_unless_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    edited = tmp_path / "datamap.yaml"
    text = datamap_path().read_text()
    assert "default_phone_region: US" in text
    edited.write_text(text.replace("default_phone_region: US", "default_phone_region: DE", 1))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(edited))
    monkeypatch.delenv("GOVERNANCE_PHONE_REGION", raising=False)
    assert phone_region() == "DE"
    assert normalise_phone("030 901820", region=phone_region()) == "+4930901820"
    monkeypatch.setenv("GOVERNANCE_PHONE_REGION", "gb")
    assert phone_region() == "GB"
    assert normalise_phone("020 7946 0958", region=phone_region()) == "+442079460958"


@pytest.mark.parametrize("bad", ["", "12", "%", "555-*", "+1 555", "not a number", "+999 1234567"])
def test_impossible_or_wildcard_phones_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentity):
        normalise_phone(bad, region="US")


def test_subject_needs_at_least_one_identity_and_hides_values_in_repr() -> None:
    with pytest.raises(InvalidIdentity, match="at least one"):
        SubjectIdentities.parse(email="  ", phone=None, region="US")
    subject = SubjectIdentities.parse(email="Alice@Example.com", phone="+1 555 010 2000", region="US")
    assert subject.items() == [("email", "alice@example.com"), ("phone", "+15550102000")]
    assert "alice" not in repr(subject) and "555" not in str(subject)
