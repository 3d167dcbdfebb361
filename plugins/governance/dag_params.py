"""Trigger-form fields shared by the privacy-request DAGs (rendered by the Airflow UI from Params).

Only ``airflow.sdk`` is imported, so DAG files may import this at parse time. Every field is
optional (null-able), so a request can start from an e-mail alone, a phone alone, or a request id
alone. The form checks only types and lengths: the first task checks the fields with
``governance.identity`` before any system is read and fails with a message that names the field
in words ("Phone number has too few digits"), never with a pattern. Usual national formats such
as ``(628) 555-0141`` are accepted and read in the deployment's default region.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

# Generous bounds that no real identity reaches; the first task does the real checks and names
# the field in words when one fails (a regular expression in the form would be shown raw).
MAX_EMAIL_LENGTH = 320
MAX_PHONE_LENGTH = 40
REQUEST_ID_LENGTH = 25


def subject_params(*, kind: str) -> dict[str, Any]:
    """``request_id``, ``email``, ``phone`` and ``business_id`` for a ``kind`` request form."""
    return {
        "request_id": Param(
            None,
            type=["null", "string"],
            maxLength=REQUEST_ID_LENGTH,
            title="Request id",
            description=(
                f"An existing {kind} request (from intake or `python -m governance request new`). "
                "When given, the identities are read from the request: leave the e-mail and phone empty."
            ),
            section="Request",
        ),
        "email": Param(
            None,
            type=["null", "string"],
            maxLength=MAX_EMAIL_LENGTH,
            title="E-mail address",
            description=(
                "The person's e-mail address, as they gave it. Case and surrounding spaces do not matter. "
                "Give an e-mail, a phone, or both."
            ),
            section="The person",
        ),
        "phone": Param(
            None,
            type=["null", "string"],
            maxLength=MAX_PHONE_LENGTH,
            title="Phone number",
            description=(
                "The person's phone number as they gave it, e.g. (628) 555-0141 or +44 20 7946 0958; a number without +country code is read in the "
                "deployment's default region (the data map's settings.default_phone_region, US by default)."
            ),
            section="The person",
        ),
        "business_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Business client id (optional)",
            description=(
                "Set when a business client asks on behalf of one of its callers: only the data collected "
                "for that business is included."
            ),
            section="Scope",
        ),
    }
