-- ARGV: P, floor, restart window (ms). Raises the position counter to `floor` (above every
-- position handed out before: µs time and the log's last); a fresh service starts with
-- everyone reachable for the restart window, as one process does.
local meta = P .. ':meta'
local floor = ARGV[2]
if tonumber(redis.call('HGET', meta, 'seq') or '0') < tonumber(floor) then
  redis.call('HSET', meta, 'seq', floor)
end
if redis.call('HEXISTS', meta, 'everyone_until') == 0 then
  redis.call('HSET', meta, 'everyone_until', now + tonumber(ARGV[3]))
end
return redis.call('HGET', meta, 'seq')
