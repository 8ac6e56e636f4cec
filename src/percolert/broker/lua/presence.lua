-- ARGV: P, me, user, '1' (a socket opened), '0' (one closed) or 'e' (one closed because the
-- user was erased: no departure is recorded, and none is left), and for an open the most
-- sockets the user may hold on all instances together ('' for no cap). An open returns the
-- cut: read in the same step as the registration, so every later sending is routed here and
-- every earlier one is at or below the cut (replayed from the log). An open past the cap
-- registers nothing and returns '-1'.
local at, user = P .. ':at:' .. ARGV[2], ARGV[3]
if ARGV[4] == '1' then
  local cap = tonumber(ARGV[5])
  if cap then
    local open = 0
    -- Live instances only: a dead one's sockets are gone, though it is not reaped yet.
    for _, inst in ipairs(redis.call('ZRANGEBYSCORE', P .. ':inst', now, '+inf')) do
      open = open + tonumber(redis.call('HGET', P .. ':at:' .. inst, user) or '0')
    end
    if open >= cap then return '-1' end
  end
  redis.call('HINCRBY', at, user, 1)
  redis.call('ZREM', P .. ':left', user)
  return redis.call('HGET', P .. ':meta', 'seq') or '0'
end
if redis.call('HINCRBY', at, user, -1) <= 0 then
  redis.call('HDEL', at, user)
  if ARGV[4] == 'e' then
    redis.call('ZREM', P .. ':left', user)
  else
    redis.call('ZADD', P .. ':left', now, user)
  end
end
return '0'
