-- 0004: the audit log (SPEC §7): who touched which citizen, when, how it ended and why.
--
-- Append-only: triggers refuse UPDATE, DELETE and TRUNCATE for every role, the server's
-- included. Tamper-evident: entry n stores hash_n = SHA-256(hash_{n-1} || canonical(entry n))
-- (registry.audit.canonical), so an entry edited, deleted or reordered behind the triggers'
-- back (a superuser disabling them) breaks the chain, and `registry audit verify` names the
-- first broken link. audit_head holds the chain's last link; writers lock its one row to
-- append, which orders the entries of every server process into one chain.
CREATE TABLE audit_log (
    seq         bigint NOT NULL,
    time        timestamptz NOT NULL,
    agency_id   text NOT NULL,
    method      text NOT NULL,
    pins        text[] NOT NULL,
    outcome     text NOT NULL,
    purpose     text NOT NULL,
    request_id  text NOT NULL,
    hash        bytea NOT NULL,
    CONSTRAINT audit_log_pkey PRIMARY KEY (seq),
    CONSTRAINT audit_log_seq_check CHECK (seq > 0),
    CONSTRAINT audit_log_hash_check CHECK (length(hash) = 32)
);

-- A citizen's access history (ListAccessLog): entries whose pins contain the citizen's PIN.
CREATE INDEX audit_log_pins_idx ON audit_log USING gin (pins);

CREATE TABLE audit_head (
    id    boolean NOT NULL DEFAULT true,
    seq   bigint NOT NULL,
    hash  bytea NOT NULL,
    CONSTRAINT audit_head_pkey PRIMARY KEY (id),
    CONSTRAINT audit_head_one_row CHECK (id),
    CONSTRAINT audit_head_hash_check CHECK (length(hash) = 32)
);

-- The genesis link: the hash "before" entry 1 is 32 zero bytes.
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- The head only moves forward, one appended entry at a time, and is never removed.
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq <= OLD.seq OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the audit head only moves forward (from % to % refused)', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'the audit head must name an appended entry (seq %)', NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();
CREATE TRIGGER audit_head_keep BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, audit_head FROM PUBLIC;
