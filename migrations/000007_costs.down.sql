DROP INDEX IF EXISTS batchyard.jobs_finished;
ALTER TABLE batchyard.batches DROP COLUMN IF EXISTS tokens_online;
