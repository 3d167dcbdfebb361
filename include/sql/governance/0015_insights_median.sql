-- Governance schema, version 15: the median call duration of an insights cell, released only where
-- the release spec's median rule holds (include/insights_release.yaml, median_duration).
ALTER TABLE governance.insights_release_cells ADD COLUMN IF NOT EXISTS median_duration_s double precision;
ALTER TABLE insights.industry_insights ADD COLUMN IF NOT EXISTS median_duration_s double precision;
