-- ARGV: P, inbox length bound, me (the erasing instance), user. Forgets everything of `user`:
-- its presence on every instance and its departure, its own windows (`P:w:<watch>:<user>`)
-- and claimed follow-ups of them. In every other window and claim, its searches keep counting
-- for their owners without who made them ("searcher":""), and it leaves the skip lists and
-- the not-alerted sets; a default window's one searcher `s` that was the user becomes '*'
-- (nobody is owed the next alert at once). Then tells every other instance (an `x` entry in
-- its inbox, counted as publish.lua does) to close the user's sockets and forget what it
-- keeps of them. Returns {sockets registered open, windows and claims dropped, searches
-- forgotten}.
-- Every window is looked at (`P:due` lists them all): windows last seconds, so there are as
-- many as searches of the last window's length made matches, and an erasure is rare.
local bound, me, user = ARGV[2], ARGV[3], ARGV[4]
local quoted = '"' .. user .. '"'
local as_searcher = '"searcher":' .. quoted
local sockets, windows, searches = 0, 0, 0

-- A list of folded searches ("<skip JSON>\n<fold JSON>") without the user, rewritten when
-- anything changed (its expiry kept). The fold is edited as text: decoding and encoding it
-- again would round its times.
local function scrub(key)
  local entries = redis.call('LRANGE', key, 0, -1)
  local changed = false
  for i, entry in ipairs(entries) do
    local cut = string.find(entry, '\n', 1, true)
    if cut then
      local skip, fold = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
      if string.find(skip, quoted, 1, true) then
        local kept = {}
        for _, other in ipairs(cjson.decode(skip)) do
          if other ~= user then kept[#kept + 1] = other end
        end
        skip = #kept == 0 and '[]' or cjson.encode(kept)
        changed = true
      end
      local from, to = string.find(fold, as_searcher, 1, true)
      if from then
        fold = string.sub(fold, 1, from - 1) .. '"searcher":""' .. string.sub(fold, to + 1)
        searches = searches + 1
        changed = true
      end
      entries[i] = skip .. '\n' .. fold
    end
  end
  if changed then
    local ttl = redis.call('PTTL', key)
    redis.call('DEL', key)
    for start = 1, #entries, 1000 do
      redis.call('RPUSH', key, unpack(entries, start, math.min(start + 999, #entries)))
    end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end

local due = P .. ':due'
local owned_prefix, owned_suffix = P .. ':w:', ':' .. user
for _, key in ipairs(redis.call('ZRANGE', due, 0, -1)) do
  if string.sub(key, 1, #owned_prefix) == owned_prefix
      and string.sub(key, -#owned_suffix) == owned_suffix then
    redis.call('DEL', key, key .. ':ev')
    redis.call('ZREM', due, key)
    windows = windows + 1
  else
    scrub(key .. ':ev')
    redis.call('SREM', key .. ':na', user)
    if redis.call('HGET', key, 's') == user then redis.call('HSET', key, 's', '*') end
  end
end

-- Claimed follow-ups: one of the user's own is dropped (its claimer's publish then sends
-- nothing, as for a claim taken over).
local leases = P .. ':leases'
for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  local f = P .. ':f:' .. token
  if redis.call('HGET', f, 'owner') == user then
    redis.call('DEL', f, f .. ':ev', f .. ':na')
    redis.call('ZREM', leases, token)
    windows = windows + 1
  else
    scrub(f .. ':ev')
    redis.call('SREM', f .. ':na', user)
  end
end

for _, inst in ipairs(instances()) do
  local at = P .. ':at:' .. inst
  sockets = sockets + tonumber(redis.call('HGET', at, user) or '0')
  redis.call('HDEL', at, user)
  if inst ~= me then
    local n = redis.call('HINCRBY', P .. ':meta', 'n:' .. inst, 1)
    redis.call('XADD', P .. ':inbox:' .. inst, 'MAXLEN', '~', bound, '*', 'x', user, 'n', n,
      'e', EPOCH)
  end
end
redis.call('ZREM', P .. ':left', user)
return {sockets, windows, searches}
