-- 0007: the change feed (PopulationService.WatchChanges) as a transactional outbox.
--
-- Triggers write an event row in the same transaction as every change to citizens, cards and
-- old-number links, whichever code path made it, and NOTIFY registry_changes (delivered at
-- commit). Events are created without a feed position: identity values are taken at insert
-- time, not in commit order, so a reader following them could pass an event that commits
-- later with a smaller number. A sequencer (registry.api.feed, one at a time under an
-- advisory lock) numbers the committed events after the highest position given so far, in
-- its own transaction; readers only ever see numbered events, so positions only grow in the
-- order readers can see them and a resumed reader misses nothing and sees nothing twice.
CREATE TABLE change_events (
    id        bigint GENERATED ALWAYS AS IDENTITY,
    sequence  bigint,
    type      smallint NOT NULL,
    pin       text NOT NULL,
    new_pin   text,
    time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT change_events_pkey PRIMARY KEY (id),
    CONSTRAINT change_events_sequence_key UNIQUE (sequence),
    -- 1 BORN, 2 DIED, 3 UPDATED, 4 PIN_REPLACED, 5 CARD_ISSUED, 6 CARD_STATE_CHANGED
    CONSTRAINT change_events_type_check CHECK (type BETWEEN 1 AND 6)
);

CREATE INDEX change_events_unsequenced_idx ON change_events (id) WHERE sequence IS NULL;

CREATE FUNCTION record_change(kind smallint, pin text, new_pin text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_events (type, pin, new_pin) VALUES (kind, pin, new_pin);
    PERFORM pg_notify('registry_changes', '');
END $$;

-- A bulk import of the existing population (SET LOCAL registry.bulk_import = 'on') creates
-- records, not births: it records no BORN events.
CREATE FUNCTION citizens_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF current_setting('registry.bulk_import', true) IS DISTINCT FROM 'on' THEN
            PERFORM record_change(1::smallint, NEW.pin);
        END IF;
    ELSIF NEW.replaced_by_pin IS NOT NULL AND OLD.replaced_by_pin IS NULL THEN
        PERFORM record_change(4::smallint, NEW.pin, NEW.replaced_by_pin);
    ELSIF NEW.status = 2 AND OLD.status <> 2 THEN
        PERFORM record_change(2::smallint, NEW.pin);
    ELSIF NEW.version <> OLD.version THEN
        PERFORM record_change(3::smallint, NEW.pin);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER citizens_change_feed AFTER INSERT OR UPDATE ON citizens
    FOR EACH ROW EXECUTE FUNCTION citizens_changed();

-- Superseding the previous card is part of issuing the new one: CARD_ISSUED says it.
CREATE FUNCTION cards_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM record_change(5::smallint, NEW.pin);
    ELSIF NEW.state <> OLD.state AND NEW.state <> 2 THEN
        PERFORM record_change(6::smallint, NEW.pin);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER cards_change_feed AFTER INSERT OR UPDATE ON cards
    FOR EACH ROW EXECUTE FUNCTION cards_changed();

CREATE FUNCTION legacy_ids_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM record_change(3::smallint, NEW.pin);
    RETURN NULL;
END $$;

CREATE TRIGGER legacy_ids_change_feed AFTER INSERT ON legacy_ids
    FOR EACH ROW EXECUTE FUNCTION legacy_ids_changed();
