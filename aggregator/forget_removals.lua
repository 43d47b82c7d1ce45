-- Forget gauge removal records older than a cutoff (see housekeeping.py).
-- KEYS: 1 gauge value hash (g:), 2 gauge time hash (gt:). ARGV: cutoff, then fields.
-- A field is forgotten only if the series has no value (it is a removal record) and its time
-- is still below the cutoff (a write since the caller looked keeps it).
local forgotten = 0
local cutoff = tonumber(ARGV[1])
for i = 2, #ARGV do
  local f = ARGV[i]
  if redis.call("HEXISTS", KEYS[1], f) == 0 then
    local t = redis.call("HGET", KEYS[2], f)
    if t and tonumber(t) < cutoff then
      redis.call("HDEL", KEYS[2], f)
      forgotten = forgotten + 1
    end
  end
end
return forgotten
