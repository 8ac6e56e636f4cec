-- ARGV: P, me, ttl (ms), reap after (ms), grace (ms). Keeps this instance alive for `ttl`;
-- reaps instances lapsed for longer than `reap after` (their users count as having left when
-- the instance lapsed, so they stay reachable through the grace); forgets departures older
-- than the grace; the mirror of a reaped instance becomes an orphan. Returns how many
-- instances are live (not lapsed), for the metrics.
local me, ttl, reap, grace = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZADD', P .. ':inst', now + ttl, me)
local dead = redis.call('ZRANGEBYSCORE', P .. ':inst', '-inf', now - reap)
for _, inst in ipairs(dead) do
  local lapsed = tonumber(redis.call('ZSCORE', P .. ':inst', inst)) - ttl
  for _, user in ipairs(redis.call('HKEYS', P .. ':at:' .. inst)) do
    redis.call('ZADD', P .. ':left', 'GT', lapsed, user)
  end
  redis.call('DEL', P .. ':at:' .. inst, P .. ':inbox:' .. inst)
  -- What it sent but never wrote to the alert log: a survivor writes it (orphan.lua).
  if redis.call('EXISTS', P .. ':log:' .. inst) == 1 then
    redis.call('ZADD', P .. ':orphans', 'NX', 0, inst)
  end
  redis.call('ZREM', P .. ':inst', inst)
end
redis.call('ZREMRANGEBYSCORE', P .. ':left', '-inf', now - grace)
return redis.call('ZCOUNT', P .. ':inst', now, '+inf')
