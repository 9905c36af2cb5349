-- name: create_staging
CREATE TEMP TABLE IF NOT EXISTS registrations_staging
    (LIKE registrations INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;

-- name: insert_from_staging
INSERT INTO registrations (
    registration_id, identity_key, id_type, id_number, full_name, date_of_birth, gender,
    phone, email, health_insurance_number, province_code, ward_code, street,
    priority_group, occupation, site_id, preferred_date, preferred_session, screening,
    channel, received_at)
SELECT registration_id, identity_key, id_type, id_number, full_name, date_of_birth, gender,
    phone, email, health_insurance_number, province_code, ward_code, street,
    priority_group, occupation, site_id, preferred_date, preferred_session, screening,
    channel, received_at
FROM registrations_staging
ON CONFLICT DO NOTHING
RETURNING registration_id;

-- name: owners_of_identities
SELECT identity_key, registration_id FROM registrations WHERE identity_key = ANY($1::text[]);

-- name: insert_dead_letter
INSERT INTO dead_letters (stream, entry_id, registration_id, reason, detail, payload, deliveries)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (stream, entry_id) DO NOTHING;

-- name: registration_status
SELECT status, doses_received FROM registrations WHERE registration_id = $1;

-- name: dead_letter_for_registration
SELECT state, replayed_as FROM dead_letters WHERE registration_id = $1
ORDER BY (state = 'replayed') DESC, (state = 'held') DESC, id DESC LIMIT 1;

-- name: load_sites
SELECT site_id FROM sites WHERE active;

-- name: load_priority_groups
SELECT code FROM priority_groups;

-- name: upsert_priority_group
INSERT INTO priority_groups (code, rank, name_vi, name_en) VALUES ($1, $2, $3, $4)
ON CONFLICT (code) DO UPDATE
SET rank = EXCLUDED.rank, name_vi = EXCLUDED.name_vi, name_en = EXCLUDED.name_en;

-- name: upsert_site
INSERT INTO sites (site_id, name, province_code, ward_code, address, daily_capacity, active)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (site_id) DO UPDATE
SET name = EXCLUDED.name, province_code = EXCLUDED.province_code,
    ward_code = EXCLUDED.ward_code, address = EXCLUDED.address,
    daily_capacity = EXCLUDED.daily_capacity, active = EXCLUDED.active, updated_at = now();

-- name: count_sites
SELECT count(*) FROM sites;

-- name: find_registrations
SELECT registration_id FROM registrations WHERE registration_id = ANY($1::text[]);

-- name: find_dead_letters
SELECT registration_id, reason FROM dead_letters WHERE registration_id = ANY($1::text[]);

-- name: dead_letter_counts
SELECT state, reason, count(*) AS n FROM dead_letters GROUP BY state, reason;

-- name: list_dead_letters
SELECT id, stream, entry_id, registration_id, reason, detail, deliveries, state, created_at,
    resolved_at, replayed_as
FROM dead_letters
WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR reason = $2)
ORDER BY id DESC
LIMIT $3;

-- name: get_dead_letter
SELECT id, stream, entry_id, registration_id, reason, detail, payload, deliveries, state,
    created_at, resolved_at, replayed_as, note
FROM dead_letters WHERE id = $1;

-- name: held_dead_letter_ids
SELECT id FROM dead_letters
WHERE state = 'held' AND ($1::text IS NULL OR reason = $1)
ORDER BY id;

-- name: resolve_dead_letter
UPDATE dead_letters
SET state = $2, resolved_at = now(), replayed_as = $3, note = $4
WHERE id = $1 AND state = 'held'
RETURNING id;

-- name: dead_letter_replayed_as
SELECT entry_id, registration_id FROM dead_letters WHERE replayed_as = $1 LIMIT 1;
