ALTER TABLE batchyard.batches
    DROP COLUMN IF EXISTS sent_mask,
    DROP COLUMN IF EXISTS sent_attempt,
    DROP COLUMN IF EXISTS items_reused;
DROP INDEX IF EXISTS batchyard.embeddings_reuse;
ALTER TABLE batchyard.embeddings
    DROP COLUMN IF EXISTS text_sha256,
    DROP COLUMN IF EXISTS task_type;
