-- est_tokens: a member's share of its pack's estimated tokens, so that `batches show` and
-- the cost figures charge each batch what it sent (a pack's job has no jobs row).
ALTER TABLE batchyard.pack_members
    ADD COLUMN est_tokens bigint NOT NULL DEFAULT 0 CHECK (est_tokens >= 0);
