-- Apply one batch of stream entries exactly once: verify, then update metrics, record the
-- producers' sequence numbers, dead-letter, and acknowledge, all in this one atomic step.
--
-- KEYS: 1 stream, 2 dead-letter stream, 3 shard stats hash, 4 applied-by-producer hash,
--       5 high-water-mark hash, 6 .. 5+np per-producer "seen" sorted sets, then metric hashes.
-- ARGV: group, consumer, now, max_seq_jump,
--       np, producer ids (np),
--       ne, ne x (entry id, producer index, seq, events applied (rejected ones not counted),
--                 assumed state: 0 new, 1 duplicate, 2 suspect sequence),
--       nd, nd x (entry id, reason, detail, producer index or 0, seq or 0),
--       ns, ns series strings (each once; the updates below refer to them by number),
--       then one JSON document with the metric updates (one argument instead of hundreds of
--       thousands: the client's command packing and the server's argument parsing stay cheap):
--       {"i": [key index, series, amount, ...],                       -- HINCRBYFLOAT
--        "h": [key index, series, n, n x (bucket, count), sum, count, ...],   -- histograms
--        "g": [value key index, time key index, series, t, value or "" to remove, ...],
--        "s": [stats field, increment, ...],                          -- e.g. rejected events
--        "r": 1 to record every gauge removal (several shards), else 0,
--        "p": [[index key index, cap or 0, overflow series, metric name], ...],   -- series limits
--        "x": [[policy, "c", key index, series, amount],               -- updates of limited series
--              [policy, "h", key index, series, n, n x (bucket, count), sum, count],
--              [policy, "g", value key index, time key index, series, t, value or ""], ...],
--        "e": [[exemplar key index, series, exemplar, series, exemplar, ...], ...],
--        "ec": [exemplar key index, value key index, series, field suffix, exemplar, ...]}
--       (exemplars: the newest trace of a counter or histogram series, "[trace id, value, t]".
--       "e" holds those of series updated without a cap, which exist after the updates; "ec"
--       those of capped series, written only if the series exists (was admitted), so a series
--       the cap sent to the overflow series takes none: at most one exemplar per series)
--       where "series" is the number of a series string. A histogram series' fields are
--       <series>\31b<bucket>, <series>\31s (sum) and <series>\31c (count).
--
-- An entry whose seq is more than max_seq_jump above its producer's high-water mark is suspect
-- (forged, or a producer gone wrong): it is dead-lettered (suspect_sequence) without touching
-- the producer's sequence bookkeeping, so it can neither hide the producer's next entries as
-- duplicates nor make housekeeping declare a huge gap lost.
-- Exception: after a reset of the shard's state (Redis restarted empty), a producer that has no
-- mark yet in the new state goes on where its sequence was; it is not suspect.
--
-- Nothing is written unless every entry is still pending for this consumer and every assumed
-- state holds; otherwise the reply says what the caller must change:
--   {"retry", {ids not owned}, {ids whose state differs}, {their actual states}}
-- On success: {"ok", entries applied, duplicate entries, events applied, dead-lettered}.

local stream, dead, stats, applied, hwm = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer = ARGV[1], ARGV[2]
local max_jump = tonumber(ARGV[4])
local i = 5
local np = tonumber(ARGV[i]); i = i + 1
local producers = {}
for p = 1, np do producers[p] = ARGV[i]; i = i + 1 end

local ne = tonumber(ARGV[i]); i = i + 1
local entries = {}
for e = 1, ne do
  entries[e] = {id = ARGV[i], p = tonumber(ARGV[i + 1]), seq = tonumber(ARGV[i + 2]),
                n = tonumber(ARGV[i + 3]), state = ARGV[i + 4]}
  i = i + 5
end
local nd = tonumber(ARGV[i]); i = i + 1
local deads = {}
for d = 1, nd do
  deads[d] = {id = ARGV[i], reason = ARGV[i + 1], detail = ARGV[i + 2],
              p = tonumber(ARGV[i + 3]), seq = tonumber(ARGV[i + 4])}
  i = i + 5
end
local nstr = tonumber(ARGV[i])
local sbase = i
i = i + 1 + nstr

local function owned(id)
  local rows = redis.call("XPENDING", stream, group, id, id, 1, consumer)
  return #rows == 1
end

-- Phase 1: verify ownership and the assumed states. No writes.
local not_owned, wrong, wrong_state = {}, {}, {}
local marks, seen_in_batch = {}, {}
local function mark_of(pid)
  if marks[pid] == nil then marks[pid] = tonumber(redis.call("HGET", hwm, pid) or "0") end
  return marks[pid]
