CREATE SCHEMA IF NOT EXISTS batchyard;

CREATE TABLE batchyard.batches (
    batch_id        text PRIMARY KEY,
    status          text NOT NULL CHECK (status IN (
                        'pending_submission', 'submitting', 'submitted', 'succeeded',
                        'partial', 'auth_failed', 'failed', 'dead', 'cancelled')),
    model           text NOT NULL,
    items_total     integer NOT NULL DEFAULT 0 CHECK (items_total >= 0),
    items_embedded  integer NOT NULL DEFAULT 0 CHECK (items_embedded >= 0),
    items_failed    integer NOT NULL DEFAULT 0 CHECK (items_failed >= 0),
    attempt         integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    job_name        text,
    input_file      text,
    key_fingerprint text,
    last_error      text,
    source          text,
    -- BATCH stream sequence of the batch.submit message of the current attempt:
    -- its items are read back from the stream when failed items are retried.
    input_seq       bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    submitted_at    timestamptz,
    completed_at    timestamptz
);

CREATE INDEX batches_status ON batchyard.batches (status);

CREATE TABLE batchyard.embeddings (
    item_id    text NOT NULL,
    model      text NOT NULL,
    batch_id   text NOT NULL,
    dims       integer NOT NULL CHECK (dims > 0),
    embedding  real[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, model)
);

CREATE INDEX embeddings_batch_id ON batchyard.embeddings (batch_id);
