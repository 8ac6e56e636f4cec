-- ARGV: P, window (ms), limit, '1' to end every window (shutdown) else those over. Takes
-- each ended window out in one step, so its follow-up is made by exactly one instance: one
-- with folded searches returns {watch, owner ('' for a default watch), terms, not alerted,
-- events} and its next window starts now; one without is deleted. The next window of a
-- default watch owes its first alert to those still not alerted and to the one user who made
-- every folded search (the sets of broker_memory's `_end`). Returns {open windows, ended}.
-- ARGV[5]: lease (ms). An ended window is claimed, not handed out: its follow-up is kept
-- under a fresh token (`P:f:<token>` + `:ev`, `:na`) with a lease in `P:leases`, and each
-- ended entry starts with that token; publish.lua sends it only with the claim. A claim whose
-- lease lapsed (its claimer died before publishing) is claimed again under a new token.
local W = tonumber(ARGV[2])
local upto = now
if ARGV[4] == '1' then upto = '+inf' end
local due = P .. ':due'
local leases, lease = P .. ':leases', tonumber(ARGV[5])
local ended = {}
local function new_claim()
  local token = 'c' .. redis.call('INCR', P .. ':claims')
  redis.call('ZADD', leases, now + lease, token)
  return token, P .. ':f:' .. token
end
for _, old in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local was = P .. ':f:' .. old
  redis.call('ZREM', leases, old)
  local h = redis.call('HMGET', was, 'watch', 'owner', 'terms')
  if h[1] then
    local token, f = new_claim()
    redis.call('RENAME', was, f)
    for _, part in ipairs({':ev', ':na'}) do
      if redis.call('EXISTS', was .. part) == 1 then redis.call('RENAME', was .. part, f .. part) end
    end
    ended[#ended + 1] = {token, h[1], h[2], h[3], redis.call('SMEMBERS', f .. ':na'),
      redis.call('LRANGE', f .. ':ev', 0, -1)}
  end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local h = redis.call('HMGET', key, 'watch', 'owner', 'terms', 's')
  local events = redis.call('LRANGE', key .. ':ev', 0, -1)
  if #events == 0 or not h[1] then
    redis.call('DEL', key, key .. ':ev', key .. ':na')
    redis.call('ZREM', due, key)
  else
    local not_alerted = {}
    if h[2] == '' then not_alerted = redis.call('SMEMBERS', key .. ':na') end
    local token, f = new_claim()
    redis.call('HSET', f, 'watch', h[1], 'owner', h[2], 'terms', h[3])
    redis.call('RENAME', key .. ':ev', f .. ':ev')
    redis.call('PERSIST', f .. ':ev')
    if #not_alerted > 0 then redis.call('SUNIONSTORE', f .. ':na', key .. ':na') end
    ended[#ended + 1] = {token, h[1], h[2], h[3], not_alerted, events}
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
