-- The roles are the cluster's, possibly shared by other databases: only the grants go.
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard REVOKE SELECT ON TABLES FROM batchyard_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard
    REVOKE USAGE, SELECT ON SEQUENCES FROM batchyard_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM batchyard_runtime;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA batchyard FROM batchyard_runtime, batchyard_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA batchyard FROM batchyard_runtime, batchyard_reader;
REVOKE USAGE ON SCHEMA batchyard FROM batchyard_runtime, batchyard_reader;
