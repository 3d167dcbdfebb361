"""Bad input to aggregate_anonymisation is refused with a clear message, by the trigger form (its
Params) where a schema can say it, and in any case by the first task (``check_release_input``),
before anything is read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk.definitions.param import ParamsDict

from governance.airflow.insights import insights_params
from governance.anonymisation.release import ReleaseInputError, check_release_input
from governance.anonymisation.spec import load_release_spec

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PERIOD = {"period_start": "2026-11-02", "period_end": "2026-11-08"}


def check(**params: Any) -> Any:
    return check_release_input({**PERIOD, **params}, spec=load_release_spec(), logical_date=NOW, now=NOW)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k_businesses": 1}, "k_businesses and k_callers must be at least 2"),
        ({"k_callers": 1}, "k_businesses and k_callers must be at least 2"),
        ({"k_businesses": -3}, "k_businesses and k_callers must be at least 2"),
        ({"k_businesses": "five"}, "k_businesses: expected a number"),
        ({"k_callers": 9.5}, "k_callers: expected a whole number, got 9.5"),  # not silently 9
        ({"epsilon": 0, "delta": 1e-6}, "epsilon must be greater than 0, got 0.0"),
        ({"epsilon": -0.5, "delta": 1e-6}, "epsilon must be greater than 0, got -0.5"),
        ({"epsilon": 1, "delta": 0}, r"delta must be between 0 and 1 \(exclusive\), got 0.0"),
        ({"epsilon": 1, "delta": 1}, r"delta must be between 0 and 1 \(exclusive\), got 1.0"),
        ({"epsilon": 1, "delta": -1e-6}, "delta must be between 0 and 1"),
        ({"epsilon": 1}, "with epsilon set, set delta too"),
        ({"delta": 1e-6}, "delta is set without epsilon"),
        ({"period_start": "2026-11-09", "period_end": "2026-11-02"}, "is before period_start 2026-11-09: the period is reversed"),
        ({"period_start": "2026-11-02", "period_end": ""}, "give both period_start and period_end, or neither"),
        ({"period_start": None, "period_end": "2026-11-08"}, "give both period_start and period_end, or neither"),
        ({"period_start": "2026-11-31", "period_end": "2026-12-06"}, "period: dates are YYYY-MM-DD"),
        ({"period_start": "2026-11-23", "period_end": "2026-12-03"}, "which is not over yet"),
        ({"period_start": "2027-01-04", "period_end": "2027-01-10"}, "which is not over yet"),  # wholly in the future
        ({"period_start": "2026-11-30", "period_end": "2026-11-30"}, "which is not over yet"),  # this week, not over
    ],
)
def test_the_first_task_refuses_bad_input_with_a_message_saying_what_to_fix(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ReleaseInputError, match=message):
        check(**params)


def test_a_single_day_is_not_an_empty_period_it_widens_to_its_iso_week() -> None:
    request = check(period_start="2026-11-04", period_end="2026-11-04")
    assert (request["period_start"], request["period_end"]) == ("2026-11-02", "2026-11-08")
    default = check(period_start=None, period_end=None)  # neither: the ISO week before the run
    assert (default["period_start"], default["period_end"]) == ("2026-11-23", "2026-11-29")


@pytest.mark.parametrize(
    ("name", "value"),
    [("k_businesses", 1), ("k_callers", 0), ("epsilon", 0), ("epsilon", -1.0), ("delta", 0), ("delta", 1),
     ("delta", 1.5), ("period_start", "yesterday"), ("period_end", "2026-13-01")],
)  # fmt: skip
def test_the_form_refuses_what_its_schema_can_say(name: str, value: Any) -> None:
    from airflow.exceptions import ParamValidationError

    params = ParamsDict(insights_params())
    with pytest.raises(ParamValidationError):
        params[name] = value
        params.validate()


def test_the_form_accepts_a_valid_release() -> None:
    params = ParamsDict(insights_params())
    for name, value in {**PERIOD, "k_businesses": 5, "k_callers": 10, "epsilon": 1.0, "delta": 1e-6}.items():
        params[name] = value
    assert params.validate()["epsilon"] == 1.0
