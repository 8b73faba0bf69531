-- Claim entries whose worker stopped heartbeating (idle past the visibility timeout).
-- Entries deleted from the stream while pending are acknowledged and dropped.
-- KEYS[1] stream
-- ARGV[1] consumer group   ARGV[2] reclaimer consumer name
-- ARGV[3] min idle ms      ARGV[4] max entries
-- Returns {entry id, {field, value, ...}} per claimed entry.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
                           'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry[2] then
    table.insert(out, entry)
  else
    redis.call('XACK', KEYS[1], ARGV[1], entry[1])
  end
end
return out
