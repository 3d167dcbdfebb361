-- Governance schema, version 9: the runs of each request, and which run superseded which.
-- Every run that opens a request is recorded here. When a run claims the request (it starts to
-- work on it: an export that builds, an erasure that executes its plan), every earlier run of the
-- request not superseded yet is marked superseded by it, with the time: the request says who
-- superseded whom, and when. Task code cannot reach Airflow's metadata database, so the
-- maintenance pass (`python -m governance maintain`) closes superseded runs Airflow still shows
-- `running` (a killed run) as failed, with a note, and records here what it did.
-- Ids only: run ids and DAG ids, never an identity.
CREATE TABLE governance.request_runs (
    request_id           text NOT NULL REFERENCES governance.privacy_requests (request_id),
    dag_run_id           text NOT NULL,
    dag_id               text,
    opened_at            timestamptz NOT NULL,
    superseded_by        text,
    superseded_at        timestamptz,
    -- the claim this run held when it was superseded (a killed run's stale claim), if any
    held_claim           boolean NOT NULL DEFAULT false,
    run_closed_at        timestamptz,
    run_close_note       text,
    PRIMARY KEY (request_id, dag_run_id),
    CHECK ((superseded_by IS NULL) = (superseded_at IS NULL)),
    CHECK (superseded_by IS NULL OR superseded_by <> dag_run_id),
    CHECK (run_closed_at IS NULL OR superseded_at IS NOT NULL)
);
CREATE INDEX request_runs_to_close_idx ON governance.request_runs (superseded_at)
    WHERE superseded_by IS NOT NULL AND run_closed_at IS NULL;
