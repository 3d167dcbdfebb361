-- Governance schema, version 14: the privacy-request lifecycle, deadlines per jurisdiction, the
-- legal extension, dispatch by the intake and the deadline alerts (policy 5, 11).
--
-- Every status change of a request goes through the trigger below, whoever writes it (the intake,
-- a workflow's last task, the Privacy requests page, the CLI): a change that is not a transition
-- of governance.request_status_transitions is refused, and every change is kept, append-only, in
-- governance.request_transitions. `extended` is the state a request enters when its deadline is
-- extended (once, with a reason); from there it goes on as from the state it was extended in
-- (`extended_from`; `effective_status` reads through it).
ALTER TABLE governance.privacy_requests DROP CONSTRAINT privacy_requests_status_check;
ALTER TABLE governance.privacy_requests ADD CONSTRAINT privacy_requests_status_check CHECK (status IN (
    'received', 'awaiting_verification', 'verified', 'dispatched', 'in_progress', 'completed', 'failed',
    'rejected', 'extended', 'responded'));
ALTER TABLE governance.privacy_requests
    ADD COLUMN jurisdiction      text CHECK (jurisdiction ~ '^[A-Z]{2}(-[A-Z0-9]{1,3})?$'),
    ADD COLUMN original_due_at   timestamptz,
    ADD COLUMN extended_at       timestamptz,
    ADD COLUMN extended_by       text,
    ADD COLUMN extension_reason  text,
    ADD COLUMN extended_from     text,
    ADD COLUMN responded_at      timestamptz,
    ADD COLUMN responded_via     text CHECK (responded_via IN ('email', 'post', 'phone', 'portal', 'in_person')),
    ADD COLUMN dispatch_attempt  integer NOT NULL DEFAULT 1 CHECK (dispatch_attempt >= 1),
    ADD COLUMN dispatch_run_id   text,
    ADD COLUMN dispatched_at     timestamptz,
    ADD COLUMN effective_status  text GENERATED ALWAYS AS (
        CASE WHEN status = 'extended' THEN extended_from ELSE status END) STORED,
    ADD CONSTRAINT privacy_requests_extension_check CHECK (
        (extended_at IS NULL) = (extension_reason IS NULL) AND (extended_at IS NULL) = (original_due_at IS NULL)
        AND (extension_reason IS NULL OR length(btrim(extension_reason)) >= 10)),
    ADD CONSTRAINT privacy_requests_extended_check CHECK ((status = 'extended') = (extended_from IS NOT NULL)),
    ADD CONSTRAINT privacy_requests_responded_check CHECK (
        status <> 'responded' OR (responded_at IS NOT NULL AND responded_via IS NOT NULL));
CREATE INDEX privacy_requests_effective_status_idx ON governance.privacy_requests (effective_status);

-- The lifecycle: which status may follow which. `extended` is entered from any open status (once
-- per request, checked by the trigger) and left as from `extended_from`.
CREATE TABLE governance.request_status_transitions (
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO governance.request_status_transitions (from_status, to_status) VALUES
    ('received', 'awaiting_verification'), ('received', 'verified'), ('received', 'in_progress'),
    ('received', 'failed'), ('received', 'rejected'),
    ('awaiting_verification', 'verified'), ('awaiting_verification', 'in_progress'),
    ('awaiting_verification', 'failed'), ('awaiting_verification', 'rejected'),
    ('verified', 'dispatched'), ('verified', 'in_progress'), ('verified', 'failed'), ('verified', 'rejected'),
    ('dispatched', 'in_progress'), ('dispatched', 'completed'), ('dispatched', 'failed'), ('dispatched', 'rejected'),
    ('in_progress', 'completed'), ('in_progress', 'failed'), ('in_progress', 'rejected'),
    ('failed', 'verified'), ('failed', 'in_progress'), ('failed', 'completed'), ('failed', 'rejected'),
    ('completed', 'responded'), ('completed', 'received'), ('completed', 'verified'),
    ('rejected', 'responded'), ('rejected', 'received'), ('rejected', 'verified'),
    ('responded', 'received'), ('responded', 'verified');

-- Every status change, append-only: ids and statuses; `detail` is staff's or the system's words
-- about the request (never an identity).
CREATE TABLE governance.request_transitions (
    transition_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id     text NOT NULL REFERENCES governance.privacy_requests (request_id),
    from_status    text NOT NULL,
    to_status      text NOT NULL,
    at             timestamptz NOT NULL,
    detail         text
);
CREATE INDEX request_transitions_request_idx ON governance.request_transitions (request_id, transition_id);

CREATE FUNCTION governance.request_transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'governance.request_transitions is append-only';
END $$;
CREATE TRIGGER request_transitions_append_only BEFORE UPDATE OR DELETE ON governance.request_transitions
    FOR EACH ROW EXECUTE FUNCTION governance.request_transitions_append_only();

CREATE FUNCTION governance.request_lifecycle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current text := CASE WHEN OLD.status = 'extended' THEN OLD.extended_from ELSE OLD.status END;
BEGIN
    IF OLD.extended_at IS NOT NULL AND NEW.extended_at IS DISTINCT FROM OLD.extended_at THEN
        RAISE EXCEPTION USING ERRCODE = 'GVT01',
            MESSAGE = format('privacy request %s was already extended on %s: a deadline is extended once',
                             OLD.request_id, to_char(OLD.extended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'));
    END IF;
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.status = 'extended' THEN
        IF current IN ('completed', 'rejected', 'responded') THEN
            RAISE EXCEPTION USING ERRCODE = 'GVT01',
                MESSAGE = format('privacy request %s is %s: only an open request is extended', OLD.request_id, current);
        END IF;
        NEW.extended_from := current;
    ELSE
        IF NEW.status <> current AND NOT EXISTS (
            SELECT 1 FROM governance.request_status_transitions WHERE from_status = current AND to_status = NEW.status
        ) THEN
            RAISE EXCEPTION USING ERRCODE = 'GVT01',
                MESSAGE = format('privacy request %s may not go from %s to %s (not a transition of the request lifecycle)',
                                 OLD.request_id, OLD.status, NEW.status);
        END IF;
        NEW.extended_from := NULL;
    END IF;
    INSERT INTO governance.request_transitions (request_id, from_status, to_status, at, detail)
    VALUES (OLD.request_id, OLD.status, NEW.status, NEW.updated_at,
            COALESCE(NULLIF(current_setting('governance.transition_detail', true), ''), NEW.outcome_detail));
    RETURN NEW;
END $$;
CREATE TRIGGER privacy_requests_lifecycle BEFORE UPDATE OF status, extended_at ON governance.privacy_requests
    FOR EACH ROW EXECUTE FUNCTION governance.request_lifecycle();

-- A reopened request may have been responded to.
ALTER TABLE governance.request_reopenings DROP CONSTRAINT request_reopenings_previous_status_check;
ALTER TABLE governance.request_reopenings ADD CONSTRAINT request_reopenings_previous_status_check
    CHECK (previous_status IN ('completed', 'rejected', 'responded'));

-- New staff and intake actions on a request.
ALTER TABLE governance.request_actions DROP CONSTRAINT request_actions_action_check;
ALTER TABLE governance.request_actions ADD CONSTRAINT request_actions_action_check CHECK (action IN (
    'recorded', 'run_started', 'approved', 'verified', 'passphrase_revealed', 'link_viewed', 'certificate_viewed',
    'dispatched', 'extended', 'responded', 'retried'));

-- Deadline alerts sent (due within 7 days, overdue): one per request, kind, status and deadline, so
-- each is sent once per state change (and again after an extension moves the deadline).
CREATE TABLE governance.request_deadline_alerts (
    request_id  text NOT NULL REFERENCES governance.privacy_requests (request_id),
    alert       text NOT NULL CHECK (alert IN ('due_soon', 'overdue')),
    status      text NOT NULL,
    due_at      timestamptz NOT NULL,
    sent_at     timestamptz NOT NULL,
    PRIMARY KEY (request_id, alert, status, due_at)
);
