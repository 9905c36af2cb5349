-- Release an identity whose registration was dead-lettered, so the person can submit
-- again (a replay would otherwise answer 200 for a record that was never stored).
-- Deletes the dedupe key only while it still points to that registration id.
-- KEYS[1] dedupe key; ARGV[1] registration id. Returns 1 when released.
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
