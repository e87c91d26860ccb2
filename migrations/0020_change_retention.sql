-- 0020: change-feed retention (issue 18). Events older than the retention are pruned in the
-- background; a reader whose cursor is older than what is kept gets OUT_OF_RANGE naming the
-- oldest available position, never a silent gap.
--
-- change_feed_horizon.pruned_through: every numbered event at or below it is gone, every one
-- above it is kept. The sequencer numbers after max(sequence, pruned_through), so positions are
-- never reused even if every event was pruned.
CREATE TABLE change_feed_horizon (
    one             boolean NOT NULL DEFAULT true,
    pruned_through  bigint NOT NULL DEFAULT 0,
    pruned_at       timestamptz,
    CONSTRAINT change_feed_horizon_pkey PRIMARY KEY (one),
    CONSTRAINT change_feed_horizon_one_check CHECK (one)
);
INSERT INTO change_feed_horizon DEFAULT VALUES;

-- Prune up to max_rows of the oldest numbered events older than `keep`, in position order.
-- SECURITY DEFINER, so the runtime role needs no DELETE on change_events: with the server's
-- credentials nobody can delete events younger than a day, numbered or not, nor the newest one.
CREATE FUNCTION prune_change_events(keep interval, max_rows integer)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    horizon bigint;
    newest bigint;
    cutoff bigint;
    removed bigint;
BEGIN
    IF keep < interval '1 day' THEN
        RAISE EXCEPTION 'change events are kept at least one day (asked to keep %)', keep;
    END IF;
    IF max_rows < 1 OR max_rows > 100000 THEN
        RAISE EXCEPTION 'max_rows must be 1 to 100000';
    END IF;
    -- One pruner at a time (several server processes run one each).
    IF NOT pg_try_advisory_xact_lock(7217420250020) THEN
        RETURN 0;
    END IF;
    SELECT pruned_through INTO horizon FROM change_feed_horizon FOR UPDATE;
    SELECT max(sequence) INTO newest FROM change_events;
    -- The longest run of old events from the oldest kept one, stopping before a younger
    -- event and before the newest (kept, so that positions can always be read back).
    SELECT max(sequence) INTO cutoff FROM (
        SELECT sequence, bool_and(time < clock_timestamp() - keep)
                   OVER (ORDER BY sequence) AS all_old
        FROM (SELECT sequence, time FROM change_events
              WHERE sequence > horizon ORDER BY sequence LIMIT max_rows) first_rows
    ) scanned
    WHERE all_old AND sequence < newest;
    IF cutoff IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM change_events WHERE sequence > horizon AND sequence <= cutoff;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE change_feed_horizon SET pruned_through = cutoff, pruned_at = clock_timestamp();
    RETURN removed;
END $$;
REVOKE ALL ON FUNCTION prune_change_events(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_change_events(interval, integer) TO registry_runtime;
GRANT SELECT ON change_feed_horizon TO registry_runtime;
