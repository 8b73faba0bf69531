-- Claim entries whose worker stopped heartbeating (idle past the visibility timeout),
-- one page at a time from a cursor, so dead workers' entries behind many live ones are
-- reached too. Entries deleted from the stream while pending are acknowledged and dropped.
-- KEYS[1] stream
-- ARGV[1] consumer group   ARGV[2] reclaimer consumer name
-- ARGV[3] min idle ms      ARGV[4] max entries   ARGV[5] cursor ("0-0" to start over)
-- Returns {next cursor ("0-0" after the last page), {{entry id, {field, value, ...}}, ...}}.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5],
                           'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry[2] then
    table.insert(out, entry)
  else
    redis.call('XACK', KEYS[1], ARGV[1], entry[1])
  end
end
return {claimed[1], out}
