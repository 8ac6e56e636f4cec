-- Prepended to every script. ARGV[1] is the key prefix P ("percolert:{<index prefix>}"):
-- every key shares its hash tag, so the scripts stay single-slot on a Cluster too. KEYS[1] is
-- P:meta, declared so that a Cluster routes the call to that slot's node; the other keys
-- (an instance's inbox, a window) are named by data the script reads, so they are built here
-- from P, always under the same hash tag, as BullMQ's scripts build theirs.
-- Time is Redis's, never an instance's clock.
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function instances() return redis.call('ZRANGE', P .. ':inst', 0, -1) end
local function holds(inst, user) return redis.call('HEXISTS', P .. ':at:' .. inst, user) == 1 end
-- The epoch (centrifuge's broker_history_add_stream.lua): ARGV[2..5] are a new epoch the
-- caller minted, the floor (above every position the caller knows was handed out: its last
-- seen and the log's last), the caller's last seen position and the restart window (ms);
-- they are taken out of ARGV, so each script's own arguments start at ARGV[2]. No epoch:
-- Redis lost its data; a counter below what the caller saw: a failover lost the tail (and
-- the epoch with it, or not: centrifugo#664). Either way a new epoch starts, the counter
-- above every old position, and every reader that sees it resyncs from the log.
local NEW_EPOCH, FLOOR, SEEN, RESTART = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _ = 1, 4 do table.remove(ARGV, 2) end
local EPOCH
do
  local meta = redis.call('HMGET', P .. ':meta', 'epoch', 'seq')
  EPOCH = meta[1]
  if not EPOCH or tonumber(meta[2] or '0') < SEEN then
    EPOCH = NEW_EPOCH
    redis.call('HSET', P .. ':meta', 'epoch', EPOCH, 'seq', string.format('%d', math.max(FLOOR, now_us)))
    if redis.call('HEXISTS', P .. ':meta', 'everyone_until') == 0 then
      redis.call('HSET', P .. ':meta', 'everyone_until', now + RESTART)
    end
  end
end
