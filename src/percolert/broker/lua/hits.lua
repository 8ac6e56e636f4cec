-- ARGV: P, window (ms), grace (ms), then per search, in order: searcher, fold, default watch
-- id ('' for none), its terms, how many owned candidates, and per owned candidate: watch id,
-- owner, terms. The decisions of broker_memory.MemoryBroker.hits, on the shared windows:
-- owned window `P:w:<watch>:<owner>`, a default watch's shared window `P:dw:<watch>` (+ `:na`,
-- who had nothing of it yet); the folded searches in `<window>:ev` as "<skip JSON>\n<fold
-- JSON>"; every window in `P:due` by its end. The searches of a batch are decided one after
-- another, as that many calls would (a search's window opened here folds the next one).
-- Returns per search {immediate candidate indexes, covered, to everyone, firsts, coalesced}.
local W, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
local insts = instances()
local everyone = now < tonumber(redis.call('HGET', P .. ':meta', 'everyone_until') or '0')
local function reachable(user)
  if everyone then return true end
  for _, inst in ipairs(insts) do if holds(inst, user) then return true end end
  local left = redis.call('ZSCORE', P .. ':left', user)
  return left ~= false and now - tonumber(left) < grace
end
local function open(key, terms, watch, owner)
  redis.call('HSET', key, 'until', now + W, 'terms', terms, 'watch', watch, 'owner', owner, 's', '')
  redis.call('PEXPIRE', key, W + 60000)
  redis.call('ZADD', P .. ':due', now + W, key)
end
-- One search; its arguments start at ARGV[at]. Returns its decisions and where the next starts.
local function decide(at)
  local searcher, fold, dwatch, dterms = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local n = tonumber(ARGV[at + 4])
  local covered, cset, immediate, coalesced = {searcher}, {[searcher] = true}, {}, 0
  for c = 0, n - 1 do
    local i = at + 5 + 3 * c
    local watch, owner, terms = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if reachable(owner) then
      if not cset[owner] then covered[#covered + 1] = owner; cset[owner] = true end
      local key = P .. ':w:' .. watch .. ':' .. owner
      if redis.call('EXISTS', key) == 0 then
        immediate[#immediate + 1] = c
        if W > 0 then open(key, terms, watch, owner) end
      else
        redis.call('RPUSH', key .. ':ev', '[]\n' .. fold)
        redis.call('PEXPIRE', key .. ':ev', W + 60000)
        coalesced = coalesced + 1
      end
    end
  end
  local to_everyone, firsts = 0, {}
  if dwatch ~= '' then
    local d = P .. ':dw:' .. dwatch
    if redis.call('EXISTS', d) == 0 then
      to_everyone = 1
      if W > 0 then
        open(d, dterms, dwatch, '')
        redis.call('SADD', d .. ':na', searcher)
        redis.call('PEXPIRE', d .. ':na', W + 60000)
      end
    else
      -- Someone who was the searcher so far has had nothing yet: this one is their first.
      for _, user in ipairs(redis.call('SMEMBERS', d .. ':na')) do
        if not cset[user] then firsts[#firsts + 1] = user end
      end
      for _, user in ipairs(firsts) do
        redis.call('SREM', d .. ':na', user); covered[#covered + 1] = user; cset[user] = true
      end
      redis.call('RPUSH', d .. ':ev', cjson.encode(covered) .. '\n' .. fold)
      redis.call('PEXPIRE', d .. ':ev', W + 60000)
      coalesced = coalesced + 1
      -- The one user who made every folded search, if one did ('*': several did).
      local s = redis.call('HGET', d, 's')
      if s == '' then redis.call('HSET', d, 's', searcher)
      elseif s ~= searcher then redis.call('HSET', d, 's', '*') end
    end
  end
  return {immediate, covered, to_everyone, firsts, coalesced}, at + 5 + 3 * n
end
local decisions, at = {}, 4
while at <= #ARGV do
  local decision
  decision, at = decide(at)
  decisions[#decisions + 1] = decision
end
return decisions
