-- 0021: imports running at the same time decide duplicates one province at a time.
--
-- A record is a duplicate of a citizen with the same name, date of birth, sex and province of
-- registration (or the same PIN, or the same source id). Under READ COMMITTED two import
-- transactions running at the same time do not see each other's new rows, so the same person
-- in two concurrent imports (two provinces' files overlapping, two streams of one operator)
-- was created twice, with two PINs. An import batch now locks the rows of the provinces it
-- touches (its records' provinces of registration and the provinces of the PINs they carry),
-- in code order, in the transaction that looks for duplicates and inserts: batches of the same
-- provinces take turns, batches of different provinces still run side by side. Row locks, not
-- advisory locks: a batch of 5,000 people may touch every province, and row locks take no room
-- in the server's shared lock table. Births do not take these locks (a newborn is nobody's
-- duplicate); nothing but imports reads or writes this table.
CREATE TABLE import_locks (
    province_code  text NOT NULL,
    CONSTRAINT import_locks_pkey PRIMARY KEY (province_code),
    CONSTRAINT import_locks_province_code_fkey FOREIGN KEY (province_code)
        REFERENCES pin_prefixes (code) ON DELETE CASCADE
);
INSERT INTO import_locks (province_code) SELECT code FROM pin_prefixes;

-- A code the operator adds to pin_prefixes gets its lock row at once.
CREATE FUNCTION import_locks_follow_prefixes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO import_locks (province_code) VALUES (NEW.code) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER pin_prefixes_import_lock AFTER INSERT ON pin_prefixes
    FOR EACH ROW EXECUTE FUNCTION import_locks_follow_prefixes();

-- SELECT … FOR UPDATE needs UPDATE; the table holds nothing but the codes.
GRANT SELECT, UPDATE ON import_locks TO registry_runtime;
