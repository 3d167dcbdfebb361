-- Governance schema, version 7: a completed or rejected request stays so unless reopened.
-- Running a finished request again is refused (its certificate or bundle stands); serving it again
-- needs an explicit reopening with a reason and the user who asked, kept here for the auditor.
-- The reason is staff's words about the request, never the person's identities.
CREATE TABLE governance.request_reopenings (
    request_id       text NOT NULL REFERENCES governance.privacy_requests (request_id),
    reopened_at      timestamptz NOT NULL,
    reopened_by      text NOT NULL CHECK (length(btrim(reopened_by)) > 0),
    reason           text NOT NULL CHECK (length(btrim(reason)) >= 10 AND length(reason) <= 1000),
    previous_status  text NOT NULL CHECK (previous_status IN ('completed', 'rejected')),
    previous_result  text,
    PRIMARY KEY (request_id, reopened_at)
);
