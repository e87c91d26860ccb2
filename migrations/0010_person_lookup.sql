-- 0010: the importer's duplicate lookup compares dates of birth at their precision (a missing
-- month or day equals only a missing one). IS NOT DISTINCT FROM cannot use an index, so the
-- lookup compares coalesce(..., 0) and this index matches it (replacing 0009's).
DROP INDEX citizens_person_idx;
CREATE INDEX citizens_person_idx ON citizens (
    registration_province_code, sex, birth_year, coalesce(birth_month, 0), coalesce(birth_day, 0)
);
