-- Governance schema, version 6: what privacy staff did with each request on the Privacy requests
-- page (and the CLI): recorded it, started a run, approved, revealed an export's passphrase or
-- viewed its link, opened a certificate. Append-only; the actor is the user Airflow authenticated.
-- `detail` holds ids and choices only (a run id, a verification method), never an identity.
CREATE TABLE governance.request_actions (
    action_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  text NOT NULL REFERENCES governance.privacy_requests (request_id),
    action      text NOT NULL CHECK (action IN (
                    'recorded', 'run_started', 'approved', 'verified', 'passphrase_revealed',
                    'link_viewed', 'certificate_viewed')),
    actor       text NOT NULL CHECK (length(trim(actor)) > 0),
    actor_role  text,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX request_actions_request_idx ON governance.request_actions (request_id, at);

CREATE FUNCTION governance.request_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'governance.request_actions is append-only';
END $$;
CREATE TRIGGER request_actions_append_only BEFORE UPDATE OR DELETE ON governance.request_actions
    FOR EACH ROW EXECUTE FUNCTION governance.request_actions_append_only();
