-- Budget refresh writes into shard 0's gauge hashes, fenced by the refresh lease. The fence
-- prelude (aggregator/lease.py FENCE_LUA) is prepended: nothing is written unless KEYS[1] still
-- holds ARGV[1] (our token) and KEYS[2] still holds ARGV[2] (our epoch).
--
-- KEYS: 1 lease, 2 lease epoch, 3 writes stream, 4 status hash, then gauge hashes (g, gt).
-- ARGV: 1 token, 2 epoch, 3 one JSON document:
--   {"t": time text, "owner": text, "kind": text, "audit": 0/1,
--    "set":   [value key index, time key index, field, value text, ...]  -- last write wins by time
--    "del":   [value key index, time key index, field, ...]              -- removal, same rule
--    "sweep": [value key index, time key index, field, ...]  -- removal when the stored time is
--             older than t (not written by this run); a removal record older than "gc" is dropped
--    "gc": time text, "status": [field, value, ...]}
-- Key indexes are 1-based positions in KEYS.
-- Reply: {"fenced"} or {"ok", written, removed, stale, forgotten}.

local doc = cjson.decode(ARGV[3])
local t_text = doc["t"]
local t = tonumber(t_text)
local written, removed, stale, forgotten = 0, 0, 0, 0

local set = doc["set"] or {}
for k = 1, #set, 4 do
  local vkey, tkey, field = KEYS[set[k]], KEYS[set[k + 1]], set[k + 2]
  local current = redis.call("HGET", tkey, field)
  if current == false or t >= tonumber(current) then
    redis.call("HSET", vkey, field, set[k + 3])
    redis.call("HSET", tkey, field, t_text)
    written = written + 1
  else
    stale = stale + 1
  end
end

local del = doc["del"] or {}
for k = 1, #del, 3 do
  local vkey, tkey, field = KEYS[del[k]], KEYS[del[k + 1]], del[k + 2]
  local current = redis.call("HGET", tkey, field)
  if current == false or t >= tonumber(current) then
    -- Removing a series that exists leaves its removal time (an older write cannot bring it
    -- back); removing one that does not exist writes nothing (as apply.lua).
    if redis.call("HDEL", vkey, field) == 1 then
      redis.call("HSET", tkey, field, t_text)
      removed = removed + 1
    end
  else
    stale = stale + 1
  end
end

local sweep = doc["sweep"] or {}
local gc = tonumber(doc["gc"] or "-1e300")
for k = 1, #sweep, 3 do
  local vkey, tkey, field = KEYS[sweep[k]], KEYS[sweep[k + 1]], sweep[k + 2]
  local current = redis.call("HGET", tkey, field)
  if current ~= false and tonumber(current) < t then
    if redis.call("HDEL", vkey, field) == 1 then
      redis.call("HSET", tkey, field, t_text)
      removed = removed + 1
    elseif tonumber(current) < gc then
      redis.call("HDEL", tkey, field)
      forgotten = forgotten + 1
    end
  end
end

local status = doc["status"] or {}
if #status > 0 then redis.call("HSET", KEYS[4], unpack(status)) end
redis.call("HSET", KEYS[4], "written_epoch", ARGV[2])

if doc["audit"] == 1 then
  redis.call("XADD", KEYS[3], "MAXLEN", "~", "10000", "*", "epoch", ARGV[2], "owner", doc["owner"],
             "kind", doc["kind"], "t", t_text, "written", written, "removed", removed, "stale", stale)
end
return {"ok", written, removed, stale, forgotten}
