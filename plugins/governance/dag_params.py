"""Trigger-form fields shared by the privacy-request DAGs (rendered by the Airflow UI from Params).

Only ``airflow.sdk`` is imported, so DAG files may import this at parse time. The form's checks
(patterns, minimum) stop obvious mistakes in the browser and the REST API (HTTP 400); the first
task re-checks everything with ``governance.identity`` before any system is read.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

# Blank, or one address without wildcards or spaces. The full normalisation runs in the first task.
EMAIL_PATTERN = r"^$|^\s*[^\s@%*?\[\]\\]+@[^\s@%*?\[\]\\]+\.[^\s@%*?\[\]\\.]{2,}\s*$"
# Blank, or digits with the usual separators; no wildcards.
PHONE_PATTERN = r"^$|^\s*\+?[0-9][0-9 ().\-]{3,24}\s*$"
REQUEST_ID_PATTERN = r"^$|^[a-z]{3}-[0-9]{8}-[0-9a-f]{12}$"


def subject_params(*, kind: str) -> dict[str, Any]:
    """``request_id``, ``email``, ``phone`` and ``business_id`` for a ``kind`` request form."""
    return {
        "request_id": Param(
            "",
            type="string",
            pattern=REQUEST_ID_PATTERN,
            title="Request id",
            description=(
                f"An existing {kind} request (from intake or `python -m governance request new`). "
                "When given, the identities are read from the request and the e-mail and phone fields are ignored."
            ),
            section="Request",
        ),
        "email": Param(
            "",
            type="string",
            pattern=EMAIL_PATTERN,
            title="E-mail address",
            description="The person's e-mail address, as they gave it. Case and surrounding spaces do not matter.",
            section="The person",
        ),
        "phone": Param(
            "",
            type="string",
            pattern=PHONE_PATTERN,
            title="Phone number",
            description=(
                "The person's phone number in any format; a number without +country code is read in the "
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
