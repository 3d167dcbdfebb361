"""The Python normaliser and PostgreSQL's lower() agree, so look-ups match both ways."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from governance.identity import normalise_email

TYPED = [
    "Alice@Example.COM",
    "ÅSA.LINDGRÖN@Exempel.SE",
    "ΟΔΥΣΣΕΑΣ@example.gr",
    "İLKER@example.com",
    "JÜRGEN.STRAẞE@beispiel.de",
    "ÉLODIE@Exemple.FR",
    "МАРИЯ@пример.рф",
    "Dz@Example.com",
]


def test_email_normaliser_equals_postgres_lower_of_the_typed_value(make_db: Callable[[str], str]) -> None:
    url = make_db("lower")
    with psycopg.connect(url) as conn:
        for typed in TYPED:
            (db_lower,) = conn.execute("SELECT lower(normalize(%s, NFC))", (typed,)).fetchone() or (None,)
            assert normalise_email(typed) == db_lower, typed
