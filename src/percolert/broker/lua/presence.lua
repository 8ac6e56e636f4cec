-- ARGV: P, me, user, '1' (a socket opened) or '0' (one closed). An open returns the cut:
-- read in the same step as the registration, so every later sending is routed here and
-- every earlier one is at or below the cut (replayed from the log).
local at, user = P .. ':at:' .. ARGV[2], ARGV[3]
if ARGV[4] == '1' then
  redis.call('HINCRBY', at, user, 1)
  redis.call('ZREM', P .. ':left', user)
  return redis.call('HGET', P .. ':meta', 'seq') or '0'
end
if redis.call('HINCRBY', at, user, -1) <= 0 then
  redis.call('HDEL', at, user)
  redis.call('ZADD', P .. ':left', now, user)
end
return '0'
