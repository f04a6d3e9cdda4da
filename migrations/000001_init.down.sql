DROP TABLE IF EXISTS batchyard.embeddings;
DROP TABLE IF EXISTS batchyard.batches;
