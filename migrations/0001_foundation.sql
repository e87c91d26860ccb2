-- 0001: the foundation schema: PIN prefixes and buckets, agencies and their keys, citizens,
-- idempotency keys. Forward-only: never edit this file once applied; add a new migration.

-- Province codes of PINs (SPEC §2). Operators extend this table (e.g. codes for births
-- registered abroad) and close a code for new issuance with valid_to; issued numbers stay valid.
CREATE TABLE pin_prefixes (
    code        text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL,
    valid_from  date NOT NULL,
    valid_to    date,
    CONSTRAINT pin_prefixes_pkey PRIMARY KEY (code),
    CONSTRAINT pin_prefixes_code_check CHECK (code ~ '^[0-9]{3}$'),
    CONSTRAINT pin_prefixes_validity_check CHECK (valid_to IS NULL OR valid_to >= valid_from)
);

INSERT INTO pin_prefixes (code, name, kind, valid_from, valid_to) VALUES
    ('001', 'Hà Nội', 'province', DATE '2016-01-01', NULL),
    ('002', 'Hà Giang', 'province', DATE '2016-01-01', NULL),
    ('004', 'Cao Bằng', 'province', DATE '2016-01-01', NULL),
    ('006', 'Bắc Kạn', 'province', DATE '2016-01-01', NULL),
    ('008', 'Tuyên Quang', 'province', DATE '2016-01-01', NULL),
    ('010', 'Lào Cai', 'province', DATE '2016-01-01', NULL),
    ('011', 'Điện Biên', 'province', DATE '2016-01-01', NULL),
    ('012', 'Lai Châu', 'province', DATE '2016-01-01', NULL),
    ('014', 'Sơn La', 'province', DATE '2016-01-01', NULL),
    ('015', 'Yên Bái', 'province', DATE '2016-01-01', NULL),
    ('017', 'Hòa Bình', 'province', DATE '2016-01-01', NULL),
    ('019', 'Thái Nguyên', 'province', DATE '2016-01-01', NULL),
    ('020', 'Lạng Sơn', 'province', DATE '2016-01-01', NULL),
    ('022', 'Quảng Ninh', 'province', DATE '2016-01-01', NULL),
    ('024', 'Bắc Giang', 'province', DATE '2016-01-01', NULL),
    ('025', 'Phú Thọ', 'province', DATE '2016-01-01', NULL),
    ('026', 'Vĩnh Phúc', 'province', DATE '2016-01-01', NULL),
    ('027', 'Bắc Ninh', 'province', DATE '2016-01-01', NULL),
    ('030', 'Hải Dương', 'province', DATE '2016-01-01', NULL),
    ('031', 'Hải Phòng', 'province', DATE '2016-01-01', NULL),
    ('033', 'Hưng Yên', 'province', DATE '2016-01-01', NULL),
    ('034', 'Thái Bình', 'province', DATE '2016-01-01', NULL),
    ('035', 'Hà Nam', 'province', DATE '2016-01-01', NULL),
    ('036', 'Nam Định', 'province', DATE '2016-01-01', NULL),
    ('037', 'Ninh Bình', 'province', DATE '2016-01-01', NULL),
    ('038', 'Thanh Hóa', 'province', DATE '2016-01-01', NULL),
    ('040', 'Nghệ An', 'province', DATE '2016-01-01', NULL),
    ('042', 'Hà Tĩnh', 'province', DATE '2016-01-01', NULL),
    ('044', 'Quảng Bình', 'province', DATE '2016-01-01', NULL),
    ('045', 'Quảng Trị', 'province', DATE '2016-01-01', NULL),
    ('046', 'Thừa Thiên Huế', 'province', DATE '2016-01-01', NULL),
    ('048', 'Đà Nẵng', 'province', DATE '2016-01-01', NULL),
    ('049', 'Quảng Nam', 'province', DATE '2016-01-01', NULL),
    ('051', 'Quảng Ngãi', 'province', DATE '2016-01-01', NULL),
    ('052', 'Bình Định', 'province', DATE '2016-01-01', NULL),
    ('054', 'Phú Yên', 'province', DATE '2016-01-01', NULL),
    ('056', 'Khánh Hòa', 'province', DATE '2016-01-01', NULL),
    ('058', 'Ninh Thuận', 'province', DATE '2016-01-01', NULL),
    ('060', 'Bình Thuận', 'province', DATE '2016-01-01', NULL),
    ('062', 'Kon Tum', 'province', DATE '2016-01-01', NULL),
    ('064', 'Gia Lai', 'province', DATE '2016-01-01', NULL),
    ('066', 'Đắk Lắk', 'province', DATE '2016-01-01', NULL),
    ('067', 'Đắk Nông', 'province', DATE '2016-01-01', NULL),
    ('068', 'Lâm Đồng', 'province', DATE '2016-01-01', NULL),
    ('070', 'Bình Phước', 'province', DATE '2016-01-01', NULL),
    ('072', 'Tây Ninh', 'province', DATE '2016-01-01', NULL),
    ('074', 'Bình Dương', 'province', DATE '2016-01-01', NULL),
    ('075', 'Đồng Nai', 'province', DATE '2016-01-01', NULL),
    ('077', 'Bà Rịa - Vũng Tàu', 'province', DATE '2016-01-01', NULL),
    ('079', 'Thành phố Hồ Chí Minh', 'province', DATE '2016-01-01', NULL),
    ('080', 'Long An', 'province', DATE '2016-01-01', NULL),
    ('082', 'Tiền Giang', 'province', DATE '2016-01-01', NULL),
    ('083', 'Bến Tre', 'province', DATE '2016-01-01', NULL),
    ('084', 'Trà Vinh', 'province', DATE '2016-01-01', NULL),
    ('086', 'Vĩnh Long', 'province', DATE '2016-01-01', NULL),
    ('087', 'Đồng Tháp', 'province', DATE '2016-01-01', NULL),
    ('089', 'An Giang', 'province', DATE '2016-01-01', NULL),
    ('091', 'Kiên Giang', 'province', DATE '2016-01-01', NULL),
    ('092', 'Cần Thơ', 'province', DATE '2016-01-01', NULL),
    ('093', 'Hậu Giang', 'province', DATE '2016-01-01', NULL),
    ('094', 'Sóc Trăng', 'province', DATE '2016-01-01', NULL),
    ('095', 'Bạc Liêu', 'province', DATE '2016-01-01', NULL),
    ('096', 'Cà Mau', 'province', DATE '2016-01-01', NULL);

