-- Governance schema, version 19: retention of DynamoDB tables by their TTL attribute.
--
-- A DynamoDB table's retention rule (action `ttl` in include/datamap.yaml) sets each item's TTL
-- attribute no later than its age plus the period (DynamoDB then deletes the item itself); its
-- run is recorded in governance.retention_runs like every other rule. `rows_scanned` counts the
-- items read, `rows_affected` the items whose TTL was set, lowered or removed (held) or that were
-- deleted long past their TTL, `cascade` the count of each of those.
ALTER TABLE governance.retention_runs DROP CONSTRAINT retention_runs_action_check;
ALTER TABLE governance.retention_runs ADD CONSTRAINT retention_runs_action_check
    CHECK (action IN ('delete_rows', 'null_fields', 'generalise', 'delete_objects', 'delete_orphans', 'ttl'));
