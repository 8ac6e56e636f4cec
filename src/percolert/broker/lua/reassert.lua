-- ARGV: P, me, then per user: user, open sockets here (0: none any more). Sets this
-- instance's part of the presence registry to what it holds, after Redis was unreachable
-- (closes it could not record, sockets opened meanwhile) or lost its data. Returns the
-- counter: sockets opened meanwhile whose cut is below it may have missed a sending.
local at = P .. ':at:' .. ARGV[2]
for i = 3, #ARGV, 2 do
  local user, count = ARGV[i], tonumber(ARGV[i + 1])
  if count > 0 then
    redis.call('HSET', at, user, count)
    redis.call('ZREM', P .. ':left', user)
  elseif redis.call('HDEL', at, user) == 1 then
    redis.call('ZADD', P .. ':left', now, user)
  end
end
return redis.call('HGET', P .. ':meta', 'seq')
