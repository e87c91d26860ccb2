-- 0009: bulk import of the existing population (PopulationService.ImportCitizens).
-- import_sources remembers which source record (agency, source_id) became which citizen, so
-- re-running an import creates nothing new. citizens_person_idx finds the records an incoming
-- one may duplicate (same province, sex and date of birth; names compared by the importer).
CREATE TABLE import_sources (
    agency_id    text NOT NULL,
    source_id    text NOT NULL,
    pin          text NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_sources_pkey PRIMARY KEY (agency_id, source_id),
    CONSTRAINT import_sources_pin_fkey FOREIGN KEY (pin) REFERENCES citizens (pin)
);

CREATE INDEX citizens_person_idx
    ON citizens (registration_province_code, sex, birth_year, birth_month, birth_day);
