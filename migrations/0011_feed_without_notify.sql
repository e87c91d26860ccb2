-- 0011: change events no longer NOTIFY from the writing transaction.
--
-- PostgreSQL serialises the commits of every transaction that issued NOTIFY (a database-wide
-- lock held from pre-commit until after the WAL flush, so queue entries appear in commit
-- order). With a NOTIFY in every birth, card and update, those commits could not share WAL
-- flushes: removing it raised births from ~330-360/s to ~450-470/s on the bench machine.
-- The server that commits a change now wakes its own sequencer directly (in process), the
-- sequencer still announces numbered events with NOTIFY registry_feed (a few per second per
-- server), and the sequencer's one-second safety net numbers events written by anything else
-- (an operator's SQL, an older server during a rolling upgrade). `NOTIFY registry_changes`
-- by hand still wakes every sequencer at once.
CREATE OR REPLACE FUNCTION record_change(kind smallint, pin text, new_pin text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_events (type, pin, new_pin) VALUES (kind, pin, new_pin);
END $$;

-- Numbering an event updates its row, leaving a dead entry in the partial index of
-- unnumbered events until VACUUM: vacuum this queue-like table after every 10,000 updates
-- rather than after a fifth of the table has changed.
ALTER TABLE change_events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
