-- Give claimed stale entries back to the workers: each is re-added as a fresh entry that
-- counts deliveries ("n") and names the entry the job's dead run had claimed ("prev", so
-- the new entry may take that claim over); the old entry is acknowledged and deleted.
-- KEYS    stream:high, stream:default, stream:low
-- ARGV    consumer group, then per entry: stream index (1-3), entry id, job id,
--         deliveries, prev ("" when the job was never claimed)
-- Returns the number of entries requeued.
local group = ARGV[1]
local count = 0
for i = 2, #ARGV, 5 do
  local stream, id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  local n = tonumber(ARGV[i + 3]) + 1
  if ARGV[i + 4] == '' then
    redis.call('XADD', stream, '*', 'job', ARGV[i + 2], 'n', n)
  else
    redis.call('XADD', stream, '*', 'job', ARGV[i + 2], 'n', n, 'prev', ARGV[i + 4])
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  count = count + 1
end
return count
