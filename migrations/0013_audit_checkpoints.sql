-- 0013: signed checkpoints of the audit chain (SPEC §7).
--
-- A plain hash chain only proves that entries agree with each other: whoever can write the
-- table can rewrite an entry and recompute every later hash, or cut the tail and rewind the
-- head. So a server signs (sequence, head hash, time) with the registry's signing key, which
-- is not in the database (registry.checkpoints), at least every 10 s while entries are written
-- and at shutdown. Each checkpoint is kept here, appended to a file outside the database and
-- served by AuditService.GetAuditCheckpoint; `registry audit verify` checks the chain against
-- every one it knows. This table is a convenience copy, not the trust anchor: a row forged
-- here fails its signature check, and a row removed here is still in the file and in the
-- hands of agencies that fetched it.
CREATE TABLE audit_checkpoints (
    seq        bigint NOT NULL,
    head_hash  bytea NOT NULL,
    time       timestamptz NOT NULL,
    jws        text NOT NULL,
    CONSTRAINT audit_checkpoints_pkey PRIMARY KEY (seq),
    CONSTRAINT audit_checkpoints_seq_check CHECK (seq > 0),
    CONSTRAINT audit_checkpoints_hash_check CHECK (length(head_hash) = 32)
);

-- Append-only like the log itself (audit_refuse_change comes from 0004).
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM PUBLIC;
