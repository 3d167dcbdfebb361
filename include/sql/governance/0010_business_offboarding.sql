-- Governance schema, version 10: business offboarding (policy 6: data no longer needed).
-- When a business client leaves, everything its account holds about its callers and users is
-- erased through the erasure machinery (plans, progress, certificates). The request is a privacy
-- request of kind 'offboarding': its subject is a business id, not a person, so it carries no
-- identity; it records why the data is no longer needed.
ALTER TABLE governance.privacy_requests DROP CONSTRAINT privacy_requests_kind_check;
ALTER TABLE governance.privacy_requests
    ADD CONSTRAINT privacy_requests_kind_check CHECK (kind IN ('export', 'erasure', 'offboarding'));
ALTER TABLE governance.privacy_requests DROP CONSTRAINT privacy_requests_check1;
ALTER TABLE governance.privacy_requests ADD CONSTRAINT privacy_requests_subject_check CHECK (
    CASE WHEN kind = 'offboarding'
         THEN business_id IS NOT NULL AND email_hash IS NULL AND phone_hash IS NULL
         ELSE email_hash IS NOT NULL OR phone_hash IS NOT NULL END);
ALTER TABLE governance.privacy_requests ADD COLUMN reason text;
CREATE INDEX privacy_requests_open_offboarding_idx ON governance.privacy_requests (business_id)
    WHERE kind = 'offboarding' AND status NOT IN ('completed', 'rejected');

-- The identities of the business's people, encrypted (AES-GCM, key id recorded), for the
-- processor look-ups of an offboarding being carried out: after the app's rows are gone,
-- verification still has to ask each processor whether it holds the person. Deleted when the
-- request closes as completed.
CREATE TABLE governance.offboarding_people (
    request_id         text NOT NULL REFERENCES governance.privacy_requests (request_id),
    person             integer NOT NULL CHECK (person >= 0),
    email_encrypted    text,
    phone_encrypted    text,
    encryption_key_id  text NOT NULL,
    PRIMARY KEY (request_id, person),
    CHECK (email_encrypted IS NOT NULL OR phone_encrypted IS NOT NULL)
);
