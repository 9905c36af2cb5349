-- Fixed-window counters for one batch of rate-limit checks.
--
-- KEYS[i]        a counter: rate:{limits}:<scope>:<keyed hash of a client address or phone>
-- ARGV[2i - 1]   how many requests of the batch to add to it
-- ARGV[2i]       its window length in milliseconds
--
-- Returns {count after adding, milliseconds until the window ends} flattened, in KEYS
-- order. A window starts with the first request of its subject. A counter found without
-- a TTL (it cannot happen, but one that never expired would lock someone out for good)
-- gets one again. The keys share the {limits} hash tag, so on Redis Cluster one script
-- call can touch them all.
local out = {}
for i = 1, #KEYS do
  local count = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl < 0 then
    ttl = tonumber(ARGV[2 * i])
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  out[2 * i - 1] = count
  out[2 * i] = ttl
end
return out
