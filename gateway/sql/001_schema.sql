-- Reference data: priority groups and vaccination sites.
CREATE TABLE priority_groups (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z0-9-]{1,16}$'),
    rank        integer NOT NULL,
    name_vi     text NOT NULL,
    name_en     text NOT NULL
);

CREATE TABLE sites (
    site_id         text PRIMARY KEY CHECK (site_id ~ '^[A-Z0-9-]{3,32}$'),
    name            text NOT NULL,
    province_code   text NOT NULL CHECK (province_code ~ '^[0-9]{2}$'),
    ward_code       text NOT NULL CHECK (ward_code ~ '^[0-9]{5}$'),
    address         text NOT NULL DEFAULT '',
    daily_capacity  integer NOT NULL DEFAULT 0 CHECK (daily_capacity >= 0),
    active          boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per person (identity document). identity_key is the keyed hash the gateway
-- also uses in Redis; the unique constraint is the second, durable line against
-- duplicates after the Redis dedupe key.
CREATE TABLE registrations (
    registration_id         text PRIMARY KEY,
    identity_key            text NOT NULL UNIQUE,
    id_type                 text NOT NULL CHECK (id_type IN ('cccd', 'cmnd', 'passport')),
    id_number               text NOT NULL CHECK (id_number ~ '^[A-Z0-9]{6,12}$'),
    full_name               text NOT NULL CHECK (char_length(full_name) BETWEEN 1 AND 100),
    date_of_birth           date NOT NULL,
    gender                  text NOT NULL CHECK (gender IN ('male', 'female', 'other')),
    phone                   text NOT NULL CHECK (phone ~ '^\+[0-9]{8,15}$'),
    email                   text CHECK (char_length(email) <= 254),
    health_insurance_number text CHECK (char_length(health_insurance_number) <= 15),
    province_code           text NOT NULL CHECK (province_code ~ '^[0-9]{2}$'),
    ward_code               text NOT NULL CHECK (ward_code ~ '^[0-9]{5}$'),
    street                  text NOT NULL CHECK (char_length(street) <= 200),
    priority_group          text NOT NULL REFERENCES priority_groups (code),
    occupation              text NOT NULL CHECK (char_length(occupation) <= 100),
    site_id                 text NOT NULL REFERENCES sites (site_id),
    preferred_date          date,
    preferred_session       text CHECK (preferred_session IN ('morning', 'afternoon', 'evening')),
    screening               jsonb,
    channel                 text NOT NULL CHECK (channel IN ('web', 'app')),
    received_at             timestamptz NOT NULL,
    stored_at               timestamptz NOT NULL DEFAULT now(),
    -- The life of a registration after intake: screened and scheduled by its site,
    -- then doses; the e-certificate's QR colour follows doses_received.
    status                  text NOT NULL DEFAULT 'stored'
                            CHECK (status IN ('stored', 'screened', 'scheduled', 'vaccinated', 'cancelled')),
    doses_received          smallint NOT NULL DEFAULT 0 CHECK (doses_received BETWEEN 0 AND 10),
    status_changed_at       timestamptz NOT NULL DEFAULT now()
);

-- A site lists the people who chose it by priority group, first come first served.
CREATE INDEX registrations_site_queue ON registrations (site_id, priority_group, received_at);

-- Records the writer could not store, with the reason. (stream, entry_id) makes
-- dead-lettering idempotent when an entry is delivered again.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    stream          text NOT NULL,
    entry_id        text NOT NULL,
    registration_id text,
    reason          text NOT NULL,
    detail          text NOT NULL DEFAULT '',
    payload         text,
    deliveries      integer NOT NULL DEFAULT 1,
    state           text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'replayed', 'dropped')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    UNIQUE (stream, entry_id)
);
CREATE INDEX dead_letters_held ON dead_letters (created_at) WHERE state = 'held';
CREATE INDEX dead_letters_registration ON dead_letters (registration_id);
