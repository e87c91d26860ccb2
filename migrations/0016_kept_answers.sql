-- 0016: replays answer what the original call answered; annulled deaths keep their reasons
-- (issue 13, items 1 and 6).
--
-- `answer` is the Citizen message (protobuf bytes) the original call of a mutation returning
-- a citizen answered, already cut down to what that agency may learn (SPEC §6): a replay
-- returns it, filtered again by the agency's registration of the day, never the record as it
-- is now (which may hold data another agency wrote since). Written in the transaction that
-- carried the request out. NULL for the card mutations (they answer a card) and for keys stored
-- before this migration (a replay of one of those answers the PIN alone).
ALTER TABLE idempotency_keys ADD COLUMN answer bytea;

-- Why a version of a record was superseded when the change was a civil-status decision
-- (CivilRegistrationService.AnnulDeathRegistration: the reason and the deciding authority's
-- reference). NULL for corrections made with UpdateCitizen.
ALTER TABLE citizen_history ADD COLUMN reason text;
ALTER TABLE citizen_history ADD COLUMN decision_reference text;
