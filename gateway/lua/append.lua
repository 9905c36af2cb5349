-- Idempotent append of a batch of registrations that share one shard.
--
-- KEYS[1]       the shard's intake stream
-- KEYS[2..n+1]  one dedupe key per registration (keyed hash of the identity document)
-- ARGV[1]       dedupe TTL in seconds
-- ARGV[2]       shard number (becomes part of the registration id)
-- then 6 values per registration, in KEYS order:
--   fingerprint   hash of the normalised content (channel excluded)
--   phone_hash    keyed hash of the E.164 phone, to tell the person from a stranger on 409
--   idem_hash     hash of the Idempotency-Key header, or ""
--   token         random suffix that makes registration ids unguessable
--   received_at   ISO-8601 UTC
--   payload       the normalised registration as JSON
--
-- Returns one triple per registration: {outcome, registration_id, received_at}
--   outcome 0 = appended, 1 = exact replay, 2 = conflict (id only when the phone matches)
--
-- Check and append run in one script, so no two requests for the same person can both
-- append. The stream is never trimmed here: entries leave it only after the writer has
-- committed them to PostgreSQL.
local ttl = tonumber(ARGV[1])
local shard = ARGV[2]
local results = {}
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 6
  local fingerprint = ARGV[base + 1]
  local phone_hash = ARGV[base + 2]
  local idem_hash = ARGV[base + 3]
  local token = ARGV[base + 4]
  local received_at = ARGV[base + 5]
  local payload = ARGV[base + 6]
  local record = redis.call('GET', KEYS[i])
  if record then
    -- record: id|fingerprint|phone_hash|idem_hash|received_at
    local fields = {}
    for part in string.gmatch(record, '([^|]*)|?') do
      fields[#fields + 1] = part
    end
    local same_content = fields[2] == fingerprint
    local same_key = idem_hash ~= '' and fields[4] == idem_hash
    if same_content or same_key then
      results[#results + 1] = {1, fields[1], fields[5]}
    elseif fields[3] == phone_hash then
      results[#results + 1] = {2, fields[1], fields[5]}
    else
      results[#results + 1] = {2, '', ''}
    end
  else
    local entry_id = redis.call('XADD', KEYS[1], '*', 'p', payload, 't', token, 'a', received_at)
    local registration_id = shard .. '-' .. entry_id .. '-' .. token
    redis.call('SET', KEYS[i],
      registration_id .. '|' .. fingerprint .. '|' .. phone_hash .. '|' .. idem_hash .. '|' .. received_at,
      'EX', ttl)
    results[#results + 1] = {0, registration_id, received_at}
  end
end
return results
