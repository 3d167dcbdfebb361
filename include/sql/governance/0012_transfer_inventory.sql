-- Subprocessor and transfer inventory snapshots (subprocessor_inventory DAG), one per run: which
-- version of include/subprocessors.yaml and of the data map it was built from, every entry and
-- every violation (names, countries, categories, dates: never personal data), and where the
-- published report is. The snapshot of the version customers were last notified of is the
-- baseline the next runs report changes against.
CREATE TABLE governance.transfer_inventory (
    run_id             text PRIMARY KEY,
    inventoried_at     timestamptz NOT NULL,
    list_version       text NOT NULL,
    list_sha256        text NOT NULL CHECK (list_sha256 ~ '^[0-9a-f]{64}$'),
    datamap_version    text NOT NULL,
    datamap_sha256     text NOT NULL,
    notice_version     text NOT NULL,
    is_clean           boolean NOT NULL,
    violation_count    integer NOT NULL CHECK (violation_count >= 0),
    entries            jsonb NOT NULL CHECK (jsonb_typeof(entries) = 'array'),
    violations         jsonb NOT NULL CHECK (jsonb_typeof(violations) = 'array'),
    report_uri         text
);
-- The notified baseline: the latest snapshot of a list version.
CREATE INDEX transfer_inventory_version_idx ON governance.transfer_inventory (list_version, inventoried_at DESC);
