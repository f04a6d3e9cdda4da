ALTER TABLE batchyard.pack_members DROP COLUMN IF EXISTS est_tokens;
