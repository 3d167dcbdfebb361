-- Export bundles (dsr_export, privacy policy 5.1): the passphrase of each request's bundle and
-- the record of every bundle a run produced.
--
-- The passphrase is generated once per request (re-runs reuse it, so the person needs only one),
-- kept encrypted with the governance encryption key (AES-256-GCM, context bound to the request,
-- key id recorded) and revealed to privacy staff by `python -m governance export-passphrase`,
-- who send it by a different channel than the download link. Reveals are counted.
CREATE TABLE governance.export_passphrases (
    request_id            text PRIMARY KEY REFERENCES governance.privacy_requests (request_id) ON DELETE CASCADE,
    passphrase_encrypted  text NOT NULL,
    encryption_key_id     text NOT NULL,
    created_at            timestamptz NOT NULL,
    reveal_count          integer NOT NULL DEFAULT 0,
    last_revealed_at      timestamptz,
    last_revealed_by      text
);

-- One row per (request, DAG run): what the bundle held and what the quality gate said. Counts,
-- checksums and check results only: never an identity, a key of the bundle or its link (those go
-- to privacy_requests.result_uri alone).
CREATE TABLE governance.export_bundles (
    request_id         text NOT NULL REFERENCES governance.privacy_requests (request_id) ON DELETE CASCADE,
    run_id             text NOT NULL,
    status             text NOT NULL
                       CHECK (status IN ('staged', 'gate_passed', 'gate_failed', 'published', 'discarded')),
    generated_at       timestamptz NOT NULL,
    data_map_version   text NOT NULL,
    files              integer NOT NULL,
    files_digest       text NOT NULL,
    plaintext_bytes    bigint NOT NULL,
    ciphertext_bytes   bigint NOT NULL,
    ciphertext_sha256  text NOT NULL,
    bundle_counts      jsonb NOT NULL,
    source_counts      jsonb NOT NULL,
    gate_result        jsonb,
    published_at       timestamptz,
    link_expires_at    timestamptz,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (request_id, run_id)
);
