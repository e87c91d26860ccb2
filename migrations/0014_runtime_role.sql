-- 0014: the server serves as a runtime role that owns nothing (SPEC §7, issue 12).
--
-- Migrations and operator commands run as the owner of every table; the server connects as a
-- role that is a member of `registry_runtime` and holds only what each table needs. In
-- particular the audit log takes INSERT and SELECT only, and audit_head UPDATE only (its
-- trigger lets it move forward only): with the server's credentials nobody can rewrite, delete
-- or truncate audit entries, disable a trigger (owners only), set session_replication_role or
-- run programs (superusers only). Every later migration that creates a table grants
-- registry_runtime its privileges on it in the same file (tests/db/test_roles.py checks that
-- every table has them and no more).
--
-- The role must exist before this runs: the embedded cluster creates it; an operator of an
-- existing PostgreSQL creates it as docs/operations.md "Database roles" says.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'registry_runtime') THEN
        RAISE EXCEPTION 'role registry_runtime does not exist: create it first '
            '(docs/operations.md, "Database roles")';
    END IF;
END $$;

-- Nobody but the owner creates objects in this database, temporary ones included.
DO $$ BEGIN
    EXECUTE format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO registry_runtime', current_database());
END $$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO registry_runtime;

-- Reference data and configuration: read only (agencies are managed by operator commands).
GRANT SELECT ON schema_migrations, pin_prefixes, agencies, agency_keys TO registry_runtime;

-- The register: created and changed, never deleted.
GRANT SELECT, INSERT, UPDATE ON citizens, cards, legacy_ids, pin_buckets, idempotency_keys,
    import_sources TO registry_runtime;
GRANT SELECT, INSERT ON citizen_history TO registry_runtime;

-- The change feed: events are recorded by triggers and numbered by the server's sequencer.
GRANT SELECT, INSERT, UPDATE ON change_events TO registry_runtime;

-- The audit log: append and read, nothing else.
GRANT SELECT, INSERT ON audit_log, audit_checkpoints TO registry_runtime;
GRANT SELECT, UPDATE ON audit_head TO registry_runtime;
