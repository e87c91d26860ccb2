-- 0017: chunked imports (PopulationService.ImportCitizenBatches, SPEC §10).
--
-- One row per acknowledged batch of an import run (agency, import_id), written in the same
-- transaction as the batch's records: the run's acknowledged count is the last batch's
-- next_offset, and a batch sent again from where an acknowledged one started is answered from
-- its row (its original counts and rejects) without writing anything. The primary key makes
-- two streams racing with the same batch write it once. Rows are kept: they are what makes a
-- resend of a whole import harmless.
CREATE TABLE import_batches (
    agency_id        text NOT NULL,
    import_id        text NOT NULL,
    first_offset     bigint NOT NULL,
    next_offset      bigint NOT NULL,
    created          integer NOT NULL DEFAULT 0,
    assigned_pins    integer NOT NULL DEFAULT 0,
    duplicates       integer NOT NULL DEFAULT 0,
    mismatched_pins  integer NOT NULL DEFAULT 0,
    rejected         integer NOT NULL DEFAULT 0,
    -- [[index, source_id, reason], ...] in batch order.
    rejects          jsonb NOT NULL DEFAULT '[]',
    acknowledged_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_batches_pkey PRIMARY KEY (agency_id, import_id, first_offset),
    CONSTRAINT import_batches_offsets_check CHECK (0 <= first_offset AND first_offset < next_offset)
);

GRANT SELECT, INSERT, UPDATE ON import_batches TO registry_runtime;
