-- ARGV: P, window (ms), limit, '1' to end every window (shutdown) else those over. Takes
-- each ended window out in one step, so its follow-up is made by exactly one instance: one
-- with folded searches returns {watch, owner ('' for a default watch), terms, not alerted,
-- events} and its next window starts now; one without is deleted. The next window of a
-- default watch owes its first alert to those still not alerted and to the one user who made
-- every folded search (the sets of broker_memory's `_end`). Returns {open windows, ended}.
local W = tonumber(ARGV[2])
local upto = now
if ARGV[4] == '1' then upto = '+inf' end
local due = P .. ':due'
local ended = {}
for _, key in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local h = redis.call('HMGET', key, 'watch', 'owner', 'terms', 's')
  local events = redis.call('LRANGE', key .. ':ev', 0, -1)
  if #events == 0 or not h[1] then
    redis.call('DEL', key, key .. ':ev', key .. ':na')
    redis.call('ZREM', due, key)
  else
    local not_alerted = {}
    if h[2] == '' then not_alerted = redis.call('SMEMBERS', key .. ':na') end
    ended[#ended + 1] = {h[1], h[2], h[3], not_alerted, events}
    redis.call('DEL', key .. ':ev')
    redis.call('HSET', key, 'until', now + W, 's', '')
    redis.call('PEXPIRE', key, W + 60000)
    redis.call('ZADD', due, now + W, key)
    if h[2] == '' then
      if h[4] ~= '' and h[4] ~= '*' then redis.call('SADD', key .. ':na', h[4]) end
      redis.call('PEXPIRE', key .. ':na', W + 60000)
    end
  end
end
return {redis.call('ZCARD', due), ended}
