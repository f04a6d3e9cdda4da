-- Packing (CONTRACT §12): small batches share one job. A pack is recorded with its members
-- before its job is created; `open` until sealed, then its state is its job's (as jobs.state).
CREATE TABLE batchyard.packs (
    pack_id      text PRIMARY KEY,
    display_name text NOT NULL UNIQUE,
    model        text NOT NULL,
    dims         integer,
    task_type    text,
    job_name     text,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN
                 ('open', 'creating', 'pending', 'running', 'succeeded', 'failed',
                  'cancelled', 'expired')),
    items        integer NOT NULL DEFAULT 0,
    est_tokens   bigint NOT NULL DEFAULT 0,
    input_file   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sealed_at    timestamptz,
    finished_at  timestamptz
);
CREATE INDEX packs_live ON batchyard.packs (state, created_at)
    WHERE state IN ('open', 'creating', 'pending', 'running');

CREATE TABLE batchyard.pack_members (
    pack_id  text NOT NULL REFERENCES batchyard.packs ON DELETE CASCADE,
    batch_id text NOT NULL,
    attempt  integer NOT NULL,
    items    integer NOT NULL,
    PRIMARY KEY (pack_id, batch_id)
);
CREATE UNIQUE INDEX pack_members_attempt ON batchyard.pack_members (batch_id, attempt);
