-- 0006: let a server append a group of audit entries and move the head in ONE statement
-- (registry.db.audit.append): the head's "names an appended entry" check moves from the
-- row trigger, which runs before the same statement's INSERT is visible, to a constraint
-- trigger deferred to commit. The head still only moves forward, at once.
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq <= OLD.seq OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the audit head only moves forward (from % to % refused)', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION audit_head_names_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'the audit head must name an appended entry (seq %)', NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER audit_head_names_entry AFTER UPDATE ON audit_head
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION audit_head_names_entry();