-- One row per (province, century/sex digit, two-digit year) bucket of 1,000,000 numbers.
-- `issued` counts allocations; the random part of the issued-th PIN is a keyed permutation of
-- the counter (registry.pin.Permutation) with the bucket's own secret key.
CREATE TABLE pin_buckets (
    province_code  text NOT NULL,
    g              smallint NOT NULL,
    yy             smallint NOT NULL,
    key            bytea NOT NULL,
    issued         integer NOT NULL DEFAULT 0,
    CONSTRAINT pin_buckets_pkey PRIMARY KEY (province_code, g, yy),
    CONSTRAINT pin_buckets_province_code_fkey FOREIGN KEY (province_code)
        REFERENCES pin_prefixes (code),
    CONSTRAINT pin_buckets_g_check CHECK (g BETWEEN 0 AND 9),
    CONSTRAINT pin_buckets_yy_check CHECK (yy BETWEEN 0 AND 99),
    CONSTRAINT pin_buckets_key_check CHECK (length(key) = 32),
    CONSTRAINT pin_buckets_issued_check CHECK (issued BETWEEN 0 AND 1000000)
);

-- Calling systems (SPEC §6) and their public keys.
CREATE TABLE agencies (
    id          text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    fields      text[] NOT NULL DEFAULT '{}',
    rate_limit  integer,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agencies_pkey PRIMARY KEY (id),
    CONSTRAINT agencies_id_check CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT agencies_kind_check CHECK (kind IN ('JUSTICE', 'POLICE', 'PORTAL', 'OTHER')),
    CONSTRAINT agencies_rate_limit_check CHECK (rate_limit IS NULL OR rate_limit > 0)
);

CREATE TABLE agency_keys (
    agency_id       text NOT NULL,
    kid             text NOT NULL,
    algorithm       text NOT NULL,
    public_key_pem  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CONSTRAINT agency_keys_pkey PRIMARY KEY (agency_id, kid),
    CONSTRAINT agency_keys_agency_id_fkey FOREIGN KEY (agency_id) REFERENCES agencies (id),
    CONSTRAINT agency_keys_algorithm_check CHECK (algorithm IN ('ES256', 'EdDSA', 'RS256'))
);

