-- ARGV: P, inbox length bound, user, message. Adds the message once to the inbox of each
-- instance holding a socket of `user`.
local bound, user, message = ARGV[2], ARGV[3], ARGV[4]
for _, inst in ipairs(instances()) do
  if holds(inst, user) then
    redis.call('XADD', P .. ':inbox:' .. inst, 'MAXLEN', '~', bound, '*', 'u', user, 'p', message)
  end
end
return 0
