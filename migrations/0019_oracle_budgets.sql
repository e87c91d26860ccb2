-- 0019: verification is not an oracle, every disclosure is audited (issue 13 items 3-5).
--
-- Budget state lives here, not in a server process, so that every server process behind a
-- load balancer spends the same budgets exactly (registry.budgets).

-- An agency's miss budget (NOT_FOUND of any lookup, NO_MATCH of verification) as a generic
-- cell-rate bucket: `tat` (epoch seconds) is when the bucket would be full again; each miss
-- moves it one interval (60 s / budget) later, and a miss is granted only while `tat` stays
-- within one minute of now. One UPDATE per charge: concurrent charges of several processes
-- serialise on the row, so no miss is granted twice. `alerted`: the current throttling
-- episode has been reported (one alert per episode, whichever process saw it first).
CREATE TABLE agency_miss_budgets (
    agency_id  text NOT NULL,
    tat        double precision NOT NULL,
    granted    integer NOT NULL DEFAULT 0,
    alerted    boolean NOT NULL DEFAULT false,
    -- `granted` and `was_alerted` carry the last charge's result and the flag it found to
    -- RETURNING (registry/db/budgets.py).
    was_alerted boolean NOT NULL DEFAULT false,
    CONSTRAINT agency_miss_budgets_pkey PRIMARY KEY (agency_id),
    CONSTRAINT agency_miss_budgets_agency_fkey FOREIGN KEY (agency_id) REFERENCES agencies (id)
);

-- The per-(agency, citizen) failure budget: the times of the agency's latest NO_MATCH
-- answers about the citizen (at most the limit, 5, within the window), newest last. A row
-- is reused when its failures have aged out, so the table holds at most one row per pair.
CREATE TABLE verification_failures (
    agency_id  text NOT NULL,
    pin        text NOT NULL,
    failures   timestamptz[] NOT NULL,
    alerted    boolean NOT NULL DEFAULT false,
    CONSTRAINT verification_failures_pkey PRIMARY KEY (agency_id, pin),
    CONSTRAINT verification_failures_agency_fkey FOREIGN KEY (agency_id) REFERENCES agencies (id)
);

-- Change types an agency's WatchChanges may receive (none by default), and whether its
-- accesses are confidential (SPEC §6: shown in access logs without its name or purpose).
ALTER TABLE agencies
    ADD COLUMN watch_types text[] NOT NULL DEFAULT '{}',
    ADD COLUMN confidential boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT agencies_watch_types_check CHECK (watch_types <@ ARRAY[
        'BORN', 'DIED', 'UPDATED', 'PIN_REPLACED', 'CARD_ISSUED', 'CARD_STATE_CHANGED']);

-- Budgets are charged and read by the server; nothing is ever deleted by it.
GRANT SELECT, INSERT, UPDATE ON agency_miss_budgets, verification_failures TO registry_runtime;
