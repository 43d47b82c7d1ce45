-- Record, once, that a producer stopped reporting, and count what it left unsent.
--
-- A producer writes its counters with every write and at least every stats interval; its last
-- report of a clean close carries closed_at. One found silent for longer than
-- LSM_PRODUCER_GONE_SECONDS without that mark ended uncleanly (SIGKILL, OOM, or Redis unreachable
-- until its shutdown timeout passed): the events its last report still counted as buffered never
-- reached the stream. Every aggregator of the shard may find it; the ZADD NX counts it once.
--
-- KEYS: 1 the shard's ended-producers sorted set, 2 shard stats
-- ARGV: 1 producer id, 2 now (seconds), 3 "1" for a clean close, 4 events left unsent
-- Reply: 1 when this call recorded the exit, 0 when it was already recorded.
local ended, stats = KEYS[1], KEYS[2]
local pid, now, clean, unsent = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call("ZADD", ended, "NX", now, pid) == 0 then return 0 end
if clean == "1" then
  redis.call("HINCRBY", stats, "producer_exits_clean", 1)
else
  redis.call("HINCRBY", stats, "producer_exits_unclean", 1)
  if unsent > 0 then redis.call("HINCRBY", stats, "events_lost_unclean_exit", unsent) end
end
return 1
