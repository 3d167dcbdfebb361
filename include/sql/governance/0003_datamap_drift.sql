-- History of data-map drift checks (datamap_drift DAG): what the map missed, run by run.
-- Reports hold names, types, counts and kinds of values, never a value.
CREATE TABLE governance.datamap_drift_reports (
    run_id           text PRIMARY KEY,
    checked_at       timestamptz NOT NULL,
    datamap_version  text NOT NULL,
    datamap_sha256   text NOT NULL,
    is_clean         boolean NOT NULL,
    blocking         integer NOT NULL,
    warnings         integer NOT NULL,
    report           jsonb NOT NULL
);
