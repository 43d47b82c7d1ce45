-- Declare a producer's missing sequence numbers lost, when that is certain (the mark and the
-- "seen" set: hwm.lua, prepended when loaded).
--
-- The producer writes sequence numbers in increasing order, so the first copy of seq s lands
-- before the first copy of s+1. If the lowest applied seq above the high-water mark is m
-- (entry id E) and no entry with an id below E is still pending in the group, the entries
-- with seqs between the mark and m can no longer arrive: they were removed from the stream
-- before being read (e.g. by a producer's MAXLEN cap). Count them and move the mark.
--
-- After a reset of the shard's state (Redis restarted empty: stats field state_resets > 0), a
-- producer none of whose sequence numbers from 1 on reached this state (mark 0) wrote its
-- lower ones before the reset: the new state cannot know whether they were applied. They are
-- counted as entries_before_reset, not as lost, and the mark moves as for lost ones.
--
-- KEYS: 1 stream, 2 high-water-mark hash, 3 the producer's "seen" sorted set, 4 shard stats,
--       5 lost-by-producer hash
-- ARGV: 1 group, 2 producer id
-- Reply: number of sequence numbers declared lost (0 when nothing is certain).
local stream, hwm, zkey, stats, lost_by = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, pid = ARGV[1], ARGV[2]
local mark = tonumber(redis.call("HGET", hwm, pid) or "0")
local low = redis.call("ZRANGE", zkey, 0, 0, "WITHSCORES")
if #low == 0 then return 0 end
local m = tonumber(low[2])
if m <= mark + 1 then return 0 end
local entry_id = string.match(low[1], " (.+)$")
if entry_id == nil then return 0 end
local older = redis.call("XPENDING", stream, group, "-", "(" .. entry_id, 1)
if #older > 0 then return 0 end
local lost = m - mark - 1
local from_start = mark == 0
mark = advance_mark(zkey, m - 1)
redis.call("HSET", hwm, pid, int(mark))
if from_start and tonumber(redis.call("HGET", stats, "state_resets") or "0") > 0 then
  redis.call("HINCRBY", stats, "entries_before_reset", lost)
  return 0
end
redis.call("HINCRBY", stats, "lost_entries", lost)
redis.call("HINCRBY", lost_by, pid, lost)
return lost
