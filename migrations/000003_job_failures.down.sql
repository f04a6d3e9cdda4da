ALTER TABLE batchyard.jobs DROP COLUMN IF EXISTS failures;
