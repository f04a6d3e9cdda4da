-- Reuse (CONTRACT §13): a stored vector is found by the sha256 of its text, for the same
-- model, dims and task type. Rows written before this migration have no hash and so are
-- never reused.
ALTER TABLE batchyard.embeddings
    ADD COLUMN task_type   text,
    ADD COLUMN text_sha256 bytea;

CREATE INDEX embeddings_reuse ON batchyard.embeddings (text_sha256, model, dims)
    WHERE text_sha256 IS NOT NULL;

-- items_reused: items that cost nothing (a stored vector copied, or a text sent once for
-- several items). sent_attempt / sent_mask: which of that attempt's items went to Gemini
-- (bit n of the mask for item n), fixed once so that every retry of the attempt, and its
-- poll, agree on it.
ALTER TABLE batchyard.batches
    ADD COLUMN items_reused integer NOT NULL DEFAULT 0 CHECK (items_reused >= 0),
    ADD COLUMN sent_attempt integer,
    ADD COLUMN sent_mask    bytea;
