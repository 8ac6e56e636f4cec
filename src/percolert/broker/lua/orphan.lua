-- ARGV: P, lease (ms). Takes the mirror of one reaped instance (`P:orphans`) under a lease,
-- to write it to the alert log: returns its instance, or nil when none is free. The taker
-- deletes the mirror once written; if it dies first, the lease lapses and another takes it.
local orphans = P .. ':orphans'
local free = redis.call('ZRANGEBYSCORE', orphans, '-inf', now, 'LIMIT', 0, 1)
if #free == 0 then return false end
redis.call('ZADD', orphans, now + tonumber(ARGV[2]), free[1])
return free[1]
