-- ARGV: P, inbox length bound, then per sending: kind ('e' everyone, 'u' users), the
-- sending (msgpack), how many users, the users. Numbers each sending with the one counter,
-- kept at or above Redis's µs time as one process's positions are (so they stay above those
-- of an earlier run, even if Redis lost its data), and adds it once to the inbox of each
-- instance that holds a socket of a recipient (every instance with sockets, for everyone):
-- in order, since scripts run one at a time. Returns the positions.
local bound = ARGV[2]
local insts = instances()
local seqs = {}
local i = 3
while i <= #ARGV do
  local kind, sending, users = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local seq = math.max(tonumber(redis.call('HGET', P .. ':meta', 'seq') or '0') + 1, now_us)
  local text = string.format('%d', seq)
  redis.call('HSET', P .. ':meta', 'seq', text)
  seqs[#seqs + 1] = text
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
