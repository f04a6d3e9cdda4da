-- tokens_online: estimated input tokens sent for this batch on the online path (a batch
-- job's are its jobs row's est_tokens), for what `status` and `batches show` say it cost.
-- jobs_finished: the metrics' "last job finished" reads max(finished_at) on every scrape.
ALTER TABLE batchyard.batches
    ADD COLUMN tokens_online bigint NOT NULL DEFAULT 0 CHECK (tokens_online >= 0);

CREATE INDEX jobs_finished ON batchyard.jobs (finished_at) WHERE finished_at IS NOT NULL;
