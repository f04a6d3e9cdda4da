ALTER TABLE batchyard.jobs
    DROP COLUMN IF EXISTS requests_succeeded,
    DROP COLUMN IF EXISTS requests_failed,
    DROP COLUMN IF EXISTS polled_at;
