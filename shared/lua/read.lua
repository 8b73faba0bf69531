-- Read up to COUNT new entries, strictly by priority: high first, then default, then low.
-- (One XREADGROUP over several streams would return up to COUNT from each.)
-- KEYS    the streams in read order
-- ARGV[1] consumer group   ARGV[2] consumer   ARGV[3] count
-- Returns {stream, entry id, {field, value, ...}} per entry.
local out, want = {}, tonumber(ARGV[3])
for _, stream in ipairs(KEYS) do
  if want <= 0 then break end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want,
                           'STREAMS', stream, '>')
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      table.insert(out, {stream, entry[1], entry[2]})
      want = want - 1
    end
  end
end
return out
