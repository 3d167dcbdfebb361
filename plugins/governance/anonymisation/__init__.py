"""Anonymised industry insights (privacy policy 2.2): aggregates computed inside PostgreSQL,
thresholds, generalisation and complementary suppression, optional differential privacy with a
budget ledger, and an independent check before anything is published."""
