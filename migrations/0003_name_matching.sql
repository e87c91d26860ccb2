-- 0003: how an agency's name claims are compared in VerifyIdentity. STRICT (the default)
-- compares names after Unicode and case normalisation, diacritics included; an operator may
-- register a system that lost the diacritics for DIACRITIC_INSENSITIVE matching.
ALTER TABLE agencies
    ADD COLUMN name_matching text NOT NULL DEFAULT 'STRICT',
    ADD CONSTRAINT agencies_name_matching_check
        CHECK (name_matching IN ('STRICT', 'DIACRITIC_INSENSITIVE'));
