-- Fixed-window counter for one subject of the rate limiter.
--
-- KEYS[1]  the counter: rate:<scope>:<keyed hash of the client address or phone>
-- ARGV[1]  how many requests to add (the gateway adds up a batch's requests first)
-- ARGV[2]  window length in milliseconds
--
-- Returns {count after adding, milliseconds until the window ends}.
-- The window starts with the first request of a subject. A counter found without a TTL
-- (it cannot happen, but a counter that never expires would lock someone out for good)
-- gets one again.
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {count, ttl}
