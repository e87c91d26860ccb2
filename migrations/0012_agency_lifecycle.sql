-- 0012: agency lifecycle. Re-enabling a disabled agency must not revive the tokens it held
-- before: enabled_at records when it was last enabled again, and the server refuses tokens
-- whose iat is earlier (registry.tokens, reason TOKEN_ISSUED_BEFORE_ENABLE). NULL = never
-- re-enabled since it was added.
--
-- A trigger, not the CLI, records the time: an operator's own `UPDATE agencies SET enabled =
-- true` must count as an enable too. clock_timestamp(), not now(): a token signed after the
-- operator's command but within its transaction is still a token of the new period.
ALTER TABLE agencies ADD COLUMN enabled_at timestamptz;

CREATE FUNCTION agencies_record_enable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enabled AND NOT OLD.enabled THEN
        NEW.enabled_at := clock_timestamp();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER agencies_record_enable
    BEFORE UPDATE OF enabled ON agencies
    FOR EACH ROW EXECUTE FUNCTION agencies_record_enable();
