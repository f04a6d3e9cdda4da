-- The failed items of a finished job, kept until every shard of its attempt has
-- finished: the attempt's next step (retry or dead-letter) needs all of them at once.
ALTER TABLE batchyard.jobs ADD COLUMN failures jsonb;