-- Servers cache agencies and keys; tell them at once when an operator changes one, so a
-- disabled agency or revoked key is locked out within seconds.
CREATE FUNCTION notify_agencies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('registry_agencies', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER agencies_notify AFTER INSERT OR UPDATE OR DELETE ON agencies
    FOR EACH STATEMENT EXECUTE FUNCTION notify_agencies_changed();
CREATE TRIGGER agency_keys_notify AFTER INSERT OR UPDATE OR DELETE ON agency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_agencies_changed();

-- The register (SPEC §3). Enum columns hold the proto enum numbers. Dates of birth and death
-- keep their precision: month/day are NULL when only the year (or year and month) is known.
CREATE TABLE citizens (
    pin                          text NOT NULL,
    full_name                    text NOT NULL,
    other_names                  text[] NOT NULL DEFAULT '{}',
    birth_year                   smallint NOT NULL,
    birth_month                  smallint,
    birth_day                    smallint,
    sex                          smallint NOT NULL,
    place_of_birth               text NOT NULL DEFAULT '',
    registration_province_code   text NOT NULL,
    hometown                     text NOT NULL DEFAULT '',
    ethnicity                    text NOT NULL DEFAULT '',
    religion                     text NOT NULL DEFAULT '',
    nationality                  text NOT NULL DEFAULT '',
    blood_type                   smallint NOT NULL DEFAULT 0,
    father_pin                   text,
    mother_pin                   text,
    spouse_pin                   text,
    representative_pin           text,
    permanent_address            text NOT NULL DEFAULT '',
    temporary_address            text NOT NULL DEFAULT '',
    current_address              text NOT NULL DEFAULT '',
    marital_status               smallint NOT NULL DEFAULT 0,
    status                       smallint NOT NULL DEFAULT 1,
    death_year                   smallint,
    death_month                  smallint,
    death_day                    smallint,
    replaced_by_pin              text,
    pin_mismatch                 boolean NOT NULL DEFAULT false,
    birth_registration_authority text NOT NULL DEFAULT '',
    birth_registration_number    text NOT NULL DEFAULT '',
    birth_registered_on          date,
    death_registration_authority text,
    death_registration_number    text,
    created_by                   text NOT NULL,
    version                      bigint NOT NULL DEFAULT 1,
    create_time                  timestamptz NOT NULL DEFAULT now(),
    update_time                  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT citizens_pkey PRIMARY KEY (pin),
    CONSTRAINT citizens_pin_check CHECK (pin ~ '^[0-9]{12}$'),
    CONSTRAINT citizens_registration_province_code_fkey FOREIGN KEY (registration_province_code)
        REFERENCES pin_prefixes (code),
    CONSTRAINT citizens_father_pin_fkey FOREIGN KEY (father_pin) REFERENCES citizens (pin),
    CONSTRAINT citizens_mother_pin_fkey FOREIGN KEY (mother_pin) REFERENCES citizens (pin),
    CONSTRAINT citizens_spouse_pin_fkey FOREIGN KEY (spouse_pin) REFERENCES citizens (pin),
    CONSTRAINT citizens_representative_pin_fkey FOREIGN KEY (representative_pin)
        REFERENCES citizens (pin),
    CONSTRAINT citizens_replaced_by_pin_fkey FOREIGN KEY (replaced_by_pin)
        REFERENCES citizens (pin),
    CONSTRAINT citizens_sex_check CHECK (sex IN (1, 2)),
    CONSTRAINT citizens_status_check CHECK (status IN (1, 2, 3, 4)),
    CONSTRAINT citizens_birth_date_check CHECK (
        birth_year BETWEEN 1 AND 9999
        AND (birth_month IS NULL OR birth_month BETWEEN 1 AND 12)
        AND (birth_day IS NULL OR (birth_month IS NOT NULL AND birth_day BETWEEN 1 AND 31))),
    CONSTRAINT citizens_death_date_check CHECK (
        (death_year IS NULL AND death_month IS NULL AND death_day IS NULL)
        OR (death_year BETWEEN 1 AND 9999
            AND (death_month IS NULL OR death_month BETWEEN 1 AND 12)
            AND (death_day IS NULL OR (death_month IS NOT NULL AND death_day BETWEEN 1 AND 31)))),
    CONSTRAINT citizens_deceased_check CHECK (status <> 2 OR death_year IS NOT NULL),
    CONSTRAINT citizens_version_check CHECK (version >= 1)
);

-- Idempotency of mutating calls: one row per (agency, request_id), written in the same
-- transaction as the change. request_hash covers the method and the normalised request;
-- result_key names what the original call produced (a PIN, a card serial) so a replay
-- answers from it.
CREATE TABLE idempotency_keys (
    agency_id     text NOT NULL,
    request_id    text NOT NULL,
    method        text NOT NULL,
    request_hash  bytea NOT NULL,
    result_key    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (agency_id, request_id)
);
