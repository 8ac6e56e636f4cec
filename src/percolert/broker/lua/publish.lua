-- ARGV: P, inbox length bound, then per sending: kind ('e' everyone, 'u' users), the
-- sending (msgpack), how many users, the users. Numbers each sending with the one counter,
-- kept at or above Redis's µs time as one process's positions are (so they stay above those
-- of an earlier run, even if Redis lost its data), and adds it once to the inbox of each
-- instance that holds a socket of a recipient (every instance with sockets, for everyone):
-- in order, since scripts run one at a time. Returns the positions.
-- Also ARGV[3..5]: this instance, its mirror's length bound, and the token of the claimed
-- follow-up these sendings are ('' for none). Each sending is mirrored in `P:log:<me>` (entry
-- `<seq>-0`) until this instance has written it to the alert log, so any instance can replay
-- it meanwhile. A claimed follow-up goes out with its claim: if the claim is gone (sent by
-- another instance after this one's lease lapsed), nothing is sent and {} is returned.
local bound = ARGV[2]
local me, mirror_bound, guard = ARGV[3], ARGV[4], ARGV[5]
if guard ~= '' then
  local f = P .. ':f:' .. guard
  if redis.call('DEL', f) == 0 then return {} end
  redis.call('DEL', f .. ':ev', f .. ':na')
  redis.call('ZREM', P .. ':leases', guard)
end
local insts = instances()
local seqs = {}
local i = 6
while i <= #ARGV do
  local kind, sending, users = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local seq = math.max(tonumber(redis.call('HGET', P .. ':meta', 'seq') or '0') + 1, now_us)
  local text = string.format('%d', seq)
  redis.call('HSET', P .. ':meta', 'seq', text)
  seqs[#seqs + 1] = text
  redis.call('XADD', P .. ':log:' .. me, 'MAXLEN', '~', mirror_bound, text .. '-0', 'm', sending)
  for _, inst in ipairs(insts) do
    local wanted = false
    if kind == 'e' then
      wanted = redis.call('EXISTS', P .. ':at:' .. inst) == 1
    else
      for j = 1, users do
        if holds(inst, ARGV[i + 2 + j]) then wanted = true; break end
      end
    end
    if wanted then
      -- `n` counts this inbox's entries, so its reader sees one that went missing.
      local n = redis.call('HINCRBY', P .. ':meta', 'n:' .. inst, 1)
      redis.call('XADD', P .. ':inbox:' .. inst, 'MAXLEN', '~', bound, '*', 'q', text, 'm', sending,
        'n', n, 'e', EPOCH)
    end
  end
  i = i + 3 + users
end
return seqs
