-- Retire idle series of one limited metric, atomically (see series_limits.py).
-- KEYS: 1 index hash (series -> last update time), 2 value hash (c:, h: or g:), 3 gauge time hash,
--       4 exemplar hash (x:; a retired counter or histogram series loses its exemplar)
-- ARGV: kind (c|h|g), cutoff, now, overflow series, histogram parts..., "--", series...
-- A series is retired only if it is still idle (its index time is below the cutoff): an update
-- applied since the caller looked keeps it. Counter and histogram values move to the overflow
-- series, so the metric's total never goes down; a gauge is removed (its removal time kept).
local index, values, times = KEYS[1], KEYS[2], KEYS[3]
local kind, cutoff, now, overflow = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local parts = {}
local i = 5
while ARGV[i] ~= "--" do parts[#parts + 1] = ARGV[i]; i = i + 1 end
local SEP = "\31"
local retired = 0
for k = i + 1, #ARGV do
  local series = ARGV[k]
  local t = redis.call("HGET", index, series)
  if t and tonumber(t) < cutoff then
    if kind == "c" then
      local v = redis.call("HGET", values, series)
      if v then
        redis.call("HDEL", values, series)
        redis.call("HINCRBYFLOAT", values, overflow, v)
      end
    elseif kind == "h" then
      for _, part in ipairs(parts) do
        local f = series .. SEP .. part
        local v = redis.call("HGET", values, f)
        if v then
          redis.call("HDEL", values, f)
          redis.call("HINCRBYFLOAT", values, overflow .. SEP .. part, v)
        end
      end
    else
      if redis.call("HDEL", values, series) == 1 then redis.call("HSET", times, series, now) end
    end
    if kind ~= "g" and KEYS[4] then redis.call("HDEL", KEYS[4], series) end
    redis.call("HDEL", index, series)
    retired = retired + 1
  end
end
return retired
