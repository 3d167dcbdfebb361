-- Governance schema, version 8: the retention sweep (retention_sweep, policy 6).
-- Counts, cutoffs and durations only: never a row's values.

-- One row per rule per run (and per dry run): what the rule found due, changed and kept.
-- `held` counts due rows kept by a legal hold or exception (themselves or an owned child),
-- `held_reasons` says how many for each reason; `cascade` counts owned rows deleted per table
-- and mentions cleared. A run re-tried after a crash updates its own row (run_id, rule).
CREATE TABLE governance.retention_runs (
    run_id            text NOT NULL,
    rule              text NOT NULL,
    system            text NOT NULL,
    target            text NOT NULL,             -- schema.table or prefix name
    action            text NOT NULL CHECK (action IN ('delete_rows', 'null_fields', 'generalise', 'delete_objects', 'delete_orphans')),
    dry_run           boolean NOT NULL,
    as_of             timestamptz NOT NULL,
    cutoff            timestamptz NOT NULL,
    scanned_from      timestamptz,               -- the watermark the scan started at (NULL: from the oldest row)
    rows_scanned      bigint NOT NULL DEFAULT 0 CHECK (rows_scanned >= 0),
    rows_affected     bigint NOT NULL DEFAULT 0 CHECK (rows_affected >= 0),
    objects_affected  bigint NOT NULL DEFAULT 0 CHECK (objects_affected >= 0),
    held              bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    held_reasons      jsonb NOT NULL DEFAULT '{}',
    cascade           jsonb NOT NULL DEFAULT '{}',
    batches           integer NOT NULL DEFAULT 0,
    longest_batch_ms  double precision NOT NULL DEFAULT 0,
    duration_ms       double precision NOT NULL DEFAULT 0,
    status            text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    PRIMARY KEY (run_id, rule)
);
CREATE INDEX retention_runs_rule_idx ON governance.retention_runs (rule, as_of);

-- Per rule: rows aged before `low_watermark` were all handled (nothing held or waiting on a
-- condition below it), so the next sweep starts there instead of the oldest row. `rule_sha256`
-- is the digest of the rule's statements: a changed rule (another field to null, a new
-- condition) starts again from the oldest row.
CREATE TABLE governance.retention_watermarks (
    rule            text PRIMARY KEY,
    rule_sha256     text NOT NULL,
    low_watermark   timestamptz NOT NULL,
    as_of           timestamptz NOT NULL,
    run_id          text NOT NULL,
    updated_at      timestamptz NOT NULL
);
