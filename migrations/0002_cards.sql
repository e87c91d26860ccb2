-- 0002: citizen identity cards (SPEC §4) and old CMND numbers linked to PINs.
-- Forward-only: never edit this file once applied; add a new migration.

-- Every card ever issued. The card number is the holder's PIN; `serial` is the physical
-- card's own number, supplied by the issuing station and unique across all cards ever.
-- state: 1 ACTIVE, 2 SUPERSEDED, 3 REVOKED, 4 WITHHELD (EXPIRED is derived from expiry_date,
-- never stored). kind: 1 FIRST_ISSUE, 2 EXCHANGE, 3 REISSUE (proto enum numbers).
CREATE TABLE cards (
    serial             text NOT NULL,
    pin                text NOT NULL,
    kind               smallint NOT NULL,
    state              smallint NOT NULL,
    issue_date         date NOT NULL,
    expiry_date        date,
    issuing_authority  text NOT NULL,
    state_reason       text NOT NULL DEFAULT '',
    issued_by          text NOT NULL,
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cards_pkey PRIMARY KEY (serial),
    CONSTRAINT cards_pin_fkey FOREIGN KEY (pin) REFERENCES citizens (pin),
    CONSTRAINT cards_kind_check CHECK (kind IN (1, 2, 3)),
    CONSTRAINT cards_state_check CHECK (state IN (1, 2, 3, 4)),
    CONSTRAINT cards_expiry_check CHECK (expiry_date IS NULL OR expiry_date >= issue_date)
);

-- At most one ACTIVE card per citizen, whatever the code does: two stations issuing at the
-- same instant cannot both leave an active card.
CREATE UNIQUE INDEX cards_one_active_per_citizen ON cards (pin) WHERE state = 1;
CREATE INDEX cards_pin_seq_idx ON cards (pin, seq);

-- Old 9- or 12-digit CMND numbers; each has exactly one owner.
CREATE TABLE legacy_ids (
    legacy_id    text NOT NULL,
    pin          text NOT NULL,
    linked_by    text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT legacy_ids_pkey PRIMARY KEY (legacy_id),
    CONSTRAINT legacy_ids_pin_fkey FOREIGN KEY (pin) REFERENCES citizens (pin),
    CONSTRAINT legacy_ids_format_check CHECK (legacy_id ~ '^([0-9]{9}|[0-9]{12})$')
);
CREATE INDEX legacy_ids_pin_idx ON legacy_ids (pin);
