-- Make sure a shard's consumer group and state record exist, and tell whether the shard's state
-- was reset (Redis restarted empty, or its data was lost) since this process last looked.
--
-- The state record (a hash: id, created_at) is written together with the first consumer group
-- of a state. A process remembers the id it works with; finding another id, or none, means that
-- everything the shard held (totals, sequence bookkeeping, group) is gone. The first process to
-- notice counts it in the shard's stats (state_resets, carried over from the count the process
-- saw in the lost state, so the counter goes on from where it was); others find it counted.
--
-- KEYS: 1 stream, 2 state record, 3 shard stats hash
-- ARGV: 1 group, 2 the state id this process knows ("" when none), 3 an id for a new state,
--       4 state_resets as this process last saw it, 5 now (seconds)
-- Reply: {state id, group created 0/1, reset seen 0/1, counted by this call 0/1, state_resets}
local stream, state, stats = KEYS[1], KEYS[2], KEYS[3]
local group, known, fresh, seen, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]

local created = 0
local reply = redis.pcall("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
if type(reply) == "table" and reply.err then
  if not string.find(reply.err, "BUSYGROUP", 1, true) then return redis.error_reply(reply.err) end
else
  created = 1
end

local id = redis.call("HGET", state, "id")
local reset = 0
if not id then
  id = fresh
  redis.call("HSET", state, "id", id, "created_at", now)
  if known ~= "" then reset = 1 end
elseif known ~= "" and id ~= known then
  reset = 1
end

local counted = 0
local current = tonumber(redis.call("HGET", stats, "state_resets") or "-1")
if reset == 1 and current < seen + 1 then
  redis.call("HSET", stats, "state_resets", seen + 1)
  current = seen + 1
  counted = 1
elseif current < 0 then
  -- 0 from the start: a monitoring system then sees the first reset as an increase.
  redis.call("HSET", stats, "state_resets", 0)
  current = 0
end
return {id, created, reset, counted, current}
