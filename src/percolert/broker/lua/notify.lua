-- ARGV: P, inbox length bound, user, message, an instance to skip ('' for none: one that
-- already delivered the message itself while Redis was away). Adds the message once to the
-- inbox of each instance holding a socket of `user`, counted (`n`) as publish.lua does.
local bound, user, message, skip = ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
for _, inst in ipairs(instances()) do
  if inst ~= skip and holds(inst, user) then
    local n = redis.call('HINCRBY', P .. ':meta', 'n:' .. inst, 1)
    redis.call('XADD', P .. ':inbox:' .. inst, 'MAXLEN', '~', bound, '*', 'u', user, 'p', message,
      'n', n, 'e', EPOCH)
  end
end
return 0
