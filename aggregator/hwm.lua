-- The high-water-mark rule of exactly-once, written once: prepended to apply.lua and gaps.lua
-- when they are loaded (aggregator/scripts.py).
--
-- Per producer and shard, the mark (a field of the shard's high-water-mark hash) is the highest
-- sequence number up to which every one was processed (applied, dead-lettered or declared
-- lost); processed numbers above it wait in the producer's "seen" sorted set (score = seq,
-- member "<seq> <entry id>") until the numbers between are processed too.

-- An integer as Redis stores it: tostring() of a Lua number (a double) writes 1e+14 from 15
-- digits on.
local function int(n) return string.format("%.0f", n) end

-- Move ``mark`` over the seen numbers that follow it without a gap (removing them from the
-- set); returns the new mark. The caller writes it.
local function advance_mark(zkey, mark)
  while true do
    local low = redis.call("ZRANGE", zkey, 0, 0, "WITHSCORES")
    if #low == 0 or tonumber(low[2]) ~= mark + 1 then return mark end
    redis.call("ZREMRANGEBYRANK", zkey, 0, 0)
    mark = mark + 1
  end
end

