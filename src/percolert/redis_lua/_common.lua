-- Prepended to every script. ARGV[1] is the key prefix P ("percolert:{<index prefix>}"):
-- every key shares its hash tag, so the scripts stay single-slot on a Cluster too.
-- Time is Redis's, never an instance's clock.
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function instances() return redis.call('ZRANGE', P .. ':inst', 0, -1) end
local function holds(inst, user) return redis.call('HEXISTS', P .. ':at:' .. inst, user) == 1 end