end
-- After a reset of the shard's state, a producer with no mark in it may go on at any sequence
-- number (gaps.lua counts the ones before as entries_before_reset); otherwise a seq more than
-- max_jump above the mark is suspect.
local after_reset = tonumber(redis.call("HGET", stats, "state_resets") or "0") > 0
local function suspect(pid, seq)
  local mark = mark_of(pid)
  return seq > mark + max_jump and not (mark == 0 and after_reset)
end
for _, e in ipairs(entries) do
  if not owned(e.id) then
    not_owned[#not_owned + 1] = e.id
  else
    local pid = producers[e.p]
    local mark = mark_of(pid)
    local token = pid .. "\0" .. int(e.seq)
    local state = "0"
    if e.seq <= mark or seen_in_batch[token] ~= nil or redis.call("ZCOUNT", KEYS[5 + e.p], e.seq, e.seq) > 0 then
      state = "1"
    elseif suspect(pid, e.seq) then
      state = "2"
    end
    if state ~= "2" then seen_in_batch[token] = true end
    if state ~= e.state then
      wrong[#wrong + 1] = e.id
      wrong_state[#wrong_state + 1] = state
    end
  end
end
for _, d in ipairs(deads) do
  if not owned(d.id) then not_owned[#not_owned + 1] = d.id end
end
if #not_owned > 0 or #wrong > 0 then
  return {"retry", not_owned, wrong, wrong_state}
end

-- Phase 2: apply. Every check is done; nothing below can fail on valid input.
local delta = cjson.decode(ARGV[i])
local mbase = 5 + np
local incs, hists, gauges = delta["i"], delta["h"], delta["g"]
for k = 1, #incs, 3 do
  redis.call("HINCRBYFLOAT", KEYS[mbase + incs[k]], ARGV[sbase + incs[k + 1]], incs[k + 2])
end
-- One histogram series at op[k]: key index, series, n, n x (bucket, count), sum, count. Returns
-- the index of the next one. Bucket counts and the count are whole numbers of observations
-- (they never get near HINCRBY's 2^63 limit): HINCRBY, a third of HINCRBYFLOAT's cost.
local function observe(op, k, key, series)
  local n = op[k + 2]
  local j = k + 3
  for _ = 1, n do
    redis.call("HINCRBY", key, series .. "\31b" .. op[j], op[j + 1])
    j = j + 2
  end
  redis.call("HINCRBYFLOAT", key, series .. "\31s", op[j])
  redis.call("HINCRBY", key, series .. "\31c", op[j + 1])
  return j + 2
end
local k = 1
while k <= #hists do
  k = observe(hists, k, KEYS[mbase + hists[k]], ARGV[sbase + hists[k + 1]])
end
-- With several shards a series may hold its value in another shard: a removal must then be
-- recorded even where there is nothing to delete, so that readers let it hide older values.
local record_every_removal = delta["r"] == 1
local function set_gauge(vkey, tkey, field, t, value)
  local current = redis.call("HGET", tkey, field)
  if current == false or tonumber(t) >= tonumber(current) then
    if value ~= "" then
      redis.call("HSET", vkey, field, value)
      redis.call("HSET", tkey, field, t)
    elseif redis.call("HDEL", vkey, field) == 1 or record_every_removal then
      -- Removing a series that exists leaves its removal time, so an older write cannot bring
      -- it back; with one shard, removing one that never existed writes nothing (no state per
      -- caller). Housekeeping forgets removal records after gauge_removal_memory_seconds.
      redis.call("HSET", tkey, field, t)
    end
  end
end
for k = 1, #gauges, 5 do
  set_gauge(KEYS[mbase + gauges[k]], KEYS[mbase + gauges[k + 1]], ARGV[sbase + gauges[k + 2]], gauges[k + 3],
            gauges[k + 4])
end

-- Limited series: a new series is admitted while its index holds fewer than the cap; past it a
-- counter/histogram update goes to the overflow series (totals stay exact), a gauge update is
-- dropped. The index records each series' last update time for idle retirement.
local policies = delta["p"] or {}
local function admit(pol, series)
  local index = KEYS[mbase + pol[1]]
  if redis.call("HSET", index, series, ARGV[3]) == 1 and pol[2] > 0 and redis.call("HLEN", index) > pol[2] then
    redis.call("HDEL", index, series)
    return false
  end
  return true
end
for _, op in ipairs(delta["x"] or {}) do
  local pol = policies[op[1]]
  local kind = op[2]
  if kind == "g" then
    local series = ARGV[sbase + op[5]]
    if op[7] == "" then
      set_gauge(KEYS[mbase + op[3]], KEYS[mbase + op[4]], series, op[6], op[7])
      redis.call("HDEL", KEYS[mbase + pol[1]], series)
    elseif admit(pol, series) then
      set_gauge(KEYS[mbase + op[3]], KEYS[mbase + op[4]], series, op[6], op[7])
    else
      redis.call("HINCRBY", stats, "series_dropped:" .. pol[4], 1)
    end
  else
    local series = ARGV[sbase + op[4]]
    if not admit(pol, series) then
      series = pol[3]
      redis.call("HINCRBY", stats, "series_overflow:" .. pol[4], 1)
    end
    local key = KEYS[mbase + op[3]]
    if kind == "c" then
      redis.call("HINCRBYFLOAT", key, series, op[5])
    else
      observe(op, 3, key, series)
    end
  end
end

for _, op in ipairs(delta["e"] or {}) do
  local key = KEYS[mbase + op[1]]
  for first = 2, #op, 1000 do  -- at most 500 fields per HSET (Lua's unpack has a limit)
    local fields = {}
    for k = first, math.min(first + 999, #op), 2 do
      fields[#fields + 1] = ARGV[sbase + op[k]]
      fields[#fields + 1] = op[k + 1]
    end
    redis.call("HSET", key, unpack(fields))
  end
end
local checked = delta["ec"] or {}
for k = 1, #checked, 5 do
  local series = ARGV[sbase + checked[k + 2]]
  if redis.call("HEXISTS", KEYS[mbase + checked[k + 1]], series .. checked[k + 3]) == 1 then
    redis.call("HSET", KEYS[mbase + checked[k]], series, checked[k + 4])
  end
end

-- Record (producer, seq) as processed: add it above the high-water mark, then advance the mark
-- (hwm.lua). Returns false when it was already recorded.
local function mark_seen(p, seq, id)
  local pid = producers[p]
  local zkey = KEYS[5 + p]
  if seq <= mark_of(pid) or redis.call("ZCOUNT", zkey, seq, seq) > 0 then return false end
  -- member "<seq> <entry id>": the entry id lets housekeeping prove a missing seq was lost
  redis.call("ZADD", zkey, seq, int(seq) .. " " .. id)
  local mark = advance_mark(zkey, marks[pid])
  marks[pid] = mark
  redis.call("HSET", hwm, pid, int(mark))
  return true
end

local function dead_letter(id, reason, detail)
  local original = redis.call("XRANGE", stream, id, id)
  local fields = {"dead_entry_id", id, "dead_reason", reason, "dead_detail", detail,
                  "dead_consumer", consumer, "dead_at", ARGV[3]}
  if #original == 1 then
    local f = original[1][2]
    for k = 1, #f, 2 do fields[#fields + 1] = "orig_" .. f[k]; fields[#fields + 1] = f[k + 1] end
  end
  redis.call("XADD", dead, "MAXLEN", "~", "100000", "*", unpack(fields))
  redis.call("HINCRBY", stats, "dead_" .. reason, 1)
end

local applied_entries, dup_entries, applied_events, suspect_entries = 0, 0, 0, 0
local ids = {}
for _, e in ipairs(entries) do
  ids[#ids + 1] = e.id
  if e.state == "1" then
    dup_entries = dup_entries + 1
  elseif e.state == "2" then
    local pid = producers[e.p]
    dead_letter(e.id, "suspect_sequence", "sequence " .. int(e.seq) .. " of producer " .. pid
      .. " is more than LSM_MAX_SEQ_JUMP (" .. int(max_jump) .. ") above its mark " .. int(mark_of(pid)))
    suspect_entries = suspect_entries + 1
  else
    local pid = producers[e.p]
    mark_seen(e.p, e.seq, e.id)
    redis.call("HINCRBY", applied, pid, e.n)
    applied_entries = applied_entries + 1
    applied_events = applied_events + e.n
  end
end

for _, d in ipairs(deads) do
  dead_letter(d.id, d.reason, d.detail)
  -- A dead-lettered entry whose header was readable is processed, not lost (unless its seq is
  -- suspect: it must not move the producer's bookkeeping).
  if d.p > 0 and d.seq > 0 and not suspect(producers[d.p], d.seq) then mark_seen(d.p, d.seq, d.id) end
  ids[#ids + 1] = d.id
end

if #ids > 0 then
  for k = 1, #ids, 500 do
    redis.call("XACK", stream, group, unpack(ids, k, math.min(k + 499, #ids)))
  end
end
if applied_entries > 0 then
  redis.call("HINCRBY", stats, "entries_applied", applied_entries)
  redis.call("HINCRBY", stats, "events_applied", applied_events)
end
if dup_entries > 0 then redis.call("HINCRBY", stats, "duplicate_entries", dup_entries) end
local counts = delta["s"]
for k = 1, #counts, 2 do
  redis.call("HINCRBY", stats, counts[k], counts[k + 1])
end
return {"ok", applied_entries, dup_entries, applied_events, #deads + suspect_entries}
