-- Least privilege: the role that runs migrations owns every object; pods log in as a
-- member of batchyard_runtime (DML only), reports as a member of batchyard_reader.
-- Both are NOLOGIN groups. An owner without CREATEROLE needs a DBA to create them
-- first (README "Security"); one with it (or a superuser) creates them here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batchyard_runtime') THEN
        CREATE ROLE batchyard_runtime NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batchyard_reader') THEN
        CREATE ROLE batchyard_reader NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'roles batchyard_runtime and batchyard_reader do not exist and % may '
                    'not create them: a DBA runs CREATE ROLE batchyard_runtime NOLOGIN; '
                    'CREATE ROLE batchyard_reader NOLOGIN; first', current_user;
END
$$;

REVOKE CREATE ON SCHEMA batchyard FROM PUBLIC;
GRANT USAGE ON SCHEMA batchyard TO batchyard_runtime, batchyard_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA batchyard TO batchyard_runtime;
-- the migration state is the owner's to change
REVOKE INSERT, UPDATE, DELETE ON batchyard.schema_migrations FROM batchyard_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA batchyard TO batchyard_runtime;
GRANT SELECT ON ALL TABLES IN SCHEMA batchyard TO batchyard_reader;
-- tables of later migrations, created by the same owner, get the same grants
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO batchyard_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard
    GRANT USAGE, SELECT ON SEQUENCES TO batchyard_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA batchyard GRANT SELECT ON TABLES TO batchyard_reader;
