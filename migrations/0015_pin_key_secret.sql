-- 0015: PIN bucket keys out of the database (issue 12, item 3).
--
-- New buckets store a random salt and key_version 1: their permutation key is
-- HMAC-SHA256(PIN secret, salt), and the PIN secret lives beside the signing keys, never here,
-- so a copy of the database does not predict future PINs. Buckets created before this keep
-- key_version 0 (the stored bytes are the key): changing a used bucket's permutation would
-- break the bijection that makes every counter value a distinct PIN, so they keep issuing with
-- their stored key, collision-free, and their keys stay as sensitive as before.
ALTER TABLE pin_buckets ADD COLUMN key_version smallint NOT NULL DEFAULT 0;
ALTER TABLE pin_buckets ADD CONSTRAINT pin_buckets_key_version_check CHECK (key_version IN (0, 1));

-- The fingerprint of the PIN secret (HMAC of a constant under it; reveals nothing of it): the
-- first server records it, and a server holding another secret refuses to start rather than
-- order buckets differently from its peers.
CREATE TABLE pin_key_secret (
    one          boolean NOT NULL DEFAULT true,
    fingerprint  bytea NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pin_key_secret_pkey PRIMARY KEY (one),
    CONSTRAINT pin_key_secret_one_check CHECK (one),
    CONSTRAINT pin_key_secret_fingerprint_check CHECK (length(fingerprint) = 32)
);
GRANT SELECT, INSERT ON pin_key_secret TO registry_runtime;
