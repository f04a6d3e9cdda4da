ALTER TABLE batchyard.batches
    DROP COLUMN IF EXISTS origin_seq,
    DROP COLUMN IF EXISTS job_failures,
    DROP COLUMN IF EXISTS embed_path;
DROP TABLE IF EXISTS batchyard.jobs;
