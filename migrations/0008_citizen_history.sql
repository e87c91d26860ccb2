-- 0008: every change to a citizen record keeps the previous version: who, when, what.
-- `record` is the whole row as it was before the change (to_jsonb of citizens), `fields` the
-- Citizen fields the change named. A PIN re-establishment stores the old record under the old
-- PIN with `replaced_by_pin` set.
CREATE TABLE citizen_history (
    pin              text NOT NULL,
    version          bigint NOT NULL,
    record           jsonb NOT NULL,
    fields           text[] NOT NULL,
    changed_by       text NOT NULL,
    request_id       text NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now(),
    replaced_by_pin  text,
    CONSTRAINT citizen_history_pkey PRIMARY KEY (pin, version),
    CONSTRAINT citizen_history_pin_fkey FOREIGN KEY (pin) REFERENCES citizens (pin)
);
