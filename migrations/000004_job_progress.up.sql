-- A running job's progress as the Batch API last reported it (`batchStats`): null
-- until a poll has seen it. The SDK drops these counts, so poll reads the raw answer.
ALTER TABLE batchyard.jobs
    ADD COLUMN requests_succeeded integer CHECK (requests_succeeded >= 0),
    ADD COLUMN requests_failed    integer CHECK (requests_failed >= 0),
    ADD COLUMN polled_at          timestamptz;
