-- One row per Gemini batch job, sharded or not (CONTRACT §11).
CREATE TABLE batchyard.jobs (
    batch_id     text NOT NULL REFERENCES batchyard.batches (batch_id) ON DELETE CASCADE,
    attempt      integer NOT NULL CHECK (attempt >= 0),
    shard        integer NOT NULL DEFAULT 0 CHECK (shard >= 0),
    job_name     text,
    display_name text NOT NULL,
    state        text NOT NULL CHECK (state IN (
                     'creating', 'pending', 'running', 'succeeded', 'failed', 'cancelled',
                     'expired')),
    items        integer NOT NULL CHECK (items >= 0),
    est_tokens   bigint NOT NULL CHECK (est_tokens >= 0),
    input_file   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (batch_id, attempt, shard)
);

CREATE INDEX jobs_unfinished ON batchyard.jobs (state)
    WHERE state IN ('creating', 'pending', 'running');

-- origin_seq: the batch.submit of attempt 0, for re-drives of the whole batch.
-- job_failures: jobs of this batch the Batch API failed whole (the online fallback's count).
-- embed_path: which path produced the embeddings: batch, online, or both.
ALTER TABLE batchyard.batches
    ADD COLUMN origin_seq bigint,
    ADD COLUMN job_failures integer NOT NULL DEFAULT 0 CHECK (job_failures >= 0),
    ADD COLUMN embed_path text CHECK (embed_path IN ('batch', 'online', 'both'));
