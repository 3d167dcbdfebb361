-- Governance schema, version 16: partition-aware retention (retention_sweep, policy 6).
--
-- Where a mapped table is range-partitioned on a delete_rows rule's age column, the sweep drops
-- each wholly expired partition in which nothing is held (README, "Retention") instead of deleting
-- its rows one batch at a time. Detaching and dropping a partition needs ownership of the table,
-- which the task role never has (it owns nothing: README, "Database roles"), so it goes through the
-- one function below, which runs as its owner (SECURITY DEFINER) and allows exactly this:
--
--   * the caller's login role (session_user) may already DELETE every row of the parent table
--     (in a deployment: the task role, on the tables the data map names, from `grants --apply`),
--     so dropping a partition lets it do nothing it could not do row by row;
--   * the parent is range-partitioned on one timestamptz column; the partition is a direct,
--     ordinary partition of it, not the DEFAULT partition, with a finite upper bound;
--   * that upper bound is at or before `cutoff`, and `cutoff` is not in the future: every row the
--     partition can hold is older than the cutoff.
--
-- `lock_only => true` takes a SHARE lock on the partition and nothing else (no writes to it until
-- the transaction ends), so the sweep can check in the same transaction that nothing in it is held
-- and then drop it: `lock_only => false` detaches (the parent is locked for a moment) and drops it.
-- The function's owner must own the partitioned tables (or be a member of their owner): the
-- migration role does not, so a DBA gives the function to the app tables' owner once after this
-- migration (include/sql/roles/database_roles.sql does it when run again). Until then the
-- function refuses with insufficient_privilege and the sweep deletes those partitions' rows in
-- batches instead, as for any table.
CREATE FUNCTION governance.drop_expired_partition(
    parent regclass, part regclass, cutoff timestamptz, lock_only boolean DEFAULT false
) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound  text;
    upper  text;
    upper_bound timestamptz;
BEGIN
    IF cutoff IS NULL OR cutoff > now() THEN
        RAISE EXCEPTION 'drop_expired_partition: the cutoff must be given and not in the future'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT has_table_privilege(session_user, parent, 'DELETE') THEN
        RAISE EXCEPTION 'drop_expired_partition: % may not delete from %', session_user, parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_partitioned_table p
          JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
         WHERE p.partrelid = parent AND p.partstrat = 'r' AND p.partnatts = 1
           AND a.atttypid = 'timestamptz'::regtype
    ) THEN
        RAISE EXCEPTION 'drop_expired_partition: % is not range-partitioned on one timestamptz column', parent
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT pg_get_expr(c.relpartbound, c.oid) INTO bound
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND i.inhrelid = part AND c.relkind = 'r';
    IF bound IS NULL THEN
        RAISE EXCEPTION 'drop_expired_partition: % is not a partition of %', part, parent
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    upper := (regexp_match(bound, '^FOR VALUES FROM \(.*\) TO \((.*)\)$'))[1];
    IF upper IS NULL OR upper = 'MAXVALUE' THEN
        RAISE EXCEPTION 'drop_expired_partition: % has no finite upper bound', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- pg_get_expr prints the bound as a quoted literal: '2025-10-01 00:00:00+00'
    upper_bound := replace(substr(upper, 2, length(upper) - 2), '''''', '''')::timestamptz;
    IF upper_bound > cutoff THEN
        RAISE EXCEPTION 'drop_expired_partition: % holds rows up to %, after the cutoff %', part, upper_bound, cutoff
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = parent), 'USAGE')
            AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = part), 'USAGE')) THEN
        RAISE EXCEPTION 'drop_expired_partition: the function''s owner % does not own %', current_user, parent
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'give the function to the app tables'' owner (include/sql/roles/database_roles.sql)';
    END IF;
    IF lock_only THEN
        EXECUTE format('LOCK TABLE %s IN SHARE MODE', part);
    ELSE
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
        EXECUTE format('DROP TABLE %s', part);
    END IF;
    RETURN upper_bound;
END;
$$;
REVOKE ALL ON FUNCTION governance.drop_expired_partition(regclass, regclass, timestamptz, boolean) FROM PUBLIC;

-- What each rule's run dropped whole (a dry run: would drop). Its rows are counted in rows_affected.
ALTER TABLE governance.retention_runs ADD COLUMN partitions_dropped integer NOT NULL DEFAULT 0;
